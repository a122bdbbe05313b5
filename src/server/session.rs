//! One client's MCP state: a TCP or stdio connection, or a legacy HTTP
//! session (a modern request gets a fresh one that lives as long as it).
//!
//! The session holds what `initialize` agreed, the client's log level, its
//! subscriptions, its requests in flight and its questions to the client,
//! and who it authenticated as. Authentication state is plain data borrowed
//! by the checks, never moved out: a panic anywhere leaves it as it was.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Instant;

use simd_json::prelude::*;

use super::auth::{Access, Identity};
use super::content::LogLevel;
use super::core::Core;
use super::ctx::{ClientCaps, Outbound};
use super::dispatch::{self, Req};
use super::ratelimit::TokenBucket;
use super::tools::RpcError;
use super::watch;
use super::{encode, Answer, Handled, Pending, SharedNotifier};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::method::Notification;

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
pub(crate) struct LogScope(Option<Rc<str>>);

impl LogScope {
    fn enter(label: &Rc<str>) -> Self {
        Self(LOG_SESSION.with(|s| s.replace(Some(label.clone()))))
    }
}

impl Drop for LogScope {
    fn drop(&mut self) {
        let previous = self.0.take();
        LOG_SESSION.with(|s| *s.borrow_mut() = previous);
    }
}

/// Requests a session is running, by id, so the client can cancel them.
#[derive(Default)]
pub(crate) struct Inflight {
    running: RefCell<HashMap<Box<[u8]>, Running>>,
}

struct Running {
    handle: Option<glommio::task::JoinHandle<()>>,
    cancelled: Rc<Cell<bool>>,
    long_lived: bool,
}

impl Inflight {
    pub(crate) fn begin(&self, id: &[u8], cancelled: Rc<Cell<bool>>) {
        self.insert(id, cancelled, false);
    }

    pub(crate) fn begin_long_lived(&self, id: &[u8]) {
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

    pub(crate) fn finish(&self, id: &[u8]) {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Only `initialize` and `ping` are served (and modern requests).
    AwaitingInitialize,
    Ready {
        version: &'static str,
    },
}

/// The part of a session that can outlive its shard: what `initialize` and
/// `logging/setLevel` agreed, and who the client is. The stdio client
/// cannot reconnect, so the main thread keeps this and a restarted shard 0
/// resumes the session from it; a stored legacy HTTP session is rebuilt from
/// it. Subscriptions, running requests and pending server-to-client
/// requests are not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    pub version: &'static str,
    pub caps: ClientCaps,
    pub client_initialized: bool,
    pub log_level: Option<LogLevel>,
    pub identity: Option<Identity>,
}

/// Subscriptions a session holds (`resources/subscribe`), shared with the
/// watch registrations still under way so a refused one can be taken back.
type Subscriptions = Rc<RefCell<HashSet<Box<str>>>>;

/// Called when what a stored session keeps has changed.
pub(crate) type OnChange = Rc<dyn Fn()>;

pub(crate) struct Session {
    pub(super) phase: Phase,
    /// The client sent `notifications/initialized`.
    client_initialized: bool,
    pub(super) caps: ClientCaps,
    /// Set by `logging/setLevel`; none: no log messages.
    pub(super) log_level: Option<LogLevel>,
    /// Where server-initiated messages unrelated to a request go.
    pub(super) unrelated: Option<SharedNotifier>,
    /// This session's id in the shard's subscriber tables, once it has one.
    subscriber: Option<u64>,
    /// Resource URIs this session watches (or is registering a watch for).
    subscriptions: Subscriptions,
    pub(super) outbound: Rc<Outbound>,
    pub(super) inflight: Rc<Inflight>,
    /// Modern listen streams opened on this session's transport.
    pub(super) listens: Rc<RefCell<HashSet<u64>>>,
    /// Scopes this session's tasks (legacy `tasks/list`).
    pub(super) scope: u64,
    /// This session's own rate limit (TCP/stdio connections; HTTP limits
    /// requests before they reach the session).
    rate: Option<TokenBucket>,
    /// The session is its own principal for the rate limit (TCP/stdio).
    rate_applies: bool,
    /// Who is calling (`--auth`), for the audit log and the session binding.
    identity: Option<Identity>,
    /// `identity.principal`, shared cheaply with audit lines written later.
    principal: Option<Rc<str>>,
    /// What the identity may use (`[[role]]`s); `None`: everything.
    pub(super) access: Option<Rc<Access>>,
    /// This session's name on log and audit lines: the HTTP session id,
    /// `tcp-<shard>-<n>` or `stdio`.
    label: Option<Rc<str>>,
    /// TCP and stdio under `--auth`: requests must carry a token in `_meta`
    /// until one has been accepted.
    pub(super) requires_token: bool,
    /// Told when what a stored session keeps changes (HTTP sessions).
    on_change: Option<OnChange>,
    /// The key the session is stored under (HTTP sessions): its tasks are
    /// stored with it.
    pub(super) store_key: Option<Rc<str>>,
    /// The HTTP `traceparent` header of the request being handled (HTTP
    /// transports set it, tracing takes it; `params._meta` wins).
    trace_header: Option<super::trace::TraceParent>,
    /// TCP/stdio: the token that authenticated the connection, checked
    /// again after a reload, and when it expires (JWT `exp`, Unix s).
    token: Option<(Rc<str>, Option<u64>)>,
    /// The `Core::auth_generation` the identity was last checked under.
    auth_generation: u64,
}

impl Session {
    pub fn new(core: &Core, unrelated: Option<SharedNotifier>) -> Self {
        Self {
            phase: Phase::AwaitingInitialize,
            client_initialized: false,
            caps: ClientCaps::default(),
            log_level: None,
            unrelated,
            subscriber: None,
            subscriptions: Rc::default(),
            outbound: Outbound::new(
                core.limits.max_client_requests,
                core.limits.client_request_timeout(),
            ),
            inflight: Rc::new(Inflight::default()),
            listens: Rc::new(RefCell::new(HashSet::new())),
            scope: core.next_session_scope(),
            rate: None,
            rate_applies: false,
            identity: None,
            principal: None,
            access: None,
            label: None,
            requires_token: false,
            on_change: None,
            store_key: None,
            trace_header: None,
            token: None,
            auth_generation: core.auth_generation(),
        }
    }

    /// The trace context an HTTP request carried in its headers, for the
    /// request handled next.
    pub fn set_trace_header(&mut self, parent: Option<super::trace::TraceParent>) {
        self.trace_header = parent;
    }

    pub(super) fn take_trace_header(&mut self) -> Option<super::trace::TraceParent> {
        self.trace_header.take()
    }

    /// The HTTP session id of a legacy HTTP session.
    pub(super) fn http_session_id(&self) -> Option<&Rc<str>> {
        self.store_key.as_ref()
    }

    /// Names this session on log and audit lines.
    pub fn set_label(&mut self, label: &str) {
        self.label = Some(label.into());
    }

    pub(super) fn label(&self) -> Option<&Rc<str>> {
        self.label.as_ref()
    }

    /// While the result lives, this thread's log lines name this session.
    pub fn log_scope(&self) -> Option<LogScope> {
        self.label.as_ref().map(LogScope::enter)
    }

    /// A per-shard serial naming this session (log lines, and which legacy
    /// tasks `tasks/list` shows).
    pub fn scope(&self) -> u64 {
        self.scope
    }

    /// Keeps the scope a stored session had, so its tasks stay its own.
    pub fn set_scope(&mut self, scope: u64) {
        self.scope = scope;
    }

    /// Names the key the session is stored under (its tasks go with it).
    pub fn set_store_key(&mut self, key: &str) {
        self.store_key = Some(key.into());
    }

    /// Says when what a stored session keeps has changed.
    pub fn on_change(&mut self, f: OnChange) {
        self.on_change = Some(f);
    }

    pub(super) fn changed(&self) {
        if let Some(f) = &self.on_change {
            f();
        }
    }

    /// Binds this session to `who` and restricts it to what its roles allow
    /// under this shard's role table (`--auth`).
    pub fn set_identity(&mut self, core: &Core, who: Identity) {
        let auth = core.auth().expect("identities exist only with --auth");
        self.access = auth.access(&who).map(Rc::new);
        self.principal = Some(who.principal.as_str().into());
        self.identity = Some(who);
    }

    /// Binds a TCP/stdio connection's identity to the token that proved it
    /// (checked again after a reload; refused once it expires).
    pub(super) fn bind_token(&mut self, token: &str, expires_at_s: Option<u64>) {
        self.token = Some((token.into(), expires_at_s));
    }

    /// Checks the caller again when the tables changed (a reload) or its
    /// token expired: a token that no longer authenticates the same
    /// principal, or an expired one, unbinds the connection (its next
    /// request must bring a valid token); roles are re-read either way.
    /// Returns why the identity was dropped.
    pub(super) fn recheck_identity(&mut self, core: &Core) -> Option<&'static str> {
        self.identity.as_ref()?;
        let expired = self
            .token
            .as_ref()
            .and_then(|(_, exp)| *exp)
            .is_some_and(|e| super::clock::now_ms() / 1000 >= e);
        let generation = core.auth_generation();
        if generation == self.auth_generation && !expired {
            return None;
        }
        self.auth_generation = generation;
        let who = self.identity.clone().expect("checked above");
        let auth = core.auth().expect("identities exist only with --auth");
        let why = match &self.token {
            None if auth.by_certificate() => {
                // --auth cert: the name is looked up again in the reloaded
                // principals file.
                match auth.authenticate_cert(Some(&who.principal)) {
                    Ok(again) => {
                        self.set_identity(core, again);
                        return None;
                    }
                    Err(_) => "its certificate name is no longer in --auth-cert-principals",
                }
            }
            None => {
                // HTTP: every request is authenticated by the transport;
                // only the roles' meaning may have changed.
                self.set_identity(core, who);
                return None;
            }
            Some(_) if expired => "its token expired",
            Some((token, _)) => match auth.authenticate(token) {
                Ok(again) if again.principal == who.principal => {
                    let exp = auth.expires_at_s(token);
                    let token = token.clone();
                    self.set_identity(core, again);
                    self.token = Some((token, exp));
                    return None;
                }
                _ => "its token is no longer accepted (the server's tokens or keys changed)",
            },
        };
        self.identity = None;
        self.principal = None;
        self.access = None;
        self.token = None;
        Some(why)
    }

    /// Who this session authenticated as (`--auth`).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub(super) fn principal(&self) -> Option<&Rc<str>> {
        self.principal.as_ref()
    }

    /// `--auth cert`: binds the connection to the principal its client
    /// certificate names (`name`, verified in the TLS handshake). Under any
    /// other `--auth` mode, or none, this does nothing. A name not listed
    /// leaves the session unauthenticated: its requests are refused.
    pub fn authenticate_cert(
        &mut self,
        core: &Core,
        name: Option<&str>,
    ) -> Result<(), super::auth::AuthError> {
        let Some(auth) = core.auth().filter(|a| a.by_certificate()) else {
            return Ok(());
        };
        let who = auth.authenticate_cert(name)?;
        log::info!("authenticated as {} (client certificate)", who.principal);
        self.set_identity(core, who);
        Ok(())
    }

    /// Requests must authenticate with a `_meta.authorization` token (TCP
    /// and stdio under `--auth`; HTTP authenticates every request itself).
    pub fn require_token(&mut self) {
        self.requires_token = true;
    }

    /// Applies `--rate-limit-per-sec` to this session's requests (the
    /// session is the principal: a TCP or stdio connection).
    pub fn limit_rate(&mut self) {
        self.rate_applies = true;
    }

    /// Takes one token of this session's rate limit; `Err(wait)` when over.
    pub(super) fn take_rate(
        &mut self,
        core: &Core,
        now: Instant,
    ) -> Result<(), std::time::Duration> {
        if !self.rate_applies {
            return Ok(());
        }
        let (rate, burst) = core.rate_limit();
        if rate == 0 {
            return Ok(());
        }
        // Made full at the first request under a limit (a reload may turn
        // the limit on for a connection that started without one).
        let bucket = self
            .rate
            .get_or_insert_with(|| TokenBucket::full(burst, now));
        bucket.take(now, rate, burst)
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
            identity: self.identity.clone(),
        })
    }

    /// Continues a session that was initialized before its shard restarted
    /// (or was read back from the store).
    pub fn resume(&mut self, core: &Rc<Core>, r: Resume) {
        self.phase = Phase::Ready { version: r.version };
        self.caps = r.caps;
        self.client_initialized = r.client_initialized;
        self.log_level = r.log_level;
        if let Some(who) = r.identity {
            self.set_identity(core, who);
        }
        self.hear_list_changes(core);
    }

    /// From now on the session hears about list changes.
    pub(super) fn hear_list_changes(&mut self, core: &Rc<Core>) {
        if let (Some(sub), Some(n)) = (self.subscriber_id(core), self.unrelated.clone()) {
            core.legacy_sessions.borrow_mut().insert(sub, n);
        }
    }

    pub(super) fn set_initialized(&mut self) {
        if !self.client_initialized {
            self.client_initialized = true;
            self.changed();
        }
    }

    /// The protocol version agreed in `initialize`, once it has happened.
    pub fn negotiated_version(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Ready { version } => Some(version),
            Phase::AwaitingInitialize => None,
        }
    }

    /// The resource URIs this session watches, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .subscriptions
            .borrow()
            .iter()
            .map(|u| u.to_string())
            .collect();
        v.sort();
        v
    }

    /// Watches `uris` again for a session read back from the store; a watch
    /// the owner refuses now is dropped, as a new subscription would be.
    pub fn restore_subscriptions(&mut self, core: &Rc<Core>, uris: Vec<String>) {
        for uri in uris
            .into_iter()
            .take(core.limits.max_subscriptions_per_session)
        {
            let Ok(pending) = self.subscribe(core, uri.clone()) else {
                log::info!("stored subscription to {uri} not restored: the watch was refused");
                continue;
            };
            if let Some(fut) = pending {
                glommio::spawn_local(async move {
                    if let Err(e) = fut.await {
                        log::info!("stored subscription to {uri} not restored: {}", e.message);
                    }
                })
                .detach();
            }
        }
    }

    /// Subscribes this session to `uri`. The URI counts against the limit
    /// and blocks a duplicate from the moment it is asked for; a watch the
    /// owner refuses takes it back out (and the session is marked changed,
    /// so a stored copy forgets it too). `Ok(Some(fut))`: the owner's answer
    /// is on its way.
    pub(super) fn subscribe(
        &mut self,
        core: &Rc<Core>,
        uri: String,
    ) -> Result<Option<watch::Registration>, RpcError> {
        let Some(sub) = self.subscriber_id(core) else {
            return Err(RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "this transport cannot deliver resource updates",
            ));
        };
        let max = core.limits.max_subscriptions_per_session;
        {
            let mut subs = self.subscriptions.borrow_mut();
            if subs.contains(uri.as_str()) {
                return Ok(None);
            }
            if subs.len() >= max {
                core.metrics.borrow_mut().counters.subscription_limit += 1;
                return Err(RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    format!(
                        "subscription limit reached: {max} per session (max-subscriptions-per-session)"
                    ),
                ));
            }
            subs.insert(uri.clone().into_boxed_str());
        }
        match watch::watch(core, uri.clone(), sub) {
            watch::WatchOp::Done(Ok(())) => {
                self.changed();
                Ok(None)
            }
            watch::WatchOp::Done(Err(e)) => {
                self.subscriptions.borrow_mut().remove(uri.as_str());
                Err(e)
            }
            watch::WatchOp::Remote(fut) => {
                self.changed();
                let subs = self.subscriptions.clone();
                let on_change = self.on_change.clone();
                let core = core.clone();
                Ok(Some(Box::pin(async move {
                    let r = fut.await;
                    let still_wanted = subs.borrow().contains(uri.as_str());
                    match (&r, still_wanted) {
                        (Err(_), true) => {
                            subs.borrow_mut().remove(uri.as_str());
                            if let Some(f) = on_change {
                                f();
                            }
                        }
                        // Unsubscribed while the owner was registering it.
                        (Ok(()), false) => watch::unwatch(&core, &uri, sub),
                        _ => {}
                    }
                    r
                })))
            }
        }
    }

    /// Drops this session's subscription to `uri` (if it had one).
    pub(super) fn unsubscribe(&mut self, core: &Rc<Core>, uri: &str) -> Result<(), RpcError> {
        let Some(sub) = self.subscriber_id(core) else {
            return Err(RpcError::new(
                jsonrpc::INVALID_REQUEST,
                "this transport cannot deliver resource updates",
            ));
        };
        if self.subscriptions.borrow_mut().remove(uri) {
            watch::unwatch(core, uri, sub);
            self.changed();
        }
        Ok(())
    }

    pub fn inflight(&self) -> &Rc<Inflight> {
        &self.inflight
    }

    /// Releases what the session holds on the shard and on watch owners, and
    /// stops its running requests.
    pub fn close(&mut self, core: &Rc<Core>) {
        self.inflight.cancel_all();
        self.outbound.close();
        if let Some(sub) = self.subscriber.take() {
            for uri in self.subscriptions.borrow_mut().drain() {
                watch::unwatch(core, &uri, sub);
            }
            core.subscribers.borrow_mut().remove(&sub);
            core.legacy_sessions.borrow_mut().remove(&sub);
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

    fn subscriber_id(&mut self, core: &Core) -> Option<u64> {
        if self.subscriber.is_none() {
            let n = self.unrelated.clone()?;
            self.subscriber = Some(core.register_subscriber(n, Some(self.subscriptions.clone())));
        }
        self.subscriber
    }

    /// Handles the message in `buf[..len]` (`buf` must extend
    /// `protocol::PARSE_PADDING` bytes further; the message is unescaped in
    /// place). Appends at most one response line to `out`, or returns a
    /// future for a response that needs to wait. `related` receives
    /// messages tied to this request. The message is timed from `clock`,
    /// which is moved to when it was answered (a batch of messages costs one
    /// clock read each).
    pub fn handle_message(
        &mut self,
        core: &Rc<Core>,
        buf: &mut [u8],
        len: usize,
        out: &mut Vec<u8>,
        related: Option<&SharedNotifier>,
        clock: &mut Instant,
    ) -> Option<Pending> {
        let started = *clock;
        let handled = {
            let mut parser = core.parser.borrow_mut();
            parser.parse(buf, len, |parsed| match parsed {
                Err(e) => {
                    let msg = format!("Parse error: {e}");
                    let code = encode::error(out, &Id::Null, jsonrpc::PARSE_ERROR, &msg);
                    Handled::err(MethodKind::Invalid, code)
                }
                Ok(root) => match jsonrpc::classify(root) {
                    Err(inv) => {
                        let code = encode::error(out, &inv.id, inv.code, inv.message);
                        Handled::err(MethodKind::Invalid, code)
                    }
                    Ok(msg) => self.handle_supervised(core, msg, out, started, related),
                },
            })
        };
        if handled.pending.is_none() {
            let ended = Instant::now();
            record(core, handled.kind, ended - started, handled.error);
            *clock = ended;
        }
        handled.pending
    }

    /// [`Session::handle_parsed`] under the request supervisor: a panic in
    /// dispatch (outside any handler's own catch) costs this request only;
    /// the partial answer is discarded and replaced by -32603. Nothing the
    /// session holds is moved out while a request runs, so nothing is lost.
    fn handle_supervised(
        &mut self,
        core: &Rc<Core>,
        msg: Message<'_>,
        out: &mut Vec<u8>,
        started: Instant,
        related: Option<&SharedNotifier>,
    ) -> Handled {
        let id = match &msg {
            Message::Request { id, .. } => Some(*id),
            _ => None,
        };
        let mark = out.len();
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.handle_parsed(core, msg, out, started, related)
        })) {
            Ok(h) => h,
            Err(_) => {
                out.truncate(mark);
                core.metrics.borrow_mut().counters.handler_panics += 1;
                log::debug!("shard {}: dispatch panicked; answered -32603", core.id);
                match id {
                    Some(id) => Handled::err(MethodKind::Invalid, encode::handler_failed(out, &id)),
                    None => Handled::ok(MethodKind::Notification),
                }
            }
        }
    }

    /// Handles an already classified message (transports that must inspect
    /// the message first, such as HTTP, parse and classify it themselves).
    pub fn handle_parsed(
        &mut self,
        core: &Rc<Core>,
        msg: Message<'_>,
        out: &mut Vec<u8>,
        started: Instant,
        related: Option<&SharedNotifier>,
    ) -> Handled {
        match msg {
            Message::Request { id, method, params } => {
                let req = Req::new(id, method, params, started, related);
                dispatch::request(self, core, req, out)
            }
            Message::Notification { method, params } => {
                match Notification::parse(method) {
                    Some(Notification::Initialized) => self.set_initialized(),
                    Some(Notification::Cancelled) => {
                        if let Some(rid) = params.as_ref().and_then(|p| p.get("requestId")) {
                            if rid.is_str() || rid.is_number() {
                                let id = Id::Parsed(rid).to_owned_bytes();
                                if self.inflight.cancel(&id) {
                                    core.metrics.borrow_mut().counters.requests_cancelled += 1;
                                }
                            }
                        }
                    }
                    // Unknown notifications are ignored, as JSON-RPC requires.
                    None => {}
                }
                Handled::ok(MethodKind::Notification)
            }
            Message::Response { id, result, error } => {
                if let Some(n) = match id {
                    Id::Parsed(v) => v.as_u64(),
                    _ => None,
                } {
                    let answer = match (result, error) {
                        (Some(r), _) => Ok(json::encode_value(r)),
                        (None, Some(e)) => Err(client_error(e)),
                        (None, None) => unreachable!("classify rejects a response without either"),
                    };
                    if !self.outbound.complete(n, answer) {
                        log::debug!("shard {}: response to unknown server request {n}", core.id);
                    }
                }
                Handled::ok(MethodKind::Notification)
            }
        }
    }
}

fn client_error(e: simd_json::tape::Value<'_, '_>) -> RpcError {
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

/// Records a handled message in the shard's metrics (async handlers record
/// themselves when they finish).
pub(crate) fn account(core: &Core, handled: &Handled, started: Instant) {
    if handled.pending.is_none() {
        record(core, handled.kind, started.elapsed(), handled.error);
    }
}

/// Records one answered message.
pub(crate) fn record(core: &Core, kind: MethodKind, took: std::time::Duration, error: Option<i32>) {
    let mut m = core.metrics.borrow_mut();
    m.record(kind, took);
    if error.is_some() {
        m.record_error(kind);
    }
}

/// Records an answer produced later.
pub(crate) fn record_answer(core: &Core, kind: MethodKind, started: Instant, answer: &Answer) {
    record(core, kind, started.elapsed(), answer.error);
}
