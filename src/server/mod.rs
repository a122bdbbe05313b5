//! MCP method dispatch, without I/O.
//!
//! A transport hands [`Session::handle_message`] the bytes of one complete
//! message and an output buffer; the session parses the message in place,
//! runs the method, and appends the response line to the buffer. Methods
//! that must wait (async tools, cross-core hops) return a future that yields
//! the encoded response instead; the transport polls it on the same shard.
//! The session holds the per-connection MCP state (lifecycle phase,
//! negotiated version); everything shared by a core's connections lives in
//! the [`Shard`].

pub mod builtin;
pub mod kv;
pub mod tools;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;
use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use crate::metrics::MethodKind;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::mcp::{self, method};
use crate::runtime::shard::Shard;
use tools::{Registry, Tool, ToolOutcome, ToolReply};

/// A response that will be ready later: the encoded line, or nothing.
pub type PendingResponse = Pin<Box<dyn Future<Output = Vec<u8>>>>;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only `initialize` and `ping` are served.
    AwaitingInitialize,
    Ready {
        version: &'static str,
    },
}

/// One client's MCP state on one connection.
pub struct Session {
    phase: Phase,
    /// The client sent `notifications/initialized`.
    client_initialized: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self {
            phase: Phase::AwaitingInitialize,
            client_initialized: false,
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

    /// Handles the message in `buf[..len]` (`buf` must extend
    /// `protocol::PARSE_PADDING` bytes further; the message is unescaped in
    /// place). Appends at most one response line to `out`, or returns a
    /// future for a response that needs to wait.
    pub fn handle_message(
        &mut self,
        shard: &Rc<Shard>,
        buf: &mut [u8],
        len: usize,
        out: &mut Vec<u8>,
    ) -> Option<PendingResponse> {
        let started = Instant::now();
        let out_before = out.len();
        let (kind, pending, is_error) = {
            let mut parser = shard.parser.borrow_mut();
            parser.parse(buf, len, |parsed| match parsed {
                Err(e) => {
                    let msg = format!("Parse error: {e}");
                    jsonrpc::write_error(out, &Id::Null, jsonrpc::PARSE_ERROR, &msg);
                    (MethodKind::Invalid, None, true)
                }
                Ok(root) => match jsonrpc::classify(root) {
                    Err(inv) => {
                        jsonrpc::write_error(out, &inv.id, inv.code, inv.message);
                        (MethodKind::Invalid, None, true)
                    }
                    Ok(msg) => self.dispatch(shard, msg, out, started),
                },
            })
        };
        if pending.is_none() {
            let mut m = shard.metrics.borrow_mut();
            m.record(kind, started.elapsed());
            if is_error {
                m.counters.error_responses += 1;
            }
        }
        debug_assert!(pending.is_none() || out.len() == out_before);
        pending
    }

    /// Returns what was handled, the pending response if any, and whether a
    /// JSON-RPC error was written.
    fn dispatch(
        &mut self,
        shard: &Rc<Shard>,
        msg: Message<'_>,
        out: &mut Vec<u8>,
        started: Instant,
    ) -> (MethodKind, Option<PendingResponse>, bool) {
        let (id, name, params) = match msg {
            Message::Request { id, method, params } => (id, method, params),
            Message::Notification { method, .. } => {
                if method == method::INITIALIZED {
                    self.client_initialized = true;
                }
                // Unknown notifications are ignored, as JSON-RPC requires.
                return (MethodKind::Notification, None, false);
            }
            Message::Response { .. } => {
                // This build sends no server-to-client requests, so there is
                // nothing to correlate a client response with.
                return (MethodKind::Notification, None, false);
            }
        };

        match name {
            method::INITIALIZE => {
                let r = self.initialize(&id, params, out);
                (MethodKind::Initialize, None, r.is_err())
            }
            method::PING => {
                jsonrpc::begin_result(out, &id);
                out.extend_from_slice(b"{}");
                jsonrpc::end_response(out);
                (MethodKind::Ping, None, false)
            }
            _ if self.phase == Phase::AwaitingInitialize => {
                let kind = match name {
                    method::TOOLS_LIST => MethodKind::ToolsList,
                    method::TOOLS_CALL => MethodKind::ToolsCall,
                    _ => MethodKind::OtherRequest,
                };
                jsonrpc::write_error(
                    out,
                    &id,
                    jsonrpc::INVALID_REQUEST,
                    "server not initialized: send initialize first",
                );
                (kind, None, true)
            }
            method::TOOLS_LIST => {
                let cursor = params.as_ref().and_then(|p| p.get("cursor"));
                if cursor.is_some_and(|c| !c.is_null()) {
                    // tools/list fits in one page, so no cursor was ever issued.
                    jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, "invalid cursor");
                    return (MethodKind::ToolsList, None, true);
                }
                jsonrpc::begin_result(out, &id);
                out.extend_from_slice(shard.registry.tools_list_json());
                jsonrpc::end_response(out);
                (MethodKind::ToolsList, None, false)
            }
            method::TOOLS_CALL => {
                let (pending, is_error) = call_tool(shard, id, params, out, started);
                (MethodKind::ToolsCall, pending, is_error)
            }
            _ => {
                let msg = format!("Method not found: {name}");
                jsonrpc::write_error(out, &id, jsonrpc::METHOD_NOT_FOUND, &msg);
                (MethodKind::OtherRequest, None, true)
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
            b"\",\"capabilities\":{\"tools\":{\"listChanged\":false}},\"serverInfo\":{\"name\":\"",
        );
        out.extend_from_slice(mcp::SERVER_NAME.as_bytes());
        out.extend_from_slice(b"\",\"title\":\"tessera MCP server\",\"version\":\"");
        out.extend_from_slice(mcp::SERVER_VERSION.as_bytes());
        out.extend_from_slice(b"\"}}");
        jsonrpc::end_response(out);
        Ok(())
    }
}

/// `tools/call`: checks the params, runs the tool under the supervisor
/// (a panic costs this request only), and writes or defers the response.
fn call_tool(
    shard: &Rc<Shard>,
    id: Id<'_>,
    params: Option<TapeValue<'_, '_>>,
    out: &mut Vec<u8>,
    started: Instant,
) -> (Option<PendingResponse>, bool) {
    let Some(params) = params.filter(|p| p.is_object()) else {
        jsonrpc::write_error(
            out,
            &id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params {name, arguments}",
        );
        return (None, true);
    };
    let Some(name) = params.get("name").and_then(|n| n.into_string()) else {
        jsonrpc::write_error(
            out,
            &id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params.name (a string)",
        );
        return (None, true);
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
            return (None, true);
        }
    };
    let Some(tool) = shard.registry.get(name) else {
        let msg = format!("Unknown tool: {name}");
        jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, &msg);
        return (None, true);
    };

    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| tool.call(shard, args)));
    match reply {
        Ok(ToolReply::Ready(outcome)) => (None, write_outcome(out, &id, outcome)),
        Ok(ToolReply::Pending(fut)) => {
            let id = id.to_owned_bytes();
            let shard = shard.clone();
            let tool_name = name.to_owned();
            let pending = async move {
                let outcome = AssertUnwindSafe(fut).catch_unwind().await;
                let mut out = Vec::with_capacity(128);
                let is_error = match outcome {
                    Ok(outcome) => write_outcome(&mut out, &Id::Encoded(&id), outcome),
                    Err(_) => {
                        write_panic(&shard, &mut out, &Id::Encoded(&id), &tool_name);
                        true
                    }
                };
                let mut m = shard.metrics.borrow_mut();
                m.record(MethodKind::ToolsCall, started.elapsed());
                if is_error {
                    m.counters.error_responses += 1;
                }
                out
            };
            (Some(Box::pin(pending)), false)
        }
        Err(_) => {
            write_panic(shard, out, &id, name);
            (None, true)
        }
    }
}

/// Writes a tool's outcome; returns whether it was a JSON-RPC error.
fn write_outcome(out: &mut Vec<u8>, id: &Id<'_>, outcome: ToolOutcome<'_>) -> bool {
    match outcome {
        Ok(result) => {
            jsonrpc::begin_result(out, id);
            result.write_json(out);
            jsonrpc::end_response(out);
            false
        }
        Err(e) => {
            jsonrpc::write_error(out, id, e.code, &e.message);
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
