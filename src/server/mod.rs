//! MCP method dispatch, without I/O, for both spec eras.
//!
//! A transport hands [`Session::handle_message`] the bytes of one complete
//! message and an output buffer; the session parses the message in place,
//! runs the method, and appends the response to the buffer. Methods that must
//! wait (async handlers, cross-core hops, questions to the client) return a
//! [`Pending`] future that yields the encoded response; the transport polls it
//! on the same shard and registers it so `notifications/cancelled` can stop it.
//!
//! Era is decided per message: a request whose `_meta` names a modern
//! protocol version (2026-07-28) is served statelessly from that metadata;
//! anything else follows the legacy lifecycle of this session (`initialize`
//! first). Both can share one connection.
//!
//! Server-to-client messages leave through [`Notifier`]s: the *related* one
//! passed with a request (its progress, logs, questions to the client) and the
//! session's *unrelated* one (list changes, resource updates), so the
//! transport decides where each lands (the NDJSON stream, a request's SSE
//! stream, the session's standalone SSE stream).

pub mod api;
pub mod audit;
pub mod auth;
pub mod builtin;
pub mod command;
pub mod content;
pub mod ctx;
pub mod files;
pub mod fixtures;
pub mod jwt;
pub mod kv;
pub mod listen;
pub mod mrtr;
pub mod prompt_files;
pub mod ratelimit;
pub mod registry;
pub mod resources;
pub mod schema;
pub mod skills;
pub mod tasks;
pub mod tools;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
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
use content::LogLevel;
use ctx::{CallCtx, ClientCaps, Ctx, LogSink, Outbound, Rounds};
use ratelimit::TokenBucket;
use registry::{JsonOutcome, JsonReply, ListKind};
use tools::{CallError, Progress, RpcError, ToolOutcome, ToolReply};

/// Receives server-to-client JSON-RPC messages (one complete message, no
/// trailing newline). Must not block: transports queue or drop, and count.
pub trait Notifier {
    fn notify(&self, message: &[u8]);

    /// Ends the connection carrying this stream while the request goes on
    /// (Streamable HTTP, SEP-1699: the client resumes with `Last-Event-ID`).
    /// Transports whose streams cannot be resumed ignore it.
    fn close_stream(&self) {}
}

pub type SharedNotifier = Rc<dyn Notifier>;

/// A response that will be ready later: the encoded line (empty when the
/// request ends without a response, e.g. a listen stream torn down).
pub type PendingResponse = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// A deferred response and how the transport should treat it.
pub struct Pending {
    pub fut: PendingResponse,
    /// The request id (JSON), for registering the task so it can be cancelled.
    pub id: Option<Box<[u8]>>,
    /// A stream that lives until the client goes away (`subscriptions/listen`):
    /// it does not hold a closing connection open.
    pub long_lived: bool,
}

/// What handling one message did.
pub struct Handled {
    pub kind: MethodKind,
    pub pending: Option<Pending>,
    /// A JSON-RPC error response was written.
    pub is_error: bool,
}

impl Handled {
    pub(crate) fn done(kind: MethodKind, is_error: bool) -> Self {
        Self {
            kind,
            pending: None,
            is_error,
        }
    }
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

/// The server identity member every modern result's `_meta` carries.
pub(crate) const SERVER_INFO_META: &str = concat!(
    r#""_meta":{"io.modelcontextprotocol/serverInfo":"#,
    r#"{"name":"tessera","title":"tessera MCP server","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}}"#
);

/// Closes a result object opened by the caller (without its final `}`),
/// adding the modern members when `era` is modern.
pub fn close_result(out: &mut Vec<u8>, era: Era) {
    if era.is_modern() {
        out.extend_from_slice(b",\"resultType\":\"complete\",");
        out.extend_from_slice(SERVER_INFO_META.as_bytes());
    }
    out.push(b'}');
}

/// How long clients may cache discovery and list results (`ttlMs`): the sets
/// can change at run time, and list_changed reaches listening clients at once.
pub const CACHE_TTL_MS: u64 = 60_000;

/// JSON-RPC code: the principal's roles do not grant the tool, prompt or
/// resource the request names (`--auth` with `[[role]]`s).
pub const FORBIDDEN: i32 = -31013;

thread_local! {
    /// The session whose request this thread is serving, for log lines.
    static LOG_SESSION: RefCell<Option<Rc<str>>> = const { RefCell::new(None) };
}

/// The session whose request the calling thread is serving, if any (log
/// lines carry it).
pub fn log_session() -> Option<Rc<str>> {
    LOG_SESSION.with(|s| s.borrow().clone())
}

/// Names the session on this thread's log lines until dropped.
/// Transports hold one per batch of a session's messages, not per message:
/// one thread-local write per read keeps it off the per-request cost.
pub struct LogSession(Option<Rc<str>>);

impl LogSession {
    fn enter(label: &Rc<str>) -> Self {
        Self(LOG_SESSION.with(|s| s.replace(Some(label.clone()))))
    }
}

impl Drop for LogSession {
    fn drop(&mut self) {
        let previous = self.0.take();
        LOG_SESSION.with(|s| *s.borrow_mut() = previous);
    }
}

/// What the audit line of one request needs once its answer is known.
struct AuditLine {
    principal: Option<std::sync::Arc<str>>,
    session: Option<Rc<str>>,
    method: Box<str>,
    name: Option<String>,
    started: Instant,
}

/// Appends one request's audit line (`--audit-log`), counting a drop.
fn audit_line(
    shard: &Shard,
    principal: Option<&str>,
    session: Option<&str>,
    method: &str,
    name: Option<&str>,
    started: Instant,
    response: &[u8],
) {
    let (outcome, code) = audit::outcome_of(response);
    let mut audit = shard.audit.borrow_mut();
    let Some(buf) = audit.as_mut() else {
        return;
    };
    let written = buf.record(&audit::AuditRecord {
        principal,
        session,
        method: Some(method),
        name,
        outcome,
        code,
        latency_us: started.elapsed().as_micros() as u64,
    });
    if !written {
        shard.metrics.borrow_mut().counters.audit_dropped += 1;
    }
}

/// JSON-RPC code: `--auth` is on and the request (TCP, stdio) carries no
/// valid token in `params._meta.authorization`, or a token of a principal
/// other than the one the connection authenticated as.
pub const UNAUTHORIZED: i32 = -31014;

/// Writes a result object given as JSON text, adding the modern members
/// (and `ttlMs`/`cacheScope` when `cacheable` and absent).
fn write_object_result(out: &mut Vec<u8>, obj: &str, era: Era, cacheable: Option<u64>) {
    let body = obj.trim();
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("");
    out.push(b'{');
    out.extend_from_slice(inner.as_bytes());
    let mut sep = !inner.trim().is_empty();
    let mut member = |out: &mut Vec<u8>, m: &str| {
        if sep {
            out.push(b',');
        }
        out.extend_from_slice(m.as_bytes());
        sep = true;
    };
    if era.is_modern() {
        if let Some(ttl) = cacheable {
            if !inner.contains("\"ttlMs\"") {
                member(out, &format!("\"ttlMs\":{ttl},\"cacheScope\":\"public\""));
            }
        }
        if !inner.contains("\"resultType\"") {
            member(out, "\"resultType\":\"complete\"");
        }
        if !inner.contains("\"_meta\"") {
            member(out, SERVER_INFO_META);
        }
    }
    out.push(b'}');
}

/// Requests a session is running, by id, so the client can cancel them.
#[derive(Default)]
pub struct Inflight {
    running: RefCell<HashMap<Box<[u8]>, Running>>,
}

struct Running {
    handle: Option<glommio::task::JoinHandle<()>>,
    cancelled: Rc<Cell<bool>>,
    long_lived: bool,
}

impl Inflight {
    fn begin(&self, id: &[u8], cancelled: Rc<Cell<bool>>) {
        self.insert(id, cancelled, false);
    }

    fn begin_long_lived(&self, id: &[u8]) {
        self.insert(id, Rc::new(Cell::new(false)), true);
    }

    fn insert(&self, id: &[u8], cancelled: Rc<Cell<bool>>, long_lived: bool) {
        self.running.borrow_mut().insert(
            id.into(),
            Running {
                handle: None,
                cancelled,
                long_lived,
            },
        );
    }

    /// Ends the streams that last as long as the client (listen streams).
    pub fn cancel_long_lived(&self) {
        let ids: Vec<Box<[u8]>> = self
            .running
            .borrow()
            .iter()
            .filter(|(_, r)| r.long_lived)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.cancel(&id);
        }
    }

    /// Called by the transport once it has spawned the request's task.
    pub fn attach(&self, id: &[u8], handle: glommio::task::JoinHandle<()>) {
        if let Some(r) = self.running.borrow_mut().get_mut(id) {
            r.handle = Some(handle);
        }
    }

    fn finish(&self, id: &[u8]) {
        self.running.borrow_mut().remove(id);
    }

    /// Stops request `id`; true when it was running.
    pub fn cancel(&self, id: &[u8]) -> bool {
        let r = self.running.borrow_mut().remove(id);
        match r {
            Some(r) => {
                r.cancelled.set(true);
                if let Some(h) = r.handle {
                    h.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// The encoded ids of every running request.
    pub fn ids(&self) -> Vec<Box<[u8]>> {
        self.running.borrow().keys().cloned().collect()
    }

    pub fn cancel_all(&self) {
        let all: Vec<Running> = self.running.borrow_mut().drain().map(|(_, r)| r).collect();
        for r in all {
            r.cancelled.set(true);
            if let Some(h) = r.handle {
                h.cancel();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.running.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.borrow().is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only `initialize` and `ping` are served (and modern requests).
    AwaitingInitialize,
    Ready {
        version: &'static str,
    },
}

/// The part of a session that can outlive its shard: what `initialize` and
/// `logging/setLevel` agreed. The stdio client cannot reconnect, so the main
/// thread keeps this and a restarted shard 0 resumes the session from it
/// instead of answering "not initialized" to a client that did initialize.
/// Subscriptions, running requests and pending server-to-client requests die
/// with the shard and are not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    version: &'static str,
    caps: ClientCaps,
    client_initialized: bool,
    log_level: Option<LogLevel>,
    principal: Option<std::sync::Arc<str>>,
    access: Option<std::sync::Arc<auth::Access>>,
}

impl Resume {
    /// A session read back from the store (`--data-dir`).
    pub fn restored(
        version: &'static str,
        caps: ClientCaps,
        client_initialized: bool,
        log_level: Option<LogLevel>,
    ) -> Self {
        Self {
            version,
            caps,
            client_initialized,
            log_level,
            principal: None,
            access: None,
        }
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    pub fn caps(&self) -> ClientCaps {
        self.caps
    }

    pub fn client_initialized(&self) -> bool {
        self.client_initialized
    }

    pub fn log_level(&self) -> Option<LogLevel> {
        self.log_level
    }
}

/// One client's legacy MCP state: a TCP or stdio connection, or an HTTP
/// session. Modern requests read nothing from it.
pub struct Session {
    phase: Phase,
    /// The client sent `notifications/initialized`.
    client_initialized: bool,
    caps: ClientCaps,
    /// Set by `logging/setLevel`; none: no log messages.
    log_level: Option<LogLevel>,
    /// Where server-initiated messages unrelated to a request go.
    unrelated: Option<SharedNotifier>,
    /// This session's id in the shard's subscriber tables, once it has one.
    subscriber: Option<u64>,
    /// Resource URIs this session watches (`resources/subscribe`).
    subscriptions: HashSet<Box<str>>,
    outbound: Rc<Outbound>,
    inflight: Rc<Inflight>,
    /// Modern listen streams opened on this session's transport.
    listens: Rc<RefCell<HashSet<u64>>>,
    /// Scopes this session's tasks (legacy `tasks/list`).
    scope: u64,
    /// This session's own rate limit (TCP/stdio connections; HTTP limits
    /// requests before they reach the session).
    rate: Option<TokenBucket>,
    /// What the authenticated principal may use (`[[role]]`s); None:
    /// everything.
    /// (Arc only so that a stdio session's [`Resume`] can carry it to the
    /// main thread; never shared between shards.)
    access: Option<std::sync::Arc<auth::Access>>,
    /// Who is calling (`--auth`), for the audit log and the session binding.
    principal: Option<std::sync::Arc<str>>,
    /// This session's name on log and audit lines: the HTTP session id,
    /// `tcp-<shard>-<n>` or `stdio`.
    label: Option<Rc<str>>,
    /// Set on TCP and stdio sessions under `--auth`: requests must carry a
    /// token in `_meta` until one has been accepted.
    auth: Option<std::sync::Arc<auth::AuthConfig>>,
}

impl Session {
    pub fn new(shard: &Shard, unrelated: Option<SharedNotifier>) -> Self {
        Self {
            phase: Phase::AwaitingInitialize,
            client_initialized: false,
            caps: ClientCaps::default(),
            log_level: None,
            unrelated,
            subscriber: None,
            subscriptions: HashSet::new(),
            outbound: Outbound::new(
                shard.limits.max_client_requests,
                shard.limits.client_request_timeout(),
            ),
            inflight: Rc::new(Inflight::default()),
            listens: Rc::new(RefCell::new(HashSet::new())),
            scope: shard.next_session_scope(),
            rate: None,
            access: None,
            principal: None,
            auth: None,
            label: None,
        }
    }

    /// Names this session on log and audit lines.
    pub fn set_label(&mut self, label: &str) {
        self.label = Some(label.into());
    }

    /// While the result lives, this thread's log lines name this session.
    pub fn log_scope(&self) -> Option<LogSession> {
        self.label.as_ref().map(LogSession::enter)
    }

    /// A per-shard serial naming this session (log lines, and which
    /// legacy tasks `tasks/list` shows).
    pub fn scope(&self) -> u64 {
        self.scope
    }

    /// Keeps the scope a stored session had, so its tasks stay its own.
    pub fn set_scope(&mut self, scope: u64) {
        self.scope = scope;
    }

    /// Binds this session to `who` and restricts it to what its roles
    /// allow (`--auth`).
    pub fn set_identity(&mut self, auth: &auth::AuthConfig, who: &auth::Identity) {
        self.access = auth.access(who).map(std::sync::Arc::new);
        self.principal = Some(who.principal.as_str().into());
    }

    /// Who this session authenticated as (`--auth`).
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// Requests must authenticate with a `_meta.authorization` token (TCP
    /// and stdio under `--auth`; HTTP authenticates every request itself).
    pub fn require_auth(&mut self, auth: std::sync::Arc<auth::AuthConfig>) {
        self.auth = Some(auth);
    }

    /// Checks a TCP/stdio request's `_meta.authorization` token: the first
    /// valid one binds the connection to its principal; requests before it
    /// (other than `ping`) and tokens of other principals are refused.
    fn check_token(
        &mut self,
        shard: &Shard,
        auth: &auth::AuthConfig,
        req: &Req<'_, '_>,
        req_meta: Option<&TapeValue<'_, '_>>,
        out: &mut Vec<u8>,
    ) -> Option<Handled> {
        let presented = req_meta.and_then(|m| m.get(auth::META_AUTHORIZATION));
        let refused = match presented {
            None if self.principal.is_some() || req.name == method::PING => return None,
            None => "send a token in params._meta.authorization (\"Bearer <token>\")".to_string(),
            Some(v) => match v.into_string().and_then(auth::bearer) {
                None => "params._meta.authorization must be \"Bearer <token>\"".to_string(),
                Some(token) => match auth.authenticate(token) {
                    Err(why) => why,
                    Ok(who) => match self.principal.as_deref() {
                        None => {
                            log::info!("authenticated as {} ({})", who.principal, req.name);
                            self.set_identity(auth, &who);
                            return None;
                        }
                        Some(p) if p == who.principal => return None,
                        Some(p) => format!(
                            "this connection is authenticated as {p:?}, not {:?}",
                            who.principal
                        ),
                    },
                },
            },
        };
        shard.metrics.borrow_mut().counters.auth_failures += 1;
        log::info!("unauthorized {}: {refused}", req.name);
        jsonrpc::write_error(
            out,
            &req.id,
            UNAUTHORIZED,
            &format!("Unauthorized: {refused}"),
        );
        Some(Handled::done(kind_of(req.name), true))
    }

    /// Answers -31013 when the session's roles do not grant what `req`
    /// names (a tool, a prompt, a resource URI); logs and counts it.
    fn deny(&self, shard: &Shard, req: &Req<'_, '_>, out: &mut Vec<u8>) -> Option<Handled> {
        let access = self.access.as_deref()?;
        let (kind, key, what) = match req.name {
            method::TOOLS_CALL => (MethodKind::ToolsCall, "name", "tool"),
            "prompts/get" => (MethodKind::Prompts, "name", "prompt"),
            _ => (MethodKind::Resources, "uri", "resource"),
        };
        let name = req
            .params
            .and_then(|p| p.get(key))
            .and_then(|n| n.into_string())?;
        let allowed = match what {
            "tool" => access.tool(name),
            "prompt" => access.prompt(name),
            _ => access.resource(name),
        };
        if allowed {
            return None;
        }
        shard.metrics.borrow_mut().counters.auth_denied += 1;
        log::warn!(
            "denied: principal {} may not use {what} {name:?} ({})",
            access.principal,
            req.name
        );
        let msg = format!(
            "forbidden: principal {:?} may not use {what} {name:?}",
            access.principal
        );
        jsonrpc::write_error(out, &req.id, FORBIDDEN, &msg);
        Some(Handled::done(kind, true))
    }

    /// Applies `--rate-limit-per-sec` to this session's requests (the
    /// session is the principal: a TCP or stdio connection).
    pub fn limit_rate(&mut self, shard: &Shard) {
        if shard.limits.rate_limit_per_sec > 0 {
            self.rate = Some(TokenBucket::full(shard.limits.rate_burst(), Instant::now()));
        }
    }

    /// What a restart would need to carry this session on; none before
    /// `initialize`.
    pub fn resume_state(&self) -> Option<Resume> {
        let Phase::Ready { version } = self.phase else {
            return None;
        };
        Some(Resume {
            version,
            caps: self.caps,
            client_initialized: self.client_initialized,
            log_level: self.log_level,
            principal: self.principal.clone(),
            access: self.access.clone(),
        })
    }

    /// Continues a session that was initialized before its shard restarted.
    pub fn resume(&mut self, shard: &Rc<Shard>, r: Resume) {
        self.phase = Phase::Ready { version: r.version };
        self.caps = r.caps;
        self.client_initialized = r.client_initialized;
        self.log_level = r.log_level;
        self.principal = r.principal;
        self.access = r.access;
        if let (Some(sub), Some(n)) = (self.subscriber_id(shard), self.unrelated.clone()) {
            shard.legacy_sessions.borrow_mut().insert(sub, n);
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

    /// The resource URIs this session watches, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.subscriptions.iter().map(|u| u.to_string()).collect();
        v.sort();
        v
    }

    /// Watches `uris` again for a session read back from the store.
    pub fn restore_subscriptions(&mut self, shard: &Rc<Shard>, uris: Vec<String>) {
        let Some(sub) = self.subscriber_id(shard) else {
            return;
        };
        for uri in uris
            .into_iter()
            .take(shard.limits.max_subscriptions_per_session)
        {
            self.subscriptions.insert(uri.clone().into_boxed_str());
            match resources::watch(shard, uri, sub) {
                resources::WatchOp::Done(_) => {}
                resources::WatchOp::Remote(fut) => {
                    glommio::spawn_local(async move {
                        let _ = fut.await;
                    })
                    .detach();
                }
            }
        }
    }

    pub fn inflight(&self) -> &Rc<Inflight> {
        &self.inflight
    }

    pub fn has_log_level(&self) -> bool {
        self.log_level.is_some()
    }

    /// Releases what the session holds on the shard and on watch owners, and
    /// stops its running requests.
    pub fn close(&mut self, shard: &Rc<Shard>) {
        self.inflight.cancel_all();
        self.outbound.close();
        if let Some(sub) = self.subscriber.take() {
            for uri in self.subscriptions.drain() {
                resources::unwatch(shard, &uri, sub);
            }
            shard.subscribers.borrow_mut().remove(&sub);
            shard.legacy_sessions.borrow_mut().remove(&sub);
        }
    }

    /// The client's input ended: questions to it fail now rather than at
    /// their timeout, and its listen streams end.
    pub fn input_closed(&self) {
        self.outbound.close();
        if !self.listens.borrow().is_empty() {
            self.inflight.cancel_long_lived();
        }
    }

    fn subscriber_id(&mut self, shard: &Rc<Shard>) -> Option<u64> {
        if self.subscriber.is_none() {
            let n = self.unrelated.clone()?;
            self.subscriber = Some(shard.register_subscriber(n));
        }
        self.subscriber
    }

    /// Handles the message in `buf[..len]` (`buf` must extend
    /// `protocol::PARSE_PADDING` bytes further; the message is unescaped in
    /// place). Appends at most one response line to `out`, or returns a
    /// future for a response that needs to wait. `related` receives messages
    /// tied to this request.
    pub fn handle_message(
        &mut self,
        shard: &Rc<Shard>,
        buf: &mut [u8],
        len: usize,
        out: &mut Vec<u8>,
        related: Option<&SharedNotifier>,
    ) -> Option<Pending> {
        let started = shard.batch_clock.get().unwrap_or_else(Instant::now);
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
                    Ok(msg) => {
                        // A panic in dispatch (outside any handler's own
                        // catch) costs this request only: the partial answer
                        // is discarded and replaced by -32603.
                        let id = match &msg {
                            Message::Request { id, .. } => Some(*id),
                            _ => None,
                        };
                        let mark = out.len();
                        match std::panic::catch_unwind(AssertUnwindSafe(|| {
                            self.handle_parsed(shard, msg, out, started, related)
                        })) {
                            Ok(h) => h,
                            Err(_) => {
                                out.truncate(mark);
                                match id {
                                    Some(id) => {
                                        write_panic(shard, out, &id, "dispatch");
                                        Handled::done(MethodKind::Invalid, true)
                                    }
                                    None => {
                                        write_panic_log(shard, "dispatch of a notification");
                                        Handled::done(MethodKind::Notification, false)
                                    }
                                }
                            }
                        }
                    }
                },
            })
        };
        if handled.pending.is_none() {
            let ended = Instant::now();
            finish_metrics(shard, handled.kind, ended - started, handled.is_error);
            if shard.batch_clock.get().is_some() {
                shard.batch_clock.set(Some(ended));
            }
        }
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
            Message::Request { id, method, params } => self.dispatch_request(
                shard,
                Req {
                    id,
                    name: method,
                    params,
                    started,
                    related,
                },
                out,
            ),
            Message::Notification { method, params } => {
                match method {
                    method::INITIALIZED => self.client_initialized = true,
                    "notifications/cancelled" => {
                        if let Some(rid) = params.as_ref().and_then(|p| p.get("requestId")) {
                            if rid.is_str() || rid.is_number() {
                                let id = Id::Parsed(rid).to_owned_bytes();
                                if self.inflight.cancel(&id) {
                                    shard.metrics.borrow_mut().counters.requests_cancelled += 1;
                                }
                            }
                        }
                    }
                    // Unknown notifications are ignored, as JSON-RPC requires.
                    _ => {}
                }
                Handled::done(MethodKind::Notification, false)
            }
            Message::Response { id, result, error } => {
                if let Id::Parsed(v) = id {
                    if let Some(n) = v.as_u64() {
                        let answer = match (result, error) {
                            (Some(r), _) => Ok(json::encode_value(r)),
                            (None, Some(e)) => Err(client_error(e)),
                            (None, None) => {
                                Err(RpcError::new(jsonrpc::INTERNAL_ERROR, "empty response"))
                            }
                        };
                        if !self.outbound.complete(n, answer) {
                            log::debug!(
                                "shard {}: response to unknown server request {n}",
                                shard.id
                            );
                        }
                    }
                }
                Handled::done(MethodKind::Notification, false)
            }
        }
    }

    /// Serves one request and audits it (`--audit-log`).
    fn dispatch_request(
        &mut self,
        shard: &Rc<Shard>,
        req: Req<'_, '_>,
        out: &mut Vec<u8>,
    ) -> Handled {
        if shard.audit.borrow().is_none() {
            return self.dispatch_inner(shard, req, out);
        }
        let name: Option<&str> = req
            .params
            .as_ref()
            .and_then(|p| p.get("name").or_else(|| p.get("uri")))
            .and_then(|n| n.into_string());
        let method: &str = req.name;
        let started = req.started;
        let mark = out.len();
        let mut handled = self.dispatch_inner(shard, req, out);
        match handled.pending.as_mut() {
            // Answered now: written straight from the borrowed request.
            None => audit_line(
                shard,
                self.principal.as_deref(),
                self.label.as_deref(),
                method,
                name,
                started,
                &out[mark..],
            ),
            Some(p) => {
                let rec = AuditLine {
                    principal: self.principal.clone(),
                    session: self.label.clone(),
                    method: method.into(),
                    name: name.map(str::to_owned),
                    started,
                };
                let fut = std::mem::replace(&mut p.fut, Box::pin(async { Vec::new() }));
                let shard = shard.clone();
                p.fut = Box::pin(async move {
                    let response = fut.await;
                    audit_line(
                        &shard,
                        rec.principal.as_deref(),
                        rec.session.as_deref(),
                        &rec.method,
                        rec.name.as_deref(),
                        rec.started,
                        &response,
                    );
                    response
                });
            }
        }
        handled
    }

    fn dispatch_inner(
        &mut self,
        shard: &Rc<Shard>,
        req: Req<'_, '_>,
        out: &mut Vec<u8>,
    ) -> Handled {
        if let Some(bucket) = self.rate.as_mut() {
            let limits = &shard.limits;
            if let Err(wait) =
                bucket.take(req.started, limits.rate_limit_per_sec, limits.rate_burst())
            {
                shard.metrics.borrow_mut().counters.rate_limited += 1;
                write_rate_limited(out, &req.id, wait);
                return Handled::done(kind_of(req.name), true);
            }
        }
        let req_meta = req.params.as_ref().and_then(|p| p.get("_meta"));
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
                        write_unsupported_version(out, &req.id, s);
                        return Handled::done(kind_of(req.name), true);
                    }
                },
                None => {
                    let msg = "_meta[\"io.modelcontextprotocol/protocolVersion\"] must be a string";
                    jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, msg);
                    return Handled::done(kind_of(req.name), true);
                }
            },
            None if req.name == method::DISCOVER => {
                let msg = "server/discover needs params._meta[\"io.modelcontextprotocol/protocolVersion\"]";
                jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, msg);
                return Handled::done(MethodKind::Discover, true);
            }
            None => Era::Legacy,
        };

        // Taken and put back rather than cloned: the Arc is shared by every
        // shard, and a clone per request would be a contended atomic.
        if let Some(auth) = self.auth.take() {
            let refused = self.check_token(shard, &auth, &req, req_meta.as_ref(), out);
            self.auth = Some(auth);
            if let Some(h) = refused {
                return h;
            }
        }

        // Roles (`--auth`): refused before anything runs, in both eras.
        if matches!(
            req.name,
            method::TOOLS_CALL | "prompts/get" | method::RESOURCES_READ
        ) {
            if let Some(h) = self.deny(shard, &req, out) {
                return h;
            }
        }

        if let Era::Modern(_) = era {
            let caps = req_meta
                .as_ref()
                .and_then(|m| m.get(meta::CLIENT_CAPABILITIES));
            if !caps.is_some_and(|c| c.is_object()) {
                let msg = "modern requests need params._meta[\"io.modelcontextprotocol/clientCapabilities\"] (an object)";
                jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, msg);
                return Handled::done(kind_of(req.name), true);
            }
            let mut cx = CallCtx::new(shard, era);
            cx.caps = ClientCaps::parse(caps);
            cx.progress = progress_for(&req_meta, req.related);
            cx.related = req.related.cloned();
            if let (Some(level), Some(sink)) = (
                req_meta
                    .as_ref()
                    .and_then(|m| m.get("io.modelcontextprotocol/logLevel"))
                    .and_then(|l| l.into_string())
                    .and_then(LogLevel::parse),
                req.related,
            ) {
                cx.log = Some(LogSink {
                    min: level,
                    sink: sink.clone(),
                });
            }
            return match req.name {
                method::DISCOVER => {
                    write_discover(shard, out, &req.id);
                    Handled::done(MethodKind::Discover, false)
                }
                method::TOOLS_LIST => list_tools(shard, &req, out, era, self.access.as_deref()),
                method::TOOLS_CALL => call_tool(shard, &req, out, cx, &self.inflight),
                "prompts/list" => list_prompts(shard, &req, out, era, self.access.as_deref()),
                "prompts/get" => get_prompt(shard, &req, out, cx, &self.inflight),
                method::RESOURCES_LIST => {
                    list_resources(shard, &req, out, era, self.access.as_deref())
                }
                method::RESOURCES_TEMPLATES_LIST => {
                    list_templates(shard, &req, out, era, self.access.as_deref())
                }
                method::RESOURCES_READ => read_resource(shard, &req, out, cx, &self.inflight),
                "completion/complete" => complete(shard, &req, out, era),
                "subscriptions/listen" => listen(shard, &req, out, &self.inflight, &self.listens),
                name if skill_method(shard, name) => skill_request(shard, &req, out, era),
                name if tasks::is_task_method(name, era) => {
                    tasks::handle(shard, &req, out, cx, &self.inflight)
                }
                _ => {
                    let msg = format!("Method not found: {}", req.name);
                    jsonrpc::write_error(out, &req.id, jsonrpc::METHOD_NOT_FOUND, &msg);
                    Handled::done(MethodKind::OtherRequest, true)
                }
            };
        }

        match req.name {
            method::INITIALIZE => {
                let r = self.initialize(shard, &req.id, req.params, out);
                return Handled::done(MethodKind::Initialize, r.is_err());
            }
            method::PING => {
                jsonrpc::begin_result(out, &req.id);
                out.extend_from_slice(b"{}");
                jsonrpc::end_response(out);
                return Handled::done(MethodKind::Ping, false);
            }
            _ if self.phase == Phase::AwaitingInitialize => {
                jsonrpc::write_error(
                    out,
                    &req.id,
                    jsonrpc::INVALID_REQUEST,
                    "server not initialized: send initialize first",
                );
                return Handled::done(kind_of(req.name), true);
            }
            _ => {}
        }

        let mut cx = CallCtx::new(shard, era);
        cx.caps = self.caps;
        cx.progress = progress_for(&req_meta, req.related);
        let channel = req.related.or(self.unrelated.as_ref()).cloned();
        cx.related = channel.clone();
        cx.outbound = Some(self.outbound.clone());
        cx.session_scope = self.scope;
        if let (Some(min), Some(sink)) = (self.log_level, channel) {
            cx.log = Some(LogSink { min, sink });
        }
        match req.name {
            "logging/setLevel" => {
                let level = req
                    .params
                    .as_ref()
                    .and_then(|p| p.get("level"))
                    .and_then(|l| l.into_string())
                    .and_then(LogLevel::parse);
                match level {
                    Some(l) => {
                        self.log_level = Some(l);
                        jsonrpc::begin_result(out, &req.id);
                        out.extend_from_slice(b"{}");
                        jsonrpc::end_response(out);
                        Handled::done(MethodKind::OtherRequest, false)
                    }
                    None => {
                        let msg = "logging/setLevel needs params.level: one of debug, info, notice, warning, error, critical, alert, emergency";
                        jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, msg);
                        Handled::done(MethodKind::OtherRequest, true)
                    }
                }
            }
            method::TOOLS_LIST => list_tools(shard, &req, out, era, self.access.as_deref()),
            method::TOOLS_CALL => call_tool(shard, &req, out, cx, &self.inflight),
            "prompts/list" => list_prompts(shard, &req, out, era, self.access.as_deref()),
            "prompts/get" => get_prompt(shard, &req, out, cx, &self.inflight),
            method::RESOURCES_LIST => list_resources(shard, &req, out, era, self.access.as_deref()),
            method::RESOURCES_TEMPLATES_LIST => {
                list_templates(shard, &req, out, era, self.access.as_deref())
            }
            method::RESOURCES_READ => read_resource(shard, &req, out, cx, &self.inflight),
            method::RESOURCES_SUBSCRIBE | method::RESOURCES_UNSUBSCRIBE => {
                self.subscribe(shard, req.name == method::RESOURCES_SUBSCRIBE, &req, out)
            }
            "completion/complete" => complete(shard, &req, out, era),
            name if tasks::is_task_method(name, era) => {
                tasks::handle(shard, &req, out, cx, &self.inflight)
            }
            name if skill_method(shard, name) => skill_request(shard, &req, out, era),
            _ => {
                let msg = format!("Method not found: {}", req.name);
                jsonrpc::write_error(out, &req.id, jsonrpc::METHOD_NOT_FOUND, &msg);
                Handled::done(MethodKind::OtherRequest, true)
            }
        }
    }

    fn initialize(
        &mut self,
        shard: &Rc<Shard>,
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
        self.caps = ClientCaps::parse(params.as_ref().and_then(|p| p.get("capabilities")));
        let version = mcp::negotiate(requested);
        self.phase = Phase::Ready { version };
        // From now on the session hears about list changes.
        if let (Some(sub), Some(n)) = (self.subscriber_id(shard), self.unrelated.clone()) {
            shard.legacy_sessions.borrow_mut().insert(sub, n);
        }
        jsonrpc::begin_result(out, id);
        out.extend_from_slice(b"{\"protocolVersion\":\"");
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(b"\",\"capabilities\":");
        write_capabilities(shard, out, Era::Legacy);
        out.extend_from_slice(b",\"serverInfo\":");
        out.extend_from_slice(mcp::SERVER_INFO_JSON.as_bytes());
        out.extend_from_slice(b",\"instructions\":");
        json::write_str(out, instructions(shard));
        out.push(b'}');
        jsonrpc::end_response(out);
        Ok(())
    }

    /// `resources/subscribe` and `resources/unsubscribe` (legacy only).
    fn subscribe(
        &mut self,
        shard: &Rc<Shard>,
        on: bool,
        req: &Req<'_, '_>,
        out: &mut Vec<u8>,
    ) -> Handled {
        let kind = MethodKind::Subscribe;
        let uri = match resources::uri_param(&req.params) {
            Ok(u) => u.to_owned(),
            Err(e) => {
                write_rpc_error(out, &req.id, &e);
                return Handled::done(kind, true);
            }
        };
        if !resource_exists(shard, &uri) {
            write_rpc_error(out, &req.id, &resources::not_found(Era::Legacy, &uri));
            return Handled::done(kind, true);
        }
        let Some(sub) = self.subscriber_id(shard) else {
            let e = RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "this transport cannot deliver resource updates",
            );
            write_rpc_error(out, &req.id, &e);
            return Handled::done(kind, true);
        };
        if !on {
            self.subscriptions.remove(uri.as_str());
            resources::unwatch(shard, &uri, sub);
            write_empty_result(out, &req.id);
            return Handled::done(kind, false);
        }
        let max = shard.limits.max_subscriptions_per_session;
        if !self.subscriptions.contains(uri.as_str()) && self.subscriptions.len() >= max {
            shard.metrics.borrow_mut().counters.subscription_limit += 1;
            let e = RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!(
                    "subscription limit reached: {max} per session (max-subscriptions-per-session)"
                ),
            );
            write_rpc_error(out, &req.id, &e);
            return Handled::done(kind, true);
        }
        self.subscriptions.insert(uri.clone().into_boxed_str());
        match resources::watch(shard, uri, sub) {
            resources::WatchOp::Done(r) => {
                let is_error = write_empty_or_error(out, &req.id, r);
                Handled::done(kind, is_error)
            }
            resources::WatchOp::Remote(fut) => {
                let id = req.id.to_owned_bytes();
                let shard2 = shard.clone();
                let started = req.started;
                let fut: PendingResponse = Box::pin(async move {
                    let mut out = Vec::with_capacity(96);
                    let is_error = write_empty_or_error(&mut out, &Id::Encoded(&id), fut.await);
                    finish_metrics(&shard2, kind, started.elapsed(), is_error);
                    out
                });
                Handled {
                    kind,
                    pending: Some(Pending {
                        fut,
                        id: None,
                        long_lived: false,
                    }),
                    is_error: false,
                }
            }
        }
    }
}

/// One request being dispatched.
pub struct Req<'a, 'r> {
    pub id: Id<'a>,
    pub name: &'a str,
    pub params: Option<TapeValue<'a, 'a>>,
    pub started: Instant,
    pub related: Option<&'r SharedNotifier>,
}

fn client_error(e: TapeValue<'_, '_>) -> RpcError {
    let code = e
        .get("code")
        .and_then(|c| c.as_i64())
        .unwrap_or(jsonrpc::INTERNAL_ERROR as i64) as i32;
    let message = e
        .get("message")
        .and_then(|m| m.into_string())
        .unwrap_or("client error");
    RpcError::new(code, message)
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
        "prompts/list" | "prompts/get" => MethodKind::Prompts,
        _ => MethodKind::OtherRequest,
    }
}

/// Records a handled message in the shard's metrics (async handlers record
/// themselves when they finish).
pub fn account(shard: &Shard, handled: &Handled, started: Instant) {
    if handled.pending.is_none() {
        finish_metrics(shard, handled.kind, started.elapsed(), handled.is_error);
    }
}

fn finish_metrics(shard: &Shard, kind: MethodKind, took: std::time::Duration, is_error: bool) {
    let mut m = shard.metrics.borrow_mut();
    m.record(kind, took);
    if is_error {
        m.record_error(kind);
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

pub(crate) fn write_rpc_error(out: &mut Vec<u8>, id: &Id<'_>, e: &RpcError) {
    jsonrpc::write_error_with_data(
        out,
        id,
        e.code,
        &e.message,
        e.data.as_deref().map(str::as_bytes),
    );
}

fn write_empty_result(out: &mut Vec<u8>, id: &Id<'_>) {
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{}");
    jsonrpc::end_response(out);
}

fn write_empty_or_error(out: &mut Vec<u8>, id: &Id<'_>, r: Result<(), RpcError>) -> bool {
    match r {
        Ok(()) => {
            write_empty_result(out, id);
            false
        }
        Err(e) => {
            write_rpc_error(out, id, &e);
            true
        }
    }
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

fn instructions(shard: &Shard) -> &str {
    shard
        .registry
        .instructions
        .as_deref()
        .unwrap_or(mcp::INSTRUCTIONS)
}

/// The capabilities this server implements, per era.
fn write_capabilities(shard: &Shard, out: &mut Vec<u8>, era: Era) {
    let r = &shard.registry;
    out.extend_from_slice(b"{\"tools\":{\"listChanged\":true}");
    if r.has_resources() {
        out.extend_from_slice(b",\"resources\":{\"subscribe\":true,\"listChanged\":true}");
    }
    if r.has_prompts() {
        out.extend_from_slice(b",\"prompts\":{\"listChanged\":true}");
    }
    out.extend_from_slice(b",\"completions\":{},\"logging\":{}");
    if era == Era::Legacy {
        tasks::write_legacy_capability(out);
    }
    let mut exts: Vec<(&str, &str)> = r
        .extensions
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if era.is_modern() {
        exts.push((tasks::EXTENSION, "{}"));
    }
    if !exts.is_empty() {
        out.extend_from_slice(b",\"extensions\":{");
        for (i, (k, v)) in exts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::write_str(out, k);
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn write_discover(shard: &Shard, out: &mut Vec<u8>, id: &Id<'_>) {
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{\"supportedVersions\":");
    out.extend_from_slice(mcp::ALL_VERSIONS_JSON.as_bytes());
    out.extend_from_slice(b",\"capabilities\":");
    write_capabilities(shard, out, Era::Modern(mcp::MODERN_VERSIONS[0]));
    out.extend_from_slice(b",\"instructions\":");
    json::write_str(out, instructions(shard));
    out.extend_from_slice(b",\"ttlMs\":");
    json::write_u64(out, CACHE_TTL_MS);
    out.extend_from_slice(b",\"cacheScope\":\"public\"");
    close_result(out, Era::Modern(mcp::MODERN_VERSIONS[0]));
    jsonrpc::end_response(out);
}

fn cursor_of<'a>(req: &Req<'a, '_>) -> Result<Option<&'a str>, RpcError> {
    match req.params.as_ref().and_then(|p| p.get("cursor")) {
        None => Ok(None),
        Some(c) if c.is_null() => Ok(None),
        Some(c) => c
            .into_string()
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params("invalid cursor")),
    }
}

/// Writes one page of a list result: `{"<member>":[...],"nextCursor":...}`.
fn write_list<T>(
    shard: &Shard,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    era: Era,
    member: &str,
    items: &[T],
    write_item: impl Fn(&T, &mut Vec<u8>),
    kind: MethodKind,
) -> Handled {
    let cursor = match cursor_of(req) {
        Ok(c) => c,
        Err(e) => {
            write_rpc_error(out, &req.id, &e);
            return Handled::done(kind, true);
        }
    };
    let (start, end, next) = match registry::page(
        items.len(),
        cursor,
        shard.limits.page_size,
        member,
        &shard.state_key,
    ) {
        Ok(p) => p,
        Err(e) => {
            write_rpc_error(out, &req.id, &e);
            return Handled::done(kind, true);
        }
    };
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items[start..end].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_item(item, out);
    }
    out.push(b']');
    if let Some(n) = next {
        out.extend_from_slice(b",\"nextCursor\":");
        json::write_str(out, &n);
    }
    if era.is_modern() {
        out.extend_from_slice(b",\"ttlMs\":");
        json::write_u64(out, CACHE_TTL_MS);
        out.extend_from_slice(b",\"cacheScope\":\"public\"");
    }
    close_result(out, era);
    jsonrpc::end_response(out);
    Handled::done(kind, false)
}

fn list_tools(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    era: Era,
    access: Option<&auth::Access>,
) -> Handled {
    let enabled: Vec<&registry::ToolEntry> = shard
        .registry
        .tools
        .iter()
        .filter(|e| e.enabled.get())
        .filter(|e| access.is_none_or(|a| a.tool(&e.tool.descriptor().name)))
        .collect();
    write_list(
        shard,
        req,
        out,
        era,
        "tools",
        &enabled,
        |e, out| e.tool.descriptor().write_json(out),
        MethodKind::ToolsList,
    )
}

fn list_prompts(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    era: Era,
    access: Option<&auth::Access>,
) -> Handled {
    let enabled: Vec<&registry::PromptEntry> = shard
        .registry
        .prompts
        .iter()
        .filter(|e| e.enabled.get())
        .filter(|e| access.is_none_or(|a| a.prompt(&e.prompt.descriptor().name)))
        .collect();
    write_list(
        shard,
        req,
        out,
        era,
        "prompts",
        &enabled,
        |e, out| e.prompt.descriptor().write_json(out),
        MethodKind::Prompts,
    )
}

fn list_resources(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    era: Era,
    access: Option<&auth::Access>,
) -> Handled {
    let files: Vec<registry::ResourceDescriptor> = shard
        .registry
        .file_dirs
        .iter()
        .flat_map(|d| d.descriptors())
        .collect();
    let enabled: Vec<&registry::ResourceDescriptor> = shard
        .registry
        .resources
        .iter()
        .filter(|e| e.enabled.get())
        .map(|e| e.resource.descriptor())
        .chain(files.iter())
        .filter(|d| access.is_none_or(|a| a.resource(&d.uri)))
        .collect();
    write_list(
        shard,
        req,
        out,
        era,
        "resources",
        &enabled,
        |d, out| d.write_json(out),
        MethodKind::Resources,
    )
}

fn list_templates(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    era: Era,
    access: Option<&auth::Access>,
) -> Handled {
    let all: Vec<&registry::TemplateDescriptor> = shard
        .registry
        .templates
        .iter()
        .map(|(t, _)| t.descriptor())
        .filter(|d| access.is_none_or(|a| a.resource(&d.uri_template)))
        .collect();
    write_list(
        shard,
        req,
        out,
        era,
        "resourceTemplates",
        &all,
        |d, out| d.write_json(out),
        MethodKind::Resources,
    )
}

fn skill_method(shard: &Shard, name: &str) -> bool {
    !shard.registry.skills.is_empty()
        && matches!(
            name,
            "skills/list" | "skills/get" | "resources/directory/read"
        )
}

/// `skills/list`, `skills/get`, `resources/directory/read` (SEP-2640).
fn skill_request(shard: &Rc<Shard>, req: &Req<'_, '_>, out: &mut Vec<u8>, era: Era) -> Handled {
    let kind = MethodKind::Resources;
    let skills = &shard.registry.skills;
    match req.name {
        "skills/list" => write_list(
            shard,
            req,
            out,
            era,
            "skills",
            skills,
            |s, out| out.extend_from_slice(s.entry_json.as_bytes()),
            kind,
        ),
        "skills/get" => match skills::get(skills, &req.params) {
            Ok(obj) => {
                jsonrpc::begin_result(out, &req.id);
                write_object_result(out, &obj, era, Some(CACHE_TTL_MS));
                jsonrpc::end_response(out);
                Handled::done(kind, false)
            }
            Err(e) => {
                write_rpc_error(out, &req.id, &e);
                Handled::done(kind, true)
            }
        },
        _ => {
            let uri = match resources::uri_param(&req.params) {
                Ok(u) => u,
                Err(e) => {
                    write_rpc_error(out, &req.id, &e);
                    return Handled::done(kind, true);
                }
            };
            match skills::directory(skills, uri) {
                Ok(children) => write_list(
                    shard,
                    req,
                    out,
                    era,
                    "resources",
                    children,
                    |(uri, name, mime), out| {
                        out.extend_from_slice(b"{\"uri\":");
                        json::write_str(out, uri);
                        out.extend_from_slice(b",\"name\":");
                        json::write_str(out, name);
                        out.extend_from_slice(b",\"mimeType\":");
                        json::write_str(out, mime);
                        out.push(b'}');
                    },
                    kind,
                ),
                Err(e) => {
                    write_rpc_error(out, &req.id, &e);
                    Handled::done(kind, true)
                }
            }
        }
    }
}

fn resource_exists(shard: &Shard, uri: &str) -> bool {
    shard.registry.resource(uri).is_some()
        || shard.registry.template_for(uri).is_some()
        || shard
            .registry
            .file_dir_for(uri)
            .is_some_and(|d| d.contains(uri))
}

/// Modern era: reads `inputResponses` and `requestState` for a request that
/// may take several rounds.
fn rounds_for(
    shard: &Shard,
    params: &Option<TapeValue<'_, '_>>,
    target: &str,
) -> Result<Rounds, RpcError> {
    let mut responses = HashMap::new();
    if let Some(r) = params.as_ref().and_then(|p| p.get("inputResponses")) {
        let Some(obj) = r.as_object() else {
            return Err(RpcError::invalid_params("inputResponses must be an object"));
        };
        for (k, v) in obj.iter() {
            if !v.is_object() {
                return Err(RpcError::invalid_params(format!(
                    "inputResponses.{k} must be an object"
                )));
            }
            responses.insert(k.to_owned(), json::encode_value(v));
        }
    }
    let state = match params.as_ref().and_then(|p| p.get("requestState")) {
        None => None,
        Some(s) => {
            let Some(s) = s.into_string() else {
                return Err(RpcError::invalid_params("requestState must be a string"));
            };
            let opened = shard
                .state_key
                .open(target, s, shard.limits.mrtr_state_ttl_ms)
                .map_err(|e| RpcError::invalid_params(format!("invalid requestState: {e}")))?;
            Some(opened)
        }
    };
    Ok(Rounds::new(responses, state))
}

/// Writes the `InputRequiredResult` for a handler that needs client input.
fn write_input_required(
    shard: &Shard,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    ctx: Option<&Ctx>,
    target: &str,
) -> bool {
    let Some(rounds) = ctx.and_then(|c| c.rounds()).filter(|r| r.has_requests()) else {
        let e = RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            "handler asked for input but recorded no input request",
        );
        write_rpc_error(out, id, &e);
        return true;
    };
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{\"inputRequests\":");
    out.extend_from_slice(rounds.input_requests_json().as_bytes());
    if let Some(state) = rounds.next_state() {
        out.extend_from_slice(b",\"requestState\":");
        json::write_str(out, &shard.state_key.seal(target, &state));
    }
    out.extend_from_slice(b",\"resultType\":\"input_required\",");
    out.extend_from_slice(SERVER_INFO_META.as_bytes());
    out.push(b'}');
    jsonrpc::end_response(out);
    false
}

/// Wraps a handler's future: supervised, registered for cancellation,
/// encoded by `write`, accounted.
pub(crate) fn pend<T: 'static>(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    kind: MethodKind,
    fut: Pin<Box<dyn Future<Output = T>>>,
    inflight: &Rc<Inflight>,
    cancelled: Rc<Cell<bool>>,
    name: String,
    write: impl FnOnce(&Shard, &mut Vec<u8>, &Id<'_>, T) -> bool + 'static,
) -> Handled {
    let id = req.id.to_owned_bytes();
    inflight.begin(&id, cancelled);
    let track = id.clone();
    let shard = shard.clone();
    let inflight = inflight.clone();
    let started = req.started;
    let fut: PendingResponse = Box::pin(async move {
        let outcome = AssertUnwindSafe(fut).catch_unwind().await;
        inflight.finish(&id);
        let mut out = Vec::with_capacity(128);
        let is_error = match outcome {
            Ok(v) => write(&shard, &mut out, &Id::Encoded(&id), v),
            Err(_) => {
                write_panic(&shard, &mut out, &Id::Encoded(&id), &name);
                true
            }
        };
        finish_metrics(&shard, kind, started.elapsed(), is_error);
        out
    });
    Handled {
        kind,
        pending: Some(Pending {
            fut,
            id: Some(track),
            long_lived: false,
        }),
        is_error: false,
    }
}

/// `tools/call`: checks the params and arguments, runs the tool under the
/// supervisor (a panic costs this request only), and writes or defers the
/// response.
fn call_tool(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    mut cx: CallCtx<'_>,
    inflight: &Rc<Inflight>,
) -> Handled {
    let kind = MethodKind::ToolsCall;
    let id = &req.id;
    let Some(params) = req.params.filter(|p| p.is_object()) else {
        jsonrpc::write_error(
            out,
            id,
            jsonrpc::INVALID_PARAMS,
            "tools/call needs params {name, arguments}",
        );
        return Handled::done(kind, true);
    };
    let Some(name) = params.get("name").and_then(|n| n.into_string()) else {
        jsonrpc::write_error(
            out,
            id,
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
                id,
                jsonrpc::INVALID_PARAMS,
                "params.arguments must be an object",
            );
            return Handled::done(kind, true);
        }
    };
    let Some(entry) = shard.registry.tool(name) else {
        let msg = format!("Unknown tool: {name}");
        jsonrpc::write_error(out, id, jsonrpc::INVALID_PARAMS, &msg);
        return Handled::done(kind, true);
    };
    if let Err(e) = entry.validator.validate(&args) {
        let result = tools::ToolResult::error(format!("invalid arguments: {e}"));
        jsonrpc::begin_result(out, id);
        result.write_json(out, cx.era);
        jsonrpc::end_response(out);
        return Handled::done(kind, false);
    }
    if let Some(h) = tasks::intercept_call(shard, req, out, &cx, entry, args, inflight) {
        return h;
    }
    // Only the modern era names the call in requestState; legacy calls skip
    // the allocation.
    let target = if cx.era.is_modern() {
        format!("tools/call:{name}")
    } else {
        String::new()
    };
    if cx.era.is_modern() {
        match rounds_for(shard, &req.params, &target) {
            Ok(r) => *cx.rounds.get_mut() = Some(r),
            Err(e) => {
                write_rpc_error(out, id, &e);
                return Handled::done(kind, true);
            }
        }
    }
    let era = cx.era;
    let tool = entry.tool.clone();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if shard.chaos_tool_panic() {
            panic!("chaos: injected tool panic (--chaos-panic-rate)");
        }
        tool.call(&cx, args)
    }));
    match reply {
        Ok(ToolReply::Ready(outcome)) => {
            let is_error =
                write_tool_outcome(shard, out, id, outcome, era, cx.made().as_ref(), &target);
            Handled::done(kind, is_error)
        }
        Ok(ToolReply::Pending(fut)) => {
            let ctx = cx.made();
            pend(
                shard,
                req,
                kind,
                fut,
                inflight,
                cx.cancelled(),
                name.to_owned(),
                move |shard, out, id, o| {
                    write_tool_outcome(shard, out, id, o, era, ctx.as_ref(), &target)
                },
            )
        }
        Err(_) => {
            write_panic(shard, out, id, name);
            Handled::done(kind, true)
        }
    }
}

/// Writes a tool's outcome; returns whether it was a JSON-RPC error.
pub fn write_tool_outcome(
    shard: &Shard,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    outcome: ToolOutcome<'_>,
    era: Era,
    ctx: Option<&Ctx>,
    target: &str,
) -> bool {
    match outcome {
        Ok(result) => {
            jsonrpc::begin_result(out, id);
            result.write_json(out, era);
            jsonrpc::end_response(out);
            false
        }
        Err(CallError::InputRequired) if era.is_modern() => {
            write_input_required(shard, out, id, ctx, target)
        }
        Err(CallError::InputRequired) => {
            let e = RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                "input required outside a multi-round request",
            );
            write_rpc_error(out, id, &e);
            true
        }
        Err(CallError::Rpc(e)) => {
            write_rpc_error(out, id, &e);
            true
        }
    }
}

/// Writes a JSON result object (prompts, resources); returns whether it was
/// a JSON-RPC error.
fn write_json_outcome(
    shard: &Shard,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    outcome: JsonOutcome,
    era: Era,
    ctx: Option<&Ctx>,
    target: &str,
    cacheable: Option<u64>,
) -> bool {
    match outcome {
        Ok(obj) => {
            jsonrpc::begin_result(out, id);
            write_object_result(out, &obj, era, cacheable);
            jsonrpc::end_response(out);
            false
        }
        Err(CallError::InputRequired) if era.is_modern() => {
            write_input_required(shard, out, id, ctx, target)
        }
        Err(CallError::InputRequired) => {
            let e = RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                "input required outside a multi-round request",
            );
            write_rpc_error(out, id, &e);
            true
        }
        Err(CallError::Rpc(e)) => {
            write_rpc_error(out, id, &e);
            true
        }
    }
}

/// Runs a JSON-result handler (prompt, resource) and writes or defers it.
fn run_json(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    cx: &CallCtx<'_>,
    inflight: &Rc<Inflight>,
    kind: MethodKind,
    target: String,
    cacheable: Option<u64>,
    call: impl FnOnce(&CallCtx<'_>) -> JsonReply,
) -> Handled {
    let era = cx.era;
    match std::panic::catch_unwind(AssertUnwindSafe(|| call(cx))) {
        Ok(JsonReply::Ready(o)) => {
            let is_error = write_json_outcome(
                shard,
                out,
                &req.id,
                o,
                era,
                cx.made().as_ref(),
                &target,
                cacheable,
            );
            Handled::done(kind, is_error)
        }
        Ok(JsonReply::Pending(fut)) => {
            let ctx = cx.made();
            let label = target.clone();
            pend(
                shard,
                req,
                kind,
                fut,
                inflight,
                cx.cancelled(),
                label,
                move |shard, out, id, o| {
                    write_json_outcome(shard, out, id, o, era, ctx.as_ref(), &target, cacheable)
                },
            )
        }
        Err(_) => {
            write_panic(shard, out, &req.id, &target);
            Handled::done(kind, true)
        }
    }
}

fn get_prompt(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    mut cx: CallCtx<'_>,
    inflight: &Rc<Inflight>,
) -> Handled {
    let kind = MethodKind::Prompts;
    let Some(name) = req
        .params
        .as_ref()
        .and_then(|p| p.get("name"))
        .and_then(|n| n.into_string())
    else {
        jsonrpc::write_error(
            out,
            &req.id,
            jsonrpc::INVALID_PARAMS,
            "prompts/get needs params.name (a string)",
        );
        return Handled::done(kind, true);
    };
    let Some(entry) = shard.registry.prompt(name) else {
        let msg = format!("Unknown prompt: {name}");
        jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, &msg);
        return Handled::done(kind, true);
    };
    let mut args: Vec<(String, String)> = Vec::new();
    if let Some(a) = req
        .params
        .as_ref()
        .and_then(|p| p.get("arguments"))
        .filter(|a| !a.is_null())
    {
        let Some(obj) = a.as_object() else {
            jsonrpc::write_error(
                out,
                &req.id,
                jsonrpc::INVALID_PARAMS,
                "params.arguments must be an object",
            );
            return Handled::done(kind, true);
        };
        for (k, v) in obj.iter() {
            let Some(s) = v.into_string() else {
                let msg = format!("prompt argument `{k}` must be a string");
                jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, &msg);
                return Handled::done(kind, true);
            };
            args.push((k.to_owned(), s.to_owned()));
        }
    }
    let prompt = entry.prompt.clone();
    for a in &prompt.descriptor().arguments {
        if a.required && !args.iter().any(|(k, _)| k == &a.name) {
            let msg = format!("missing required prompt argument `{}`", a.name);
            jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, &msg);
            return Handled::done(kind, true);
        }
    }
    let target = format!("prompts/get:{name}");
    if cx.era.is_modern() {
        match rounds_for(shard, &req.params, &target) {
            Ok(r) => *cx.rounds.get_mut() = Some(r),
            Err(e) => {
                write_rpc_error(out, &req.id, &e);
                return Handled::done(kind, true);
            }
        }
    }
    run_json(shard, req, out, &cx, inflight, kind, target, None, |cx| {
        prompt.get(cx, &args)
    })
}

fn read_resource(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    mut cx: CallCtx<'_>,
    inflight: &Rc<Inflight>,
) -> Handled {
    let kind = MethodKind::Resources;
    let uri = match resources::uri_param(&req.params) {
        Ok(u) => u.to_owned(),
        Err(e) => {
            write_rpc_error(out, &req.id, &e);
            return Handled::done(kind, true);
        }
    };
    let target = format!("resources/read:{uri}");
    if cx.era.is_modern() {
        match rounds_for(shard, &req.params, &target) {
            Ok(r) => *cx.rounds.get_mut() = Some(r),
            Err(e) => {
                write_rpc_error(out, &req.id, &e);
                return Handled::done(kind, true);
            }
        }
    }
    let ttl = if uri.starts_with(resources::URI_SCHEME) {
        0
    } else {
        CACHE_TTL_MS
    };
    type Reader<'u> = Box<dyn FnOnce(&CallCtx<'_>) -> registry::JsonReply + 'u>;
    let u = uri.as_str();
    let reader: Option<(u64, Reader<'_>)> = if let Some(entry) = shard.registry.resource(&uri) {
        let r = entry.resource.clone();
        Some((ttl, Box::new(move |cx: &CallCtx<'_>| r.read(cx, u))))
    } else if let Some(d) = shard.registry.file_dir_for(&uri) {
        let d = d.clone();
        // Files change on disk: no caching hint.
        Some((
            0,
            Box::new(move |cx: &CallCtx<'_>| d.read(cx.shard, cx.era, u)),
        ))
    } else if let Some((t, vars)) = shard.registry.template_for(&uri) {
        let t = t.clone();
        Some((ttl, Box::new(move |cx: &CallCtx<'_>| t.read(cx, u, &vars))))
    } else {
        None
    };
    if let Some((ttl, read)) = reader {
        return run_json(
            shard,
            req,
            out,
            &cx,
            inflight,
            kind,
            target,
            Some(ttl),
            read,
        );
    }
    write_rpc_error(out, &req.id, &resources::not_found(cx.era, &uri));
    Handled::done(kind, true)
}

/// `completion/complete` for prompt arguments and template variables.
fn complete(shard: &Rc<Shard>, req: &Req<'_, '_>, out: &mut Vec<u8>, era: Era) -> Handled {
    let kind = MethodKind::OtherRequest;
    let p = req.params.as_ref();
    let r = p.and_then(|p| p.get("ref"));
    let arg = p.and_then(|p| p.get("argument"));
    let (Some(r), Some(arg)) = (r, arg) else {
        jsonrpc::write_error(
            out,
            &req.id,
            jsonrpc::INVALID_PARAMS,
            "completion/complete needs params.ref and params.argument",
        );
        return Handled::done(kind, true);
    };
    let arg_name = arg.get("name").and_then(|n| n.into_string()).unwrap_or("");
    let prefix = arg.get("value").and_then(|n| n.into_string()).unwrap_or("");
    let values = match r.get("type").and_then(|t| t.into_string()) {
        Some("ref/prompt") => {
            let name = r.get("name").and_then(|n| n.into_string()).unwrap_or("");
            match shard.registry.prompt(name) {
                Some(e) => e.prompt.complete(arg_name, prefix),
                None => {
                    let msg = format!("Unknown prompt: {name}");
                    jsonrpc::write_error(out, &req.id, jsonrpc::INVALID_PARAMS, &msg);
                    return Handled::done(kind, true);
                }
            }
        }
        Some("ref/resource") => {
            let uri = r.get("uri").and_then(|n| n.into_string()).unwrap_or("");
            match shard.registry.template_named(uri) {
                Some(t) => t.complete(arg_name, prefix),
                None if shard.registry.resource(uri).is_some() => Vec::new(),
                None => {
                    write_rpc_error(out, &req.id, &resources::not_found(era, uri));
                    return Handled::done(kind, true);
                }
            }
        }
        _ => {
            jsonrpc::write_error(
                out,
                &req.id,
                jsonrpc::INVALID_PARAMS,
                "params.ref.type must be ref/prompt or ref/resource",
            );
            return Handled::done(kind, true);
        }
    };
    const MAX_VALUES: usize = 100;
    let total = values.len();
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(b"{\"completion\":{\"values\":[");
    for (i, v) in values.iter().take(MAX_VALUES).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, v);
    }
    out.extend_from_slice(b"],\"total\":");
    json::write_u64(out, total as u64);
    out.extend_from_slice(if total > MAX_VALUES {
        b",\"hasMore\":true}"
    } else {
        b",\"hasMore\":false}"
    });
    close_result(out, era);
    jsonrpc::end_response(out);
    Handled::done(kind, false)
}

/// `subscriptions/listen` (modern): acknowledges, then streams the requested
/// notifications until the client goes away or the server stops.
fn listen(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    inflight: &Rc<Inflight>,
    listens: &Rc<RefCell<HashSet<u64>>>,
) -> Handled {
    let kind = MethodKind::OtherRequest;
    let Some(mut filter) =
        listen::Filter::parse(req.params.as_ref().and_then(|p| p.get("notifications")))
    else {
        jsonrpc::write_error(
            out,
            &req.id,
            jsonrpc::INVALID_PARAMS,
            "subscriptions/listen needs params.notifications (a SubscriptionFilter object)",
        );
        return Handled::done(kind, true);
    };
    let Some(related) = req.related else {
        jsonrpc::write_error(
            out,
            &req.id,
            jsonrpc::INVALID_REQUEST,
            "subscriptions/listen needs a streaming response (Accept: text/event-stream)",
        );
        return Handled::done(kind, true);
    };
    // Honour only what this server can send.
    filter.prompts &= shard.registry.has_prompts();
    filter.resources &= shard.registry.has_resources();
    filter.resource_uris.retain(|u| resource_exists(shard, u));
    let id_json = req.id.to_owned_bytes();
    let sink: SharedNotifier = Rc::new(listen::Tagged {
        inner: related.clone(),
        id_json: id_json.clone(),
    });
    let mut ack = Vec::with_capacity(160);
    ack.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/subscriptions/acknowledged\",\"params\":{\"notifications\":");
    ack.extend_from_slice(filter.to_json().as_bytes());
    ack.extend_from_slice(b"}}");
    sink.notify(&ack);

    let lid = shard.register_subscriber(sink.clone());
    let uris = filter.resource_uris.clone();
    for u in &uris {
        if let resources::WatchOp::Remote(f) = resources::watch(shard, u.clone(), lid) {
            glommio::spawn_local(async move {
                let _ = f.await;
            })
            .detach();
        }
    }
    shard
        .listeners
        .borrow_mut()
        .insert(lid, listen::Listener { filter, sink });
    listens.borrow_mut().insert(lid);
    shard.metrics.borrow_mut().counters.listen_streams += 1;

    struct Unlisten {
        shard: Rc<Shard>,
        lid: u64,
        uris: Vec<String>,
        listens: Rc<RefCell<HashSet<u64>>>,
    }
    impl Drop for Unlisten {
        fn drop(&mut self) {
            self.shard.listeners.borrow_mut().remove(&self.lid);
            self.shard.subscribers.borrow_mut().remove(&self.lid);
            self.listens.borrow_mut().remove(&self.lid);
            for u in &self.uris {
                resources::unwatch(&self.shard, u, self.lid);
            }
        }
    }
    let guard = Unlisten {
        shard: shard.clone(),
        lid,
        uris,
        listens: listens.clone(),
    };
    let shard2 = shard.clone();
    inflight.begin_long_lived(&id_json);
    let inflight2 = inflight.clone();
    let track = id_json.clone();
    let fut: PendingResponse = Box::pin(async move {
        let _guard = guard;
        shard2.shutdown.wait().await;
        inflight2.finish(&id_json);
        // Graceful end: a SubscriptionsListenResult naming the subscription.
        let mut out = Vec::with_capacity(160);
        jsonrpc::begin_result(&mut out, &Id::Encoded(&id_json));
        out.extend_from_slice(
            b"{\"resultType\":\"complete\",\"_meta\":{\"io.modelcontextprotocol/subscriptionId\":",
        );
        out.extend_from_slice(&id_json);
        out.extend_from_slice(b"}}");
        jsonrpc::end_response(&mut out);
        out
    });
    Handled {
        kind,
        pending: Some(Pending {
            fut,
            id: Some(track),
            long_lived: true,
        }),
        is_error: false,
    }
}

/// The client learns only that an internal error occurred; the panic message
/// went to stderr through the panic hook.
fn write_panic(shard: &Shard, out: &mut Vec<u8>, id: &Id<'_>, what: &str) {
    write_panic_log(shard, what);
    jsonrpc::write_error(
        out,
        id,
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the handler failed unexpectedly",
    );
}

/// The documented answer to a request over its principal's rate limit.
pub fn write_rate_limited(out: &mut Vec<u8>, id: &Id<'_>, retry_after: std::time::Duration) {
    let ms = retry_after.as_millis().max(1) as i64;
    let mut data = Vec::with_capacity(32);
    data.extend_from_slice(b"{\"retryAfterMs\":");
    json::write_i64(&mut data, ms);
    data.push(b'}');
    jsonrpc::write_error_with_data(
        out,
        id,
        jsonrpc::RATE_LIMITED,
        "Rate limit exceeded: retry later",
        Some(&data),
    );
}

fn write_panic_log(shard: &Shard, what: &str) {
    shard.metrics.borrow_mut().counters.handler_panics += 1;
    log::debug!(
        "shard {}: handler {what:?} panicked; answered -32603",
        shard.id
    );
}

/// Applies a change to the offered set on every shard, in one order: the
/// change goes to shard 0, which applies it and forwards it to the others
/// over FIFO mesh queues, so all shards converge.
pub fn set_enabled(shard: &Rc<Shard>, kind: ListKind, name: &str, on: bool) {
    if shard.id == 0 {
        apply_enabled(shard, kind, name, on, true);
    } else {
        shard.tell(
            0,
            crate::runtime::mesh::Request::SetEnabled {
                kind,
                name: name.to_owned(),
                on,
                broadcast: true,
            },
        );
    }
}

/// Applies a change here (and, on shard 0, forwards it to every other shard).
pub fn apply_enabled(shard: &Rc<Shard>, kind: ListKind, name: &str, on: bool, broadcast: bool) {
    if broadcast {
        for to in 1..shard.shard_count {
            shard.tell(
                to,
                crate::runtime::mesh::Request::SetEnabled {
                    kind,
                    name: name.to_owned(),
                    on,
                    broadcast: false,
                },
            );
        }
    }
    if shard.registry.set_enabled(kind, name, on) {
        listen::list_changed(shard, kind);
    }
}
