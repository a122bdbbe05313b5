//! MCP method dispatch, without I/O, for both spec eras.
//!
//! A transport hands [`Session::handle_message`] the bytes of one complete
//! message and an output buffer; the session parses the message in place,
//! runs the method, and appends the response to the buffer. Methods that must
//! wait (async tools, cross-core hops) return a future that yields the encoded
//! response instead; the transport polls it on the same shard.
//!
//! Era is decided per message: a request whose `_meta` names a modern
//! protocol version (2026-07-28) is served statelessly from that metadata;
//! anything else follows the legacy lifecycle of this session (`initialize`
//! first). Both can share one connection.
//!
//! Server-to-client messages leave through [`Notifier`]s: the *related* one
//! passed with a request (progress for that request) and the session's
//! *unrelated* one (resource updates), so the transport decides where each
//! lands (the same NDJSON stream, a request's SSE stream, the session's
//! standalone SSE stream).

pub mod builtin;
pub mod kv;
pub mod resources;
pub mod tools;

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;
use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::mcp::{self, code, meta, method};
use crate::runtime::shard::Shard;
use tools::{Progress, Registry, Tool, ToolCtx, ToolOutcome, ToolReply};

/// Receives server-to-client JSON-RPC messages (one complete message, no
/// trailing newline). Must not block: transports queue or drop, and count.
pub trait Notifier {
    fn notify(&self, message: &[u8]);
}

pub type SharedNotifier = Rc<dyn Notifier>;

/// A response that will be ready later: the encoded line.
pub type PendingResponse = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// What handling one message did.
pub struct Handled {
    pub kind: MethodKind,
    pub pending: Option<PendingResponse>,
    /// A JSON-RPC error response was written.
    pub is_error: bool,
}

impl Handled {
    fn done(kind: MethodKind, is_error: bool) -> Self {
        Self {
            kind,
            pending: None,
            is_error,
        }
    }
}

/// The tools every tessera server offers.
pub fn builtin_registry() -> Registry {
    let tools: Vec<Box<dyn Tool>> = vec![
        Box::new(builtin::Echo),
        Box::new(builtin::Add),
        Box::new(builtin::Sleep),
        Box::new(kv::KvTool(kv::KvKind::Set)),
        Box::new(kv::KvTool(kv::KvKind::Get)),
        Box::new(kv::KvTool(kv::KvKind::Delete)),
    ];
    Registry::new(tools)
}

/// The era a request is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Legacy,
    Modern(&'static str),
}

impl Era {
    pub fn is_modern(self) -> bool {
        matches!(self, Era::Modern(_))
    }
}

/// Result members every modern result carries.
const MODERN_RESULT_TAIL: &str = concat!(
    r#","resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":"#,
    r#"{"name":"tessera","title":"tessera MCP server","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}}"#
);

/// Closes a result object opened by the caller (without its final `}`),
/// adding the modern members when `era` is modern.
pub fn close_result(out: &mut Vec<u8>, era: Era) {
    if era.is_modern() {
        out.extend_from_slice(MODERN_RESULT_TAIL.as_bytes());
    }
    out.push(b'}');
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only `initialize` and `ping` are served (and modern requests).
    AwaitingInitialize,
    Ready {
        version: &'static str,
    },
}

/// One client's legacy MCP state: a TCP or stdio connection, or an HTTP
/// session. Modern requests read nothing from it.
pub struct Session {
    phase: Phase,
    /// The client sent `notifications/initialized`.
    client_initialized: bool,
    /// Where server-initiated messages unrelated to a request go.
    unrelated: Option<SharedNotifier>,
    /// This session's id in the shard's subscriber table, once it subscribes.
    subscriber: Option<u64>,
    /// kv keys this session watches (`resources/subscribe`).
    subscriptions: HashSet<Box<str>>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Session {
    pub fn new(unrelated: Option<SharedNotifier>) -> Self {
        Self {
            phase: Phase::AwaitingInitialize,
            client_initialized: false,
            unrelated,
            subscriber: None,
            subscriptions: HashSet::new(),
        }
    }

    /// The protocol version agreed in `initialize`, once it has happened.
    pub fn negotiated_version(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Ready { version } => Some(version),
            Phase::AwaitingInitialize => None,
        }
    }

    pub fn client_initialized(&self) -> bool {
        self.client_initialized
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Releases what the session holds on the shard and on key owners.
    pub fn close(&mut self, shard: &Rc<Shard>) {
        if let Some(sub) = self.subscriber.take() {
            for key in self.subscriptions.drain() {
                resources::unwatch(shard, &key, sub);
            }
            shard.subscribers.borrow_mut().remove(&sub);
        }
    }

    /// Handles the message in `buf[..len]` (`buf` must extend
    /// `protocol::PARSE_PADDING` bytes further; the message is unescaped in
    /// place). Appends at most one response line to `out`, or returns a
    /// future for a response that needs to wait. `related` receives messages
    /// tied to this request (progress).
    pub fn handle_message(
        &mut self,
        shard: &Rc<Shard>,
        buf: &mut [u8],
        len: usize,
        out: &mut Vec<u8>,
        related: Option<&SharedNotifier>,
    ) -> Option<PendingResponse> {
        let started = Instant::now();
        let handled = {
            let mut parser = shard.parser.borrow_mut();
            parser.parse(buf, len, |parsed| match parsed {
                Err(e) => {
                    let msg = format!("Parse error: {e}");
                    jsonrpc::write_error(out, &Id::Null, jsonrpc::PARSE_ERROR, &msg);
                    Handled::done(MethodKind::Invalid, true)
                }
                Ok(root) => match jsonrpc::classify(root) {
                    Err(inv) => {
                        jsonrpc::write_error(out, &inv.id, inv.code, inv.message);
                        Handled::done(MethodKind::Invalid, true)
                    }
                    Ok(msg) => self.handle_parsed(shard, msg, out, started, related),
                },
            })
        };
        account(shard, &handled, started);
        handled.pending
    }

    /// Handles an already classified message (transports that must inspect
    /// the message first, such as HTTP, parse and classify it themselves).
    pub fn handle_parsed(
        &mut self,
        shard: &Rc<Shard>,
        msg: Message<'_>,
        out: &mut Vec<u8>,
        started: Instant,
        related: Option<&SharedNotifier>,
    ) -> Handled {
        match msg {
            Message::Request { id, method, params } => {
                self.dispatch_request(shard, id, method, params, out, started, related)
            }
            Message::Notification { method, .. } => {
                if method == method::INITIALIZED {
                    self.client_initialized = true;
                }
                // Unknown notifications are ignored, as JSON-RPC requires.
                Handled::done(MethodKind::Notification, false)
            }
            // This build sends no server-to-client requests, so there is
            // nothing to correlate a client response with.
            Message::Response { .. } => Handled::done(MethodKind::Notification, false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_request(
        &mut self,
        shard: &Rc<Shard>,
        id: Id<'_>,
        name: &str,
        params: Option<TapeValue<'_, '_>>,
        out: &mut Vec<u8>,
        started: Instant,
        related: Option<&SharedNotifier>,
    ) -> Handled {
        let req_meta = params.as_ref().and_then(|p| p.get("_meta"));
        let declared = req_meta
            .as_ref()
            .and_then(|m| m.get(meta::PROTOCOL_VERSION));
        let era = match declared {
            Some(v) => match v.into_string() {
                Some(s) => match mcp::modern_version(s) {
                    Some(m) => Era::Modern(m),
                    // A legacy version in `_meta` changes nothing: legacy
                    // requests are governed by `initialize`.
                    None if mcp::is_legacy_version(s) => Era::Legacy,
                    None => {
                        write_unsupported_version(out, &id, s);
                        return Handled::done(kind_of(name), true);
                    }
                },
                None => {
                    let msg = "_meta[\"io.modelcontextprotocol/protocolVersion\"] must be a string";
                    jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, msg);
                    return Handled::done(kind_of(name), true);
                }
            },
            None if name == method::DISCOVER => {
                let msg = "server/discover needs params._meta[\"io.modelcontextprotocol/protocolVersion\"]";
                jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, msg);
                return Handled::done(MethodKind::Discover, true);
            }
            None => Era::Legacy,
        };
        let progress = progress_for(&req_meta, related);

        if let Era::Modern(_) = era {
            let caps = req_meta
                .as_ref()
                .and_then(|m| m.get(meta::CLIENT_CAPABILITIES));
            if !caps.is_some_and(|c| c.is_object()) {
                let msg = "modern requests need params._meta[\"io.modelcontextprotocol/clientCapabilities\"] (an object)";
                jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, msg);
                return Handled::done(kind_of(name), true);
            }
            return match name {
                method::DISCOVER => {
                    write_discover(out, &id);
                    Handled::done(MethodKind::Discover, false)
                }
                method::TOOLS_LIST => list_tools(shard, &id, params, out, era),
                method::TOOLS_CALL => call_tool(shard, id, params, out, started, era, progress),
                method::RESOURCES_LIST
                | method::RESOURCES_TEMPLATES_LIST
                | method::RESOURCES_READ => {
                    resources::handle(shard, name, id, params, out, started, era)
                }
                _ => {
                    let msg = format!("Method not found: {name}");
                    jsonrpc::write_error(out, &id, jsonrpc::METHOD_NOT_FOUND, &msg);
                    Handled::done(MethodKind::OtherRequest, true)
                }
            };
        }

        match name {
            method::INITIALIZE => {
                let r = self.initialize(&id, params, out);
                Handled::done(MethodKind::Initialize, r.is_err())
            }
            method::PING => {
                jsonrpc::begin_result(out, &id);
                out.extend_from_slice(b"{}");
                jsonrpc::end_response(out);
                Handled::done(MethodKind::Ping, false)
            }
            _ if self.phase == Phase::AwaitingInitialize => {
                jsonrpc::write_error(
                    out,
                    &id,
                    jsonrpc::INVALID_REQUEST,
                    "server not initialized: send initialize first",
                );
                Handled::done(kind_of(name), true)
            }
            method::TOOLS_LIST => list_tools(shard, &id, params, out, era),
            method::TOOLS_CALL => call_tool(shard, id, params, out, started, era, progress),
            method::RESOURCES_LIST | method::RESOURCES_TEMPLATES_LIST | method::RESOURCES_READ => {
                resources::handle(shard, name, id, params, out, started, era)
            }
            method::RESOURCES_SUBSCRIBE | method::RESOURCES_UNSUBSCRIBE => {
                self.subscribe(shard, name == method::RESOURCES_SUBSCRIBE, id, params, out)
            }
            _ => {
                let msg = format!("Method not found: {name}");
                jsonrpc::write_error(out, &id, jsonrpc::METHOD_NOT_FOUND, &msg);
                Handled::done(MethodKind::OtherRequest, true)
            }
        }
    }

    fn initialize(
        &mut self,
        id: &Id<'_>,
        params: Option<TapeValue<'_, '_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        if self.phase != Phase::AwaitingInitialize {
            jsonrpc::write_error(out, id, jsonrpc::INVALID_REQUEST, "already initialized");
            return Err(());
        }
        let requested = params.as_ref().and_then(|p| p.get("protocolVersion"));
        let Some(requested) = requested.and_then(|v| v.into_string()) else {
            jsonrpc::write_error(
                out,
                id,
                jsonrpc::INVALID_PARAMS,
                "initialize needs params.protocolVersion (a string)",
            );
            return Err(());
        };
        for member in ["capabilities", "clientInfo"] {
            if let Some(v) = params.as_ref().and_then(|p| p.get(member)) {
                if !v.is_object() {
                    let msg = format!("initialize: params.{member} must be an object");
                    jsonrpc::write_error(out, id, jsonrpc::INVALID_PARAMS, &msg);
                    return Err(());
                }
            }
        }
        let version = mcp::negotiate(requested);
        self.phase = Phase::Ready { version };
        jsonrpc::begin_result(out, id);
        out.extend_from_slice(b"{\"protocolVersion\":\"");
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(
            b"\",\"capabilities\":{\"tools\":{\"listChanged\":false},\"resources\":{\"subscribe\":true,\"listChanged\":false}},\"serverInfo\":",
        );
        out.extend_from_slice(mcp::SERVER_INFO_JSON.as_bytes());
        out.extend_from_slice(b",\"instructions\":");
        json::write_str(out, mcp::INSTRUCTIONS);
        out.push(b'}');
        jsonrpc::end_response(out);
        Ok(())
    }

    /// `resources/subscribe` and `resources/unsubscribe` (legacy only).
    fn subscribe(
        &mut self,
        shard: &Rc<Shard>,
        on: bool,
        id: Id<'_>,
        params: Option<TapeValue<'_, '_>>,
        out: &mut Vec<u8>,
    ) -> Handled {
        let kind = MethodKind::Subscribe;
        let key = match resources::key_param(&params) {
            Ok(k) => k,
            Err(e) => {
                jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, &e);
                return Handled::done(kind, true);
            }
        };
        let Some(unrelated) = self.unrelated.clone() else {
            jsonrpc::write_error(
                out,
                &id,
                jsonrpc::INVALID_REQUEST,
                "this transport cannot deliver resource updates",
            );
            return Handled::done(kind, true);
        };
        let max = shard.limits.max_subscriptions_per_session;
        if on && !self.subscriptions.contains(key.as_str()) && self.subscriptions.len() >= max {
            shard.metrics.borrow_mut().counters.subscription_limit += 1;
            let msg = format!(
                "subscription limit reached: {max} per session (max-subscriptions-per-session)"
            );
            jsonrpc::write_error(out, &id, jsonrpc::INVALID_REQUEST, &msg);
            return Handled::done(kind, true);
        }
        let sub = *self
            .subscriber
            .get_or_insert_with(|| shard.register_subscriber(unrelated));
        let pending = if on {
            self.subscriptions.insert(key.clone().into_boxed_str());
            resources::watch(shard, key, sub, id, out)
        } else {
            self.subscriptions.remove(key.as_str());
            resources::unwatch(shard, &key, sub);
            jsonrpc::begin_result(out, &id);
            out.extend_from_slice(b"{}");
            jsonrpc::end_response(out);
            None
        };
        Handled {
            kind,
            pending,
            is_error: false,
        }
    }
}

fn kind_of(name: &str) -> MethodKind {
    match name {
        method::INITIALIZE => MethodKind::Initialize,
        method::PING => MethodKind::Ping,
        method::DISCOVER => MethodKind::Discover,
        method::TOOLS_LIST => MethodKind::ToolsList,
        method::TOOLS_CALL => MethodKind::ToolsCall,
        method::RESOURCES_LIST | method::RESOURCES_TEMPLATES_LIST | method::RESOURCES_READ => {
            MethodKind::Resources
        }
        method::RESOURCES_SUBSCRIBE | method::RESOURCES_UNSUBSCRIBE => MethodKind::Subscribe,
        _ => MethodKind::OtherRequest,
    }
}

/// Records a handled message in the shard's metrics (async handlers record
/// themselves when they finish).
pub fn account(shard: &Shard, handled: &Handled, started: Instant) {
    if handled.pending.is_none() {
        let mut m = shard.metrics.borrow_mut();
        m.record(handled.kind, started.elapsed());
        if handled.is_error {
            m.counters.error_responses += 1;
        }
    }
}

/// The progress sink for a request that asked for progress and has somewhere
/// to send it.
fn progress_for(
    req_meta: &Option<TapeValue<'_, '_>>,
    related: Option<&SharedNotifier>,
) -> Option<Progress> {
    let token = req_meta.as_ref()?.get(meta::PROGRESS_TOKEN)?;
    if !(token.is_str() || token.is_i64() || token.is_u64()) {
        return None;
    }
    let mut encoded = Vec::with_capacity(16);
    json::write_value(&mut encoded, token);
    Some(Progress::new(encoded.into_boxed_slice(), related?.clone()))
}

/// -32022 with `data: {supported, requested}`.
pub fn write_unsupported_version(out: &mut Vec<u8>, id: &Id<'_>, requested: &str) {
    let mut data = Vec::with_capacity(128);
    data.extend_from_slice(b"{\"supported\":");
    data.extend_from_slice(mcp::ALL_VERSIONS_JSON.as_bytes());
    data.extend_from_slice(b",\"requested\":");
    json::write_str(&mut data, requested);
    data.push(b'}');
    jsonrpc::write_error_with_data(
        out,
        id,
        code::UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        Some(&data),
    );
}

/// How long clients may cache discovery and list results (`ttlMs`); the
/// tool set does not change while the server runs.
pub const CACHE_TTL_MS: u64 = 300_000;

fn write_discover(out: &mut Vec<u8>, id: &Id<'_>) {
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{\"supportedVersions\":");
    out.extend_from_slice(mcp::ALL_VERSIONS_JSON.as_bytes());
    out.extend_from_slice(b",\"capabilities\":{\"tools\":{\"listChanged\":false},\"resources\":{\"listChanged\":false}},\"instructions\":");
    json::write_str(out, mcp::INSTRUCTIONS);
    out.extend_from_slice(b",\"ttlMs\":");
    json::write_u64(out, CACHE_TTL_MS);
    out.extend_from_slice(b",\"cacheScope\":\"public\"");
    close_result(out, Era::Modern(mcp::MODERN_VERSIONS[0]));
    jsonrpc::end_response(out);
}

fn list_tools(
    shard: &Rc<Shard>,
    id: &Id<'_>,
    params: Option<TapeValue<'_, '_>>,
    out: &mut Vec<u8>,
    era: Era,
) -> Handled {
    let cursor = params.as_ref().and_then(|p| p.get("cursor"));
    if cursor.is_some_and(|c| !c.is_null()) {
        // tools/list fits in one page, so no cursor was ever issued.
        jsonrpc::write_error(out, id, jsonrpc::INVALID_PARAMS, "invalid cursor");
        return Handled::done(MethodKind::ToolsList, true);
    }
    jsonrpc::begin_result(out, id);
    out.push(b'{');
    out.extend_from_slice(shard.registry.tools_member_json());
    if era.is_modern() {
        out.extend_from_slice(b",\"ttlMs\":");
        json::write_u64(out, CACHE_TTL_MS);
        out.extend_from_slice(b",\"cacheScope\":\"public\"");
    }
    close_result(out, era);
    jsonrpc::end_response(out);
    Handled::done(MethodKind::ToolsList, false)
}

/// `tools/call`: checks the params, runs the tool under the supervisor
/// (a panic costs this request only), and writes or defers the response.
fn call_tool(
    shard: &Rc<Shard>,
    id: Id<'_>,
    params: Option<TapeValue<'_, '_>>,
    out: &mut Vec<u8>,
    started: Instant,
    era: Era,
    progress: Option<Progress>,
) -> Handled {
    let kind = MethodKind::ToolsCall;
    let Some(params) = params.filter(|p| p.is_object()) else {
        jsonrpc::write_error(
            out,
            &id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params {name, arguments}",
        );
        return Handled::done(kind, true);
    };
    let Some(name) = params.get("name").and_then(|n| n.into_string()) else {
        jsonrpc::write_error(
            out,
            &id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params.name (a string)",
        );
        return Handled::done(kind, true);
    };
    let args = match params.get("arguments") {
        None => TapeValue::null(),
        Some(a) if a.is_object() => a,
        Some(a) if a.is_null() => TapeValue::null(),
        Some(_) => {
            jsonrpc::write_error(
                out,
                &id,
                jsonrpc::INVALID_PARAMS,
                "params.arguments must be an object",
            );
            return Handled::done(kind, true);
        }
    };
    let Some(tool) = shard.registry.get(name) else {
        let msg = format!("Unknown tool: {name}");
        jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, &msg);
        return Handled::done(kind, true);
    };

    let cx = ToolCtx { shard, progress };
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| tool.call(&cx, args)));
    match reply {
        Ok(ToolReply::Ready(outcome)) => Handled::done(kind, write_outcome(out, &id, outcome, era)),
        Ok(ToolReply::Pending(fut)) => {
            let id = id.to_owned_bytes();
            let shard = shard.clone();
            let tool_name = name.to_owned();
            let pending = async move {
                let outcome = AssertUnwindSafe(fut).catch_unwind().await;
                let mut out = Vec::with_capacity(128);
                let is_error = match outcome {
                    Ok(outcome) => write_outcome(&mut out, &Id::Encoded(&id), outcome, era),
                    Err(_) => {
                        write_panic(&shard, &mut out, &Id::Encoded(&id), &tool_name);
                        true
                    }
                };
                let mut m = shard.metrics.borrow_mut();
                m.record(kind, started.elapsed());
                if is_error {
                    m.counters.error_responses += 1;
                }
                out
            };
            Handled {
                kind,
                pending: Some(Box::pin(pending)),
                is_error: false,
            }
        }
        Err(_) => {
            write_panic(shard, out, &id, name);
            Handled::done(kind, true)
        }
    }
}

/// Writes a tool's outcome; returns whether it was a JSON-RPC error.
fn write_outcome(out: &mut Vec<u8>, id: &Id<'_>, outcome: ToolOutcome<'_>, era: Era) -> bool {
    match outcome {
        Ok(result) => {
            jsonrpc::begin_result(out, id);
            result.write_json(out, era);
            jsonrpc::end_response(out);
            false
        }
        Err(e) => {
            jsonrpc::write_error_with_data(
                out,
                id,
                e.code,
                &e.message,
                e.data.as_deref().map(str::as_bytes),
            );
            true
        }
    }
}

/// The client learns only that an internal error occurred; the panic message
/// went to stderr through the panic hook.
fn write_panic(shard: &Shard, out: &mut Vec<u8>, id: &Id<'_>, tool: &str) {
    shard.metrics.borrow_mut().counters.handler_panics += 1;
    log::error!(
        "shard {}: tool {tool:?} panicked; answered -32603",
        shard.id
    );
    jsonrpc::write_error(
        out,
        id,
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the tool failed unexpectedly",
    );
}
