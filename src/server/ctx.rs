//! What a handler may do besides computing its answer: report progress, log,
//! check cancellation, and ask the client (sampling, elicitation, roots).
//!
//! Asking the client works in both eras with the same handler code. In the
//! legacy era it is a real server-to-client JSON-RPC request on the session
//! (its response correlated by id, bounded in number and time). In the modern
//! era the server keeps no state between requests, so the handler runs again
//! on each round: `ask` returns the client's answer when the retried request
//! carries it in `inputResponses`, and otherwise records the input request
//! and fails with [`CtxError::InputRequired`], which the dispatcher turns into
//! an `InputRequiredResult` (SEP-2322) with signed `requestState`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use serde::Serialize;

use super::content::LogLevel;
use super::core::Core;
use super::encode::Era;
use super::tools::{Progress, RpcError};
use super::SharedNotifier;
use crate::protocol::{json, jsonrpc};
use crate::runtime::local::{oneshot, OneshotSender};

/// Client capabilities that change what the server may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps {
    pub sampling: bool,
    pub elicitation: bool,
    pub roots: bool,
    /// The `io.modelcontextprotocol/tasks` extension (modern era).
    pub tasks_extension: bool,
}

impl ClientCaps {
    pub fn parse(v: Option<TapeValue<'_, '_>>) -> Self {
        let Some(v) = v.filter(|v| v.is_object()) else {
            return Self::default();
        };
        let has = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
        ClientCaps {
            sampling: has("sampling"),
            elicitation: has("elicitation"),
            roots: has("roots"),
            tasks_extension: v
                .get("extensions")
                .and_then(|e| e.get("io.modelcontextprotocol/tasks"))
                .is_some(),
        }
    }
}

/// The three kinds of input a server may ask a client for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Elicit,
    Sample,
    Roots,
}

impl Ask {
    pub fn method(self) -> &'static str {
        match self {
            Ask::Elicit => "elicitation/create",
            Ask::Sample => "sampling/createMessage",
            Ask::Roots => "roots/list",
        }
    }

    /// The client capability it needs.
    pub fn capability(self) -> &'static str {
        match self {
            Ask::Elicit => "elicitation",
            Ask::Sample => "sampling",
            Ask::Roots => "roots",
        }
    }

    fn allowed(self, caps: &ClientCaps) -> bool {
        match self {
            Ask::Elicit => caps.elicitation,
            Ask::Sample => caps.sampling,
            Ask::Roots => caps.roots,
        }
    }
}

/// Why asking the client gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CtxError {
    /// Modern era: the answer is not in this round's `inputResponses`; the
    /// dispatcher answers with an `InputRequiredResult`.
    #[error("the client's input is required")]
    InputRequired,
    /// The client did not declare the capability (-32021 in the modern era).
    #[error("missing required client capability: {0}")]
    MissingCapability(&'static str),
    /// The client answered with an error, timed out, or the session closed.
    #[error(transparent)]
    Rpc(RpcError),
}

impl From<CtxError> for RpcError {
    fn from(e: CtxError) -> Self {
        match e {
            CtxError::InputRequired => RpcError::new(jsonrpc::INTERNAL_ERROR, "input required"),
            CtxError::MissingCapability(cap) => missing_capability(cap),
            CtxError::Rpc(r) => r,
        }
    }
}

/// `value` as compact JSON text, or the error a handler sees when it cannot
/// be (a map with non-string keys, a failing `Serialize` impl).
fn to_json(value: impl Serialize, what: &str) -> Result<String, CtxError> {
    serde_json::to_string(&value).map_err(|e| {
        CtxError::Rpc(RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            format!("{what} could not be encoded as JSON: {e}"),
        ))
    })
}

/// An answer the server holds as JSON text (it encoded it itself).
fn from_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("answers are kept as valid JSON")
}

/// -32021 with `data.requiredCapabilities` shaped like ClientCapabilities.
pub(crate) fn missing_capability(cap: &str) -> RpcError {
    RpcError::new(
        crate::protocol::mcp::code::MISSING_REQUIRED_CLIENT_CAPABILITY,
        format!("Missing required client capability: {cap}"),
    )
    .with_data(format!("{{\"requiredCapabilities\":{{\"{cap}\":{{}}}}}}"))
}

/// Server-to-client requests of one legacy session: ids, pending answers,
/// bounds. Shared by the session and its handlers.
pub struct Outbound {
    pending: RefCell<HashMap<u64, OneshotSender<Result<String, RpcError>>>>,
    next_id: Cell<u64>,
    max_pending: usize,
    timeout: Duration,
}

impl Outbound {
    pub fn new(max_pending: usize, timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            max_pending,
            timeout,
        })
    }

    /// Sends `method` to the client on `sink` and waits for its answer.
    pub async fn request(
        &self,
        sink: &SharedNotifier,
        method: &str,
        params_json: &str,
    ) -> Result<String, RpcError> {
        if self.pending.borrow().len() >= self.max_pending {
            return Err(RpcError::new(
                jsonrpc::SERVER_OVERLOADED,
                "too many requests to the client are pending (max-client-requests)",
            ));
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot();
        self.pending.borrow_mut().insert(id, tx);
        let mut msg = Vec::with_capacity(64 + params_json.len());
        msg.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        json::write_u64(&mut msg, id);
        msg.extend_from_slice(b",\"method\":");
        json::write_str(&mut msg, method);
        msg.extend_from_slice(b",\"params\":");
        msg.extend_from_slice(params_json.as_bytes());
        msg.push(b'}');
        sink.notify(&msg);
        let timeout = self.timeout;
        let answer = futures_lite::future::or(rx, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        self.pending.borrow_mut().remove(&id);
        match answer {
            Some(r) => r,
            None => Err(RpcError::new(
                jsonrpc::SHARD_TIMEOUT,
                format!(
                    "the client did not answer {method} within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Delivers the client's answer to request `id`; false if none waits.
    pub fn complete(&self, id: u64, answer: Result<String, RpcError>) -> bool {
        let tx = self.pending.borrow_mut().remove(&id);
        match tx {
            Some(tx) => {
                tx.send(answer);
                true
            }
            None => false,
        }
    }

    /// Fails every pending request (the session is closing).
    pub fn close(&self) {
        self.pending.borrow_mut().clear();
    }
}

/// Modern-era round state: the answers this round carries, the state it
/// echoed, and what the handler still needs.
pub struct Rounds {
    responses: HashMap<String, String>,
    state: Option<String>,
    requested: RefCell<Vec<(String, String)>>,
    next_state: RefCell<Option<String>>,
}

impl Rounds {
    pub fn new(responses: HashMap<String, String>, state: Option<String>) -> Self {
        Self {
            responses,
            state,
            requested: RefCell::new(Vec::new()),
            next_state: RefCell::new(None),
        }
    }

    pub fn has_requests(&self) -> bool {
        !self.requested.borrow().is_empty()
    }

    /// `inputRequests` as a JSON object.
    pub fn input_requests_json(&self) -> String {
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        for (i, (k, req)) in self.requested.borrow().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::write_str(&mut out, k);
            out.push(b':');
            out.extend_from_slice(req.as_bytes());
        }
        out.push(b'}');
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    pub fn next_state(&self) -> Option<String> {
        self.next_state.borrow().clone()
    }

    /// The input requests the handler recorded, by key.
    pub fn requested(&self) -> Vec<(String, String)> {
        self.requested.borrow().clone()
    }
}

/// Where a request's log messages go, and from which level on.
#[derive(Clone)]
pub struct LogSink {
    pub min: LogLevel,
    pub sink: SharedNotifier,
}

struct Inner {
    core: Rc<Core>,
    era: Era,
    caps: ClientCaps,
    progress: Option<Progress>,
    log: Option<LogSink>,
    /// Where server-to-client requests go (legacy).
    related: Option<SharedNotifier>,
    outbound: Option<Rc<Outbound>>,
    rounds: Option<Rounds>,
    cancelled: Rc<Cell<bool>>,
}

/// A handler's context. Cheap to clone.
#[derive(Clone)]
pub struct Ctx(Rc<Inner>);

impl Ctx {
    pub fn era(&self) -> Era {
        self.0.era
    }

    pub(crate) fn core(&self) -> &Rc<Core> {
        &self.0.core
    }

    pub fn client_caps(&self) -> ClientCaps {
        self.0.caps
    }

    /// Sends `notifications/progress` when the client asked for progress.
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        if let Some(p) = &self.0.progress {
            p.report(progress, total, message);
        }
    }

    pub fn wants_progress(&self) -> bool {
        self.0.progress.is_some()
    }

    /// Sends `notifications/message` if `level` passes the client's level
    /// (legacy: `logging/setLevel`; modern: the request's `_meta` logLevel;
    /// none set: nothing is sent). `data` is any serializable value (a
    /// string is sent as a JSON string).
    pub fn log(&self, level: LogLevel, logger: Option<&str>, data: impl Serialize) {
        let Some(l) = &self.0.log else { return };
        if level < l.min {
            return;
        }
        let data_json = match to_json(data, "the log message") {
            Ok(j) => j,
            Err(e) => {
                log::warn!("a handler's log message was not sent: {e}");
                return;
            }
        };
        let mut m = Vec::with_capacity(96 + data_json.len());
        m.extend_from_slice(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"",
        );
        m.extend_from_slice(level.name().as_bytes());
        m.push(b'"');
        if let Some(lg) = logger {
            m.extend_from_slice(b",\"logger\":");
            json::write_str(&mut m, lg);
        }
        m.extend_from_slice(b",\"data\":");
        m.extend_from_slice(data_json.as_bytes());
        m.extend_from_slice(b"}}");
        l.sink.notify(&m);
    }

    /// Tells the client that the out-of-band (URL mode) elicitation
    /// `elicitation_id` finished: `notifications/elicitation/complete` on the
    /// request's channel.
    pub fn elicitation_complete(&self, elicitation_id: &str) {
        let Some(r) = &self.0.related else { return };
        let mut m = Vec::with_capacity(96 + elicitation_id.len());
        m.extend_from_slice(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/elicitation/complete\",\"params\":{\"elicitationId\":",
        );
        json::write_str(&mut m, elicitation_id);
        m.extend_from_slice(b"}}");
        r.notify(&m);
    }

    /// Closes the connection carrying this request's stream; the request
    /// goes on and its events wait for the client to resume (Streamable
    /// HTTP legacy sessions; elsewhere nothing happens).
    pub fn close_stream(&self) {
        if let Some(r) = &self.0.related {
            r.close_stream();
        }
    }

    /// True once the client cancelled this request. A cancelled handler is
    /// also dropped at its next suspension point; this lets long synchronous
    /// stretches stop early.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.get()
    }

    /// Asks the client (elicitation, sampling, roots) and returns its
    /// answer. `key` names this input request across rounds (modern era);
    /// `params` is the request's params object.
    pub async fn ask(
        &self,
        kind: Ask,
        key: &str,
        params: impl Serialize,
    ) -> Result<serde_json::Value, CtxError> {
        let params = to_json(params, "the request's params")?;
        self.ask_json(kind, key, &params)
            .await
            .map(|a| from_json(&a))
    }

    /// [`Ctx::ask`] with params and answer as JSON text.
    pub(crate) async fn ask_json(
        &self,
        kind: Ask,
        key: &str,
        params_json: &str,
    ) -> Result<String, CtxError> {
        if !kind.allowed(&self.0.caps) {
            return Err(CtxError::MissingCapability(kind.capability()));
        }
        if let Some(r) = &self.0.rounds {
            if let Some(answer) = r.responses.get(key) {
                return Ok(answer.clone());
            }
            self.record(kind, key, params_json);
            return Err(CtxError::InputRequired);
        }
        let (Some(out), Some(sink)) = (&self.0.outbound, &self.0.related) else {
            return Err(CtxError::Rpc(RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                "this transport cannot carry requests to the client",
            )));
        };
        let r = out.request(sink, kind.method(), params_json).await;
        if r.is_err() {
            self.0
                .core
                .metrics
                .borrow_mut()
                .counters
                .client_requests_failed += 1;
        }
        r.map_err(CtxError::Rpc)
    }

    /// Modern era: the answer to `key` if this round carries it; otherwise
    /// records the input request and returns `None` (collect several, then
    /// return [`CtxError::InputRequired`]). In the legacy era, use
    /// [`Ctx::ask`]. Params that cannot be encoded record nothing.
    pub fn input(&self, kind: Ask, key: &str, params: impl Serialize) -> Option<serde_json::Value> {
        let r = self.0.rounds.as_ref()?;
        if let Some(a) = r.responses.get(key) {
            return Some(from_json(a));
        }
        match to_json(params, "the request's params") {
            Ok(p) if kind.allowed(&self.0.caps) => self.record(kind, key, &p),
            Ok(_) => {}
            Err(e) => log::warn!("input request {key:?} not recorded: {e}"),
        }
        None
    }

    fn record(&self, kind: Ask, key: &str, params_json: &str) {
        let Some(r) = &self.0.rounds else { return };
        let mut req = Vec::with_capacity(32 + params_json.len());
        req.extend_from_slice(b"{\"method\":");
        json::write_str(&mut req, kind.method());
        req.extend_from_slice(b",\"params\":");
        req.extend_from_slice(params_json.as_bytes());
        req.push(b'}');
        let mut list = r.requested.borrow_mut();
        if !list.iter().any(|(k, _)| k == key) {
            list.push((
                key.to_owned(),
                String::from_utf8(req).expect("JSON is UTF-8"),
            ));
        }
    }

    /// Modern era: the (verified) state echoed by this round, if any.
    pub fn request_state(&self) -> Option<&str> {
        self.0.rounds.as_ref()?.state.as_deref()
    }

    /// Modern era: state to hand out with the next `InputRequiredResult`.
    pub fn set_request_state(&self, state: impl Into<String>) {
        if let Some(r) = &self.0.rounds {
            *r.next_state.borrow_mut() = Some(state.into());
        }
    }

    pub(crate) fn rounds(&self) -> Option<&Rounds> {
        self.0.rounds.as_ref()
    }
}

/// The borrowed pieces a dispatcher has at hand; turned into a [`Ctx`] only
/// when a handler asks for one, so handlers that need none cost nothing.
pub struct CallCtx<'s> {
    pub(crate) core: &'s Rc<Core>,
    pub era: Era,
    pub caps: ClientCaps,
    pub progress: Option<Progress>,
    pub log: Option<LogSink>,
    pub related: Option<SharedNotifier>,
    pub outbound: Option<Rc<Outbound>>,
    /// Modern era: `inputResponses` and the verified `requestState`.
    pub rounds: RefCell<Option<Rounds>>,
    /// Made on first use: most calls finish synchronously and never need a
    /// flag someone else could set (saves an allocation per request).
    cancelled: OnceCell<Rc<Cell<bool>>>,
    /// The legacy session the call belongs to (its tasks are listed to it
    /// alone); 0 in the modern era.
    pub session_scope: u64,
    /// The key the legacy session is stored under, if it is stored.
    pub session_key: Option<Rc<str>>,
    made: OnceCell<Ctx>,
}

impl<'s> CallCtx<'s> {
    /// The flag that `notifications/cancelled` sets for this call.
    pub fn cancelled(&self) -> Rc<Cell<bool>> {
        self.cancelled
            .get_or_init(|| Rc::new(Cell::new(false)))
            .clone()
    }

    pub(crate) fn new(core: &'s Rc<Core>, era: Era) -> Self {
        Self {
            core,
            era,
            caps: ClientCaps::default(),
            progress: None,
            log: None,
            related: None,
            outbound: None,
            rounds: RefCell::new(None),
            cancelled: OnceCell::new(),
            session_scope: 0,
            session_key: None,
            made: OnceCell::new(),
        }
    }

    /// The handler's context (built on first use).
    pub fn ctx(&self) -> Ctx {
        self.made
            .get_or_init(|| {
                Ctx(Rc::new(Inner {
                    core: self.core.clone(),
                    era: self.era,
                    caps: self.caps,
                    progress: self.progress.clone(),
                    log: self.log.clone(),
                    related: self.related.clone(),
                    outbound: self.outbound.clone(),
                    rounds: self.rounds.borrow_mut().take(),
                    cancelled: self.cancelled(),
                }))
            })
            .clone()
    }

    /// The context if a handler made one.
    pub fn made(&self) -> Option<Ctx> {
        self.made.get().cloned()
    }
}
