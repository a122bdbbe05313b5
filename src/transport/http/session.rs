//! Legacy (2025-11-25 and older) Streamable HTTP sessions, owned by shards.
//!
//! `initialize` creates a session on the shard that received it. Its id is
//! four hex digits naming that shard followed by 128 bits from the kernel's
//! CSPRNG (`getrandom`), so any shard can route a request to the owner with
//! no shared table. The owner keeps, per session: the MCP session state,
//! the live SSE streams (the standalone GET stream is stream 0; each POST
//! that answers with SSE opens stream 1, 2, ...), and a bounded replay store
//! of recent events (count and age limits) for `Last-Event-ID` resumption.
//!
//! Event ids are `{stream}-{seq}`: unique within the session and naming the
//! stream, so a resume replays only that stream. A POST stream survives its
//! connection: if the client disconnects (or the server closes the
//! connection after `sse_max_connection_ms`, or the client reads too
//! slowly), the handler keeps running, its events keep landing in the store,
//! and `GET` with `Last-Event-ID` picks the stream up where it broke.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::body::{sse_event, trim_newline, McpBody, McpResponse, SseSource};
use super::forward::{Accepts, HttpCall, HttpMethod};
use crate::config::HttpConfig;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::PARSE_PADDING;
use crate::runtime::local::Pipe;
use crate::runtime::shard::Shard;
use crate::runtime::store::{event_key, parse_event_key, Loaded, Op};
use crate::server::ratelimit::Principal;
use crate::server::{account, Notifier, Pending, Session, SharedNotifier};

/// Hex digits of the shard prefix of a session id.
const SHARD_DIGITS: usize = 4;
/// Random bytes after the prefix.
const RANDOM_BYTES: usize = 16;

/// A fresh session id owned by `shard`.
pub fn new_id(shard: usize) -> String {
    let mut r = [0u8; RANDOM_BYTES];
    let mut filled = 0;
    while filled < r.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(r[filled..].as_mut_ptr().cast(), r.len() - filled, 0) };
        assert!(
            n > 0,
            "getrandom failed: {}",
            std::io::Error::last_os_error()
        );
        filled += n as usize;
    }
    let mut id = format!("{shard:0SHARD_DIGITS$x}");
    for b in r {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The shard a session id names, if it is well-formed.
pub fn owner_of(id: &str, shard_count: usize) -> Option<usize> {
    if id.len() != SHARD_DIGITS + 2 * RANDOM_BYTES || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shard = usize::from_str_radix(&id[..SHARD_DIGITS], 16).ok()?;
    (shard < shard_count).then_some(shard)
}

struct Stored {
    stream: u64,
    seq: u64,
    at: Instant,
    frame: Bytes,
}

/// A stream that has not finished.
struct Live {
    /// The connection currently reading it, if any.
    sink: Option<Rc<Pipe<Bytes>>>,
    next_seq: u64,
}

struct Streams {
    store: VecDeque<Stored>,
    live: HashMap<u64, Live>,
    next_stream: u64,
}

pub struct HttpSession {
    pub id: String,
    mcp: RefCell<Session>,
    last_active: Cell<Instant>,
    inflight: Cell<usize>,
    streams: RefCell<Streams>,
    ended: Cell<bool>,
    store_max_events: usize,
    store_max_age: Duration,
    queue_events: usize,
    retry_ms: u64,
    shard: Weak<Shard>,
    /// Who created the session (`--auth`); only they may use it.
    principal: RefCell<Option<crate::server::auth::Identity>>,
}

/// Sends a session's server-to-client messages to one of its streams.
struct StreamNotifier {
    session: Weak<HttpSession>,
    stream: u64,
}

impl Notifier for StreamNotifier {
    fn notify(&self, message: &[u8]) {
        if let Some(s) = self.session.upgrade() {
            s.emit(self.stream, message, false);
        }
    }

    fn close_stream(&self) {
        if let Some(s) = self.session.upgrade() {
            s.cut_stream(self.stream);
        }
    }
}

impl HttpSession {
    fn new(shard: &Rc<Shard>, cfg: &HttpConfig) -> Rc<Self> {
        Self::with_id(shard, cfg, new_id(shard.id))
    }

    fn with_id(shard: &Rc<Shard>, cfg: &HttpConfig, id: String) -> Rc<Self> {
        Rc::new_cyclic(|me: &Weak<HttpSession>| {
            let standalone: SharedNotifier = Rc::new(StreamNotifier {
                session: me.clone(),
                stream: 0,
            });
            let mut mcp = Session::new(shard, Some(standalone));
            mcp.set_label(&id);
            HttpSession {
                id,
                mcp: RefCell::new(mcp),
                last_active: Cell::new(Instant::now()),
                inflight: Cell::new(0),
                streams: RefCell::new(Streams {
                    store: VecDeque::new(),
                    live: HashMap::new(),
                    next_stream: 1,
                }),
                ended: Cell::new(false),
                store_max_events: cfg.sse_store_max_events,
                store_max_age: Duration::from_millis(cfg.sse_store_max_age_ms),
                queue_events: cfg.sse_queue_events,
                retry_ms: cfg.sse_retry_ms,
                shard: Rc::downgrade(shard),
                principal: RefCell::new(None),
            }
        })
    }

    fn touch(&self) {
        self.last_active.set(Instant::now());
    }

    /// Queues a change to this session's stored copy (`--data-dir`).
    fn persist(&self, op: Op) {
        if let Some(shard) = self.shard.upgrade() {
            persist_op(&shard, op);
        }
    }

    /// What the store keeps of this session (besides its events).
    fn record(&self) -> Option<Vec<u8>> {
        let mcp = self.mcp.borrow();
        let r = mcp.resume_state()?;
        let caps = r.caps();
        let who = self.principal.borrow();
        let st = self.streams.borrow();
        let rec = SessionRecord {
            version: r.version().to_owned(),
            sampling: caps.sampling,
            elicitation: caps.elicitation,
            roots: caps.roots,
            tasks_extension: caps.tasks_extension,
            initialized: r.client_initialized(),
            log_level: r.log_level().map(|l| l.name().to_owned()),
            principal: who.as_ref().map(|w| w.principal.clone()),
            roles: who.as_ref().map(|w| w.roles.clone()).unwrap_or_default(),
            subscriptions: mcp.subscriptions(),
            next_stream: st.next_stream,
            standalone_next_seq: st.live.get(&0).map_or(1, |l| l.next_seq),
            scope: mcp.scope(),
        };
        serde_json::to_vec(&rec).ok()
    }

    /// True when nothing uses the session and it has been quiet for `ttl`.
    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        if self.inflight.get() > 0 || now.duration_since(self.last_active.get()) < ttl {
            return false;
        }
        let streams = self.streams.borrow();
        !streams.live.values().any(|l| {
            l.sink
                .as_ref()
                .is_some_and(|s| !s.consumer_gone() && !s.is_closed())
        })
    }

    /// Records an event on `stream` and hands it to the stream's reader.
    /// `last` marks the response that ends a POST stream.
    fn emit(&self, stream: u64, json: &[u8], last: bool) {
        if self.ended.get() {
            return;
        }
        let mut st = self.streams.borrow_mut();
        if stream == 0 {
            // The standalone stream exists from the first notification on,
            // whether or not a GET is reading it.
            st.live.entry(0).or_insert(Live {
                sink: None,
                next_seq: 1,
            });
        }
        let Some(live) = st.live.get_mut(&stream) else {
            return; // a POST stream that already finished
        };
        let seq = live.next_seq;
        live.next_seq += 1;
        let frame = sse_event(Some(&format!("{stream}-{seq}")), json);
        if let Some(sink) = &live.sink {
            let pushed = if last {
                sink.push_final(frame.clone())
            } else {
                sink.push(frame.clone())
            };
            match pushed {
                Ok(()) => {}
                Err(crate::runtime::local::PushError::Full) => {
                    // The reader fell behind: close its connection; it resumes
                    // from the store with Last-Event-ID.
                    sink.close();
                    live.sink = None;
                    if let Some(shard) = self.shard.upgrade() {
                        shard.metrics.borrow_mut().counters.sse_streams_cut += 1;
                    }
                }
                Err(crate::runtime::local::PushError::Closed) => live.sink = None,
            }
        }
        if last {
            st.live.remove(&stream);
        }
        self.persist(Op::PutEvent(
            event_key(&self.id, stream, seq),
            frame.clone(),
        ));
        st.store.push_back(Stored {
            stream,
            seq,
            at: Instant::now(),
            frame,
        });
        self.evict(&mut st);
    }

    fn evict(&self, st: &mut Streams) {
        let now = Instant::now();
        while let Some(front) = st.store.front() {
            if st.store.len() > self.store_max_events
                || now.duration_since(front.at) > self.store_max_age
            {
                self.persist(Op::DelEvent(event_key(&self.id, front.stream, front.seq)));
                st.store.pop_front();
            } else {
                break;
            }
        }
    }

    /// A new pipe for a reader, starting with the priming event (an id and
    /// empty data, so the client has a `Last-Event-ID` before anything else).
    fn new_sink(&self, priming_id: &str) -> Rc<Pipe<Bytes>> {
        let pipe = Pipe::new(self.queue_events);
        let priming = format!("id: {priming_id}\nretry: {}\ndata: \n\n", self.retry_ms);
        let _ = pipe.push(Bytes::from(priming));
        pipe
    }

    /// Opens a POST response stream. Its priming event is added by
    /// [`HttpSession::prime`] once the response is known to be a stream.
    fn open_stream(&self) -> (u64, Rc<Pipe<Bytes>>) {
        let mut st = self.streams.borrow_mut();
        let stream = st.next_stream;
        st.next_stream += 1;
        let sink = Pipe::new(self.queue_events);
        st.live.insert(
            stream,
            Live {
                sink: Some(sink.clone()),
                next_seq: 1,
            },
        );
        (stream, sink)
    }

    fn prime(&self, stream: u64, sink: &Pipe<Bytes>) {
        let priming = format!("id: {stream}-0\nretry: {}\ndata: \n\n", self.retry_ms);
        sink.push_front(Bytes::from(priming));
    }

    /// Forgets a POST stream that ended up answered with plain JSON.
    fn drop_stream(&self, stream: u64) {
        let mut st = self.streams.borrow_mut();
        st.live.remove(&stream);
        for e in st.store.iter().filter(|e| e.stream == stream) {
            self.persist(Op::DelEvent(event_key(&self.id, e.stream, e.seq)));
        }
        st.store.retain(|e| e.stream != stream);
    }

    /// Closes the connection reading `stream` (after telling it when to
    /// come back); the stream itself goes on and is resumable. SEP-1699.
    pub fn cut_stream(&self, stream: u64) {
        let mut st = self.streams.borrow_mut();
        if let Some(live) = st.live.get_mut(&stream) {
            if let Some(sink) = live.sink.take() {
                let _ = sink.push(Bytes::from(format!("retry: {}\n\n", self.retry_ms)));
                sink.close();
            }
        }
    }

    /// `GET` without `Last-Event-ID`: the standalone stream, from now on.
    fn open_standalone(&self) -> Rc<Pipe<Bytes>> {
        let mut st = self.streams.borrow_mut();
        let live = st.live.entry(0).or_insert(Live {
            sink: None,
            next_seq: 1,
        });
        let sink = self.new_sink(&format!("0-{}", live.next_seq - 1));
        if let Some(old) = live.sink.replace(sink.clone()) {
            // One reader per stream: the newest connection takes over.
            old.close();
        }
        sink
    }

    /// `GET` with `Last-Event-ID: {stream}-{seq}`: replays what followed on
    /// that stream, then keeps the reader attached if the stream goes on.
    fn resume(&self, stream: u64, after: u64) -> Rc<Pipe<Bytes>> {
        let mut st = self.streams.borrow_mut();
        self.evict(&mut st);
        let pipe = Pipe::new(self.queue_events);
        for e in st
            .store
            .iter()
            .filter(|e| e.stream == stream && e.seq > after)
        {
            // The store is bounded, so a replay may exceed the live queue.
            pipe.push_replay(e.frame.clone());
        }
        match st.live.get_mut(&stream) {
            Some(live) => {
                if let Some(old) = live.sink.replace(pipe.clone()) {
                    old.close();
                }
            }
            None if stream == 0 => {
                st.live.insert(
                    0,
                    Live {
                        sink: Some(pipe.clone()),
                        next_seq: after + 1,
                    },
                );
            }
            // Finished: the replay ends with its final response.
            None => pipe.close(),
        }
        pipe
    }

    /// A POST stream finished without a response (its request was
    /// cancelled).
    fn end_stream(&self, stream: u64) {
        if let Some(live) = self.streams.borrow_mut().live.remove(&stream) {
            if let Some(s) = live.sink {
                s.close();
            }
        }
    }

    fn end(&self, shard: &Rc<Shard>) {
        if self.ended.replace(true) {
            return;
        }
        persist_op(shard, Op::DelSession(self.id.clone()));
        if let Some(store) = shard.store.borrow_mut().as_mut() {
            store.dirty.remove(&self.id);
            store.written.remove(&self.id);
        }
        self.mcp.borrow_mut().close(shard);
        let mut st = self.streams.borrow_mut();
        for live in st.live.values_mut() {
            if let Some(s) = live.sink.take() {
                s.close();
            }
        }
        st.live.clear();
        st.store.clear();
    }
}

/// A request's JSON body, padded for the in-place parser.
fn padded(mut body: Vec<u8>) -> (Vec<u8>, usize) {
    let len = body.len();
    body.resize(len + PARSE_PADDING, b' ');
    (body, len)
}

/// Whether a POST answers with SSE: when the client accepts only SSE, or
/// accepts it and asked for progress (the only related messages tessera
/// sends before a response).
pub fn wants_sse(accepts: Accepts, msg: &Message<'_>) -> bool {
    if !accepts.sse {
        return false;
    }
    if !accepts.json {
        return true;
    }
    match msg {
        Message::Request {
            params: Some(p), ..
        } => p
            .get("_meta")
            .and_then(|m| m.get(crate::protocol::mcp::meta::PROGRESS_TOKEN))
            .is_some(),
        _ => false,
    }
}

enum PostOutcome {
    Accepted,
    Error(McpResponse),
    Answer {
        /// The request's stream, when the client accepts one.
        stream: Option<(u64, Rc<Pipe<Bytes>>)>,
        out: Vec<u8>,
        pending: Option<Pending>,
        is_error: bool,
    },
}

/// Serves one POSTed JSON-RPC message in `session`.
///
/// A request is answered with JSON unless something related to it (progress,
/// a log line, a question to the client) is sent before its result, or the
/// client accepts only SSE; then the answer is an SSE stream that carries
/// those messages and ends with the result. A stream outlives its
/// connection: the handler keeps running and its events stay resumable.
async fn post(
    shard: &Rc<Shard>,
    session: &Rc<HttpSession>,
    accepts: Accepts,
    body: Vec<u8>,
) -> (McpResponse, bool) {
    let (mut buf, len) = padded(body);
    let started = Instant::now();
    let outcome = {
        let mut parser = shard.parser.borrow_mut();
        parser.parse(&mut buf, len, |parsed| {
            let root = match parsed {
                Ok(r) => r,
                Err(e) => {
                    return PostOutcome::Error(McpResponse::rpc_error(
                        400,
                        &Id::Null,
                        jsonrpc::PARSE_ERROR,
                        &format!("Parse error: {e}"),
                    ))
                }
            };
            let msg = match jsonrpc::classify(root) {
                Ok(m) => m,
                Err(inv) => {
                    return PostOutcome::Error(McpResponse::rpc_error(
                        400,
                        &inv.id,
                        inv.code,
                        inv.message,
                    ))
                }
            };
            let is_request = matches!(msg, Message::Request { .. });
            if let Message::Request { method, .. } | Message::Notification { method, .. } = &msg {
                // Only these change what the store keeps of a session.
                if matches!(
                    *method,
                    "notifications/initialized"
                        | "logging/setLevel"
                        | "resources/subscribe"
                        | "resources/unsubscribe"
                ) {
                    mark_dirty(shard, &session.id);
                }
            }
            let mut out = Vec::with_capacity(256);
            let _log = session.mcp.borrow().log_scope();
            if !is_request {
                let h = session
                    .mcp
                    .borrow_mut()
                    .handle_parsed(shard, msg, &mut out, started, None);
                account(shard, &h, started);
                return PostOutcome::Accepted;
            }
            let stream = accepts.sse.then(|| session.open_stream());
            let related: Option<SharedNotifier> = stream.as_ref().map(|(id, _)| {
                Rc::new(StreamNotifier {
                    session: Rc::downgrade(session),
                    stream: *id,
                }) as SharedNotifier
            });
            let h = session.mcp.borrow_mut().handle_parsed(
                shard,
                msg,
                &mut out,
                started,
                related.as_ref(),
            );
            account(shard, &h, started);
            PostOutcome::Answer {
                stream,
                out,
                pending: h.pending,
                is_error: h.is_error,
            }
        })
    };
    let (stream, mut out, pending, is_error) = match outcome {
        PostOutcome::Accepted => return (McpResponse::empty(202), false),
        PostOutcome::Error(r) => return (r, true),
        PostOutcome::Answer {
            stream,
            out,
            pending,
            is_error,
        } => (stream, out, pending, is_error),
    };
    let sse_only = !accepts.json;
    let sse = |stream: u64, sink: Rc<Pipe<Bytes>>| {
        session.prime(stream, &sink);
        McpResponse {
            status: 200,
            headers: Vec::new(),
            body: McpBody::Sse {
                source: SseSource::Local(sink),
                task: None,
                resumable: true,
            },
        }
    };
    let Some(p) = pending else {
        trim_newline(&mut out);
        return match stream {
            Some((id, sink)) if sse_only || !sink.is_empty() => {
                session.emit(id, &out, true);
                (sse(id, sink), is_error)
            }
            Some((id, _)) => {
                session.drop_stream(id);
                (McpResponse::json(200, out), is_error)
            }
            None => (McpResponse::json(200, out), is_error),
        };
    };
    // The handler runs as its own task, so `notifications/cancelled` can
    // stop it and a disconnect does not.
    struct Running {
        session: Rc<HttpSession>,
        stream: Option<(u64, Rc<Pipe<Bytes>>)>,
        done: Option<Rc<crate::runtime::local::Pipe<Vec<u8>>>>,
    }
    impl Drop for Running {
        fn drop(&mut self) {
            self.session.inflight.set(self.session.inflight.get() - 1);
            // Ended without an answer (cancelled): end the stream too.
            if let Some((id, sink)) = &self.stream {
                self.session.end_stream(*id);
                sink.close();
            }
            if let Some(d) = &self.done {
                d.close();
            }
        }
    }
    let done = Pipe::new(1);
    session.inflight.set(session.inflight.get() + 1);
    let mut running = Running {
        session: session.clone(),
        stream: stream.clone(),
        done: Some(done.clone()),
    };
    let fut = p.fut;
    let task = glommio::spawn_local(async move {
        let mut out = fut.await;
        trim_newline(&mut out);
        if let Some((id, _)) = running.stream.take() {
            if !out.is_empty() {
                running.session.emit(id, &out, true);
            } else {
                running.session.end_stream(id);
            }
        }
        if let Some(d) = running.done.take() {
            let _ = d.push_final(out);
        }
    })
    .detach();
    if let Some(id) = &p.id {
        session.mcp.borrow().inflight().attach(id, task);
    }
    match stream {
        None => match done.next().await {
            Some(out) if !out.is_empty() => (McpResponse::json(200, out), is_error),
            _ => (McpResponse::empty(202), false),
        },
        Some((id, sink)) => {
            if !sse_only {
                sink.ready().await;
                if sink.is_closed() && sink.len() <= 1 {
                    if let Some(out) = done.next().await.filter(|o| !o.is_empty()) {
                        session.drop_stream(id);
                        return (McpResponse::json(200, out), is_error);
                    }
                }
            }
            (sse(id, sink), false)
        }
    }
}

/// `initialize` without a session: creates one on this shard when the
/// handshake succeeds.
pub async fn initialize(
    shard: &Rc<Shard>,
    accepts: Accepts,
    body: Vec<u8>,
    principal: Option<crate::server::auth::Identity>,
) -> McpResponse {
    let cfg = shard.http.clone().expect("HTTP configured");
    if shard.sessions.borrow().len() >= cfg.max_sessions_per_shard {
        shard.metrics.borrow_mut().counters.sessions_rejected += 1;
        let msg = format!(
            "too many sessions on this shard ({} max, max-sessions-per-shard); retry later",
            cfg.max_sessions_per_shard
        );
        return McpResponse::rpc_error(503, &Id::Null, jsonrpc::SERVER_OVERLOADED, &msg)
            .with_header("retry-after", "1");
    }
    let session = HttpSession::new(shard, &cfg);
    if let (Some(auth), Some(who)) = (&cfg.auth, &principal) {
        session.mcp.borrow_mut().set_identity(auth, who);
    }
    *session.principal.borrow_mut() = principal;
    let (resp, failed) = post(shard, &session, accepts, body).await;
    if failed || session.mcp.borrow().negotiated_version().is_none() {
        session.end(shard);
        return resp;
    }
    shard.metrics.borrow_mut().counters.sessions_created += 1;
    shard
        .sessions
        .borrow_mut()
        .insert(session.id.clone(), session.clone());
    mark_dirty(shard, &session.id);
    resp.with_header("mcp-session-id", session.id.clone())
}

/// On the owning shard: serves a request for an existing session.
pub async fn serve_call(shard: &Rc<Shard>, call: HttpCall) -> McpResponse {
    let session = shard.sessions.borrow().get(&call.session_id).cloned();
    let Some(session) = session.filter(|s| !s.ended.get()) else {
        return McpResponse::rpc_error(
            404,
            &Id::Null,
            jsonrpc::INVALID_REQUEST,
            "Session not found: it ended or expired; start a new one with initialize",
        );
    };
    let owner = session
        .principal
        .borrow()
        .as_ref()
        .map(|i| i.principal.clone());
    if owner.as_ref() != call.principal.as_ref().map(|i| &i.principal) {
        // Indistinguishable from an unknown session: a token must not learn
        // which session ids exist.
        shard.metrics.borrow_mut().counters.auth_session_mismatch += 1;
        return McpResponse::rpc_error(
            404,
            &Id::Null,
            jsonrpc::INVALID_REQUEST,
            "Session not found: it ended or expired; start a new one with initialize",
        );
    }
    session.touch();
    if call.method == HttpMethod::Post {
        let who = Principal::Session(session.id.clone());
        if let Err(wait) = shard.rate_check(&who, std::time::Instant::now()) {
            return McpResponse::rate_limited(wait);
        }
    }
    match call.method {
        HttpMethod::Post => post(shard, &session, call.accepts, call.body).await.0,
        HttpMethod::Delete => {
            shard.sessions.borrow_mut().remove(&session.id);
            shard
                .rate
                .borrow_mut()
                .forget(&Principal::Session(session.id.clone()));
            session.end(shard);
            McpResponse::empty(200)
        }
        HttpMethod::Get => {
            if !call.accepts.sse {
                return McpResponse::rpc_error(
                    406,
                    &Id::Null,
                    jsonrpc::INVALID_REQUEST,
                    "Not Acceptable: GET opens an SSE stream; send Accept: text/event-stream",
                );
            }
            let pipe = match call.last_event_id.as_deref() {
                None => session.open_standalone(),
                Some(last) => match parse_event_id(last) {
                    Some((stream, seq)) => session.resume(stream, seq),
                    None => {
                        return McpResponse::rpc_error(
                            400,
                            &Id::Null,
                            jsonrpc::INVALID_REQUEST,
                            "Last-Event-ID is not an event id of this server",
                        )
                    }
                },
            };
            McpResponse {
                status: 200,
                headers: Vec::new(),
                body: McpBody::Sse {
                    source: SseSource::Local(pipe),
                    task: None,
                    resumable: true,
                },
            }
        }
    }
}

fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Removes sessions idle for `session_idle_ttl_ms` (no request, no open
/// stream); their ids answer 404 from then on.
pub async fn sweep_loop(shard: Rc<Shard>) {
    let Some(cfg) = shard.http.clone() else {
        return;
    };
    let ttl = Duration::from_millis(cfg.session_idle_ttl_ms);
    let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    while !shard.shutdown.is_raised() {
        futures_lite::future::or(glommio::timer::sleep(every), shard.shutdown.wait()).await;
        let now = Instant::now();
        let expired: Vec<Rc<HttpSession>> = shard
            .sessions
            .borrow()
            .values()
            .filter(|s| s.expired(now, ttl))
            .cloned()
            .collect();
        for s in expired {
            shard.sessions.borrow_mut().remove(&s.id);
            s.end(&shard);
            shard.metrics.borrow_mut().counters.sessions_expired += 1;
        }
    }
}

/// How far a restored session's stream ids jump past the stored counter
/// (streams opened after the record was last written are not in it).
const STREAM_ID_SKIP: u64 = 1 << 20;

/// What the store keeps of a legacy session (`--data-dir`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionRecord {
    version: String,
    sampling: bool,
    elicitation: bool,
    roots: bool,
    tasks_extension: bool,
    initialized: bool,
    log_level: Option<String>,
    principal: Option<String>,
    roles: Vec<String>,
    subscriptions: Vec<String>,
    next_stream: u64,
    standalone_next_seq: u64,
    scope: u64,
}

fn persist_op(shard: &Shard, op: Op) {
    let mut store = shard.store.borrow_mut();
    if let Some(s) = store.as_mut() {
        if !s.push(op) {
            shard.metrics.borrow_mut().counters.store_dropped += 1;
        }
    }
}

fn mark_dirty(shard: &Shard, id: &str) {
    if let Some(s) = shard.store.borrow_mut().as_mut() {
        s.dirty.insert(id.to_owned());
    }
}

/// Writes the records of sessions that may have changed (only those whose
/// record differs from what was last written), then hands everything
/// queued to the shard's writer.
pub fn flush_store(shard: &Shard) {
    let dirty = match shard.store.borrow_mut().as_mut() {
        Some(s) => std::mem::take(&mut s.dirty),
        None => return,
    };
    for id in dirty {
        let session = shard.sessions.borrow().get(&id).cloned();
        let Some(rec) = session.filter(|s| !s.ended.get()).and_then(|s| s.record()) else {
            continue;
        };
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rec.hash(&mut h);
            h.finish()
        };
        let changed = shard
            .store
            .borrow()
            .as_ref()
            .is_some_and(|s| s.written.get(&id) != Some(&hash));
        if changed {
            persist_op(shard, Op::PutSession(id.clone(), rec));
            if let Some(s) = shard.store.borrow_mut().as_mut() {
                s.written.insert(id, hash);
            }
        }
    }
    if let Some(s) = shard.store.borrow_mut().as_mut() {
        s.flush();
    }
}

/// Brings back the sessions (and their SSE events) a shard's file held.
/// Returns how many sessions were restored.
pub fn restore(shard: &Rc<Shard>, loaded: Loaded) -> usize {
    let Some(cfg) = shard.http.clone() else {
        return 0;
    };
    let mut events: HashMap<String, Vec<(u64, u64, Vec<u8>)>> = HashMap::new();
    for (k, v) in loaded.events {
        if let Some((id, stream, seq)) = parse_event_key(&k) {
            events
                .entry(id.to_owned())
                .or_default()
                .push((stream, seq, v));
        }
    }
    let mut restored = 0;
    for (id, bytes) in loaded.sessions {
        let rec: SessionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("stored session {id} is unreadable ({e}); dropped");
                persist_op(shard, Op::DelSession(id));
                continue;
            }
        };
        if owner_of(&id, shard.shard_count) != Some(shard.id) {
            log::warn!("stored session {id} belongs to another shard count; dropped");
            persist_op(shard, Op::DelSession(id));
            continue;
        }
        let session = HttpSession::with_id(shard, &cfg, id.clone());
        {
            let mut mcp = session.mcp.borrow_mut();
            let caps = crate::server::ctx::ClientCaps {
                sampling: rec.sampling,
                elicitation: rec.elicitation,
                roots: rec.roots,
                tasks_extension: rec.tasks_extension,
            };
            mcp.resume(
                shard,
                crate::server::Resume::restored(
                    crate::protocol::mcp::negotiate(&rec.version),
                    caps,
                    rec.initialized,
                    rec.log_level
                        .as_deref()
                        .and_then(crate::server::content::LogLevel::parse),
                ),
            );
            if let Some(p) = &rec.principal {
                let who = crate::server::auth::Identity {
                    principal: p.clone(),
                    roles: rec.roles.clone(),
                };
                if let Some(auth) = &cfg.auth {
                    mcp.set_identity(auth, &who);
                }
                *session.principal.borrow_mut() = Some(who);
            }
            mcp.set_scope(rec.scope);
            mcp.restore_subscriptions(shard, rec.subscriptions);
        }
        {
            let mut st = session.streams.borrow_mut();
            let now = Instant::now();
            let mut next_stream = rec.next_stream.max(1);
            let mut standalone_next = rec.standalone_next_seq.max(1);
            for (stream, seq, frame) in events.remove(&id).unwrap_or_default() {
                next_stream = next_stream.max(stream + 1);
                if stream == 0 {
                    standalone_next = standalone_next.max(seq + 1);
                }
                st.store.push_back(Stored {
                    stream,
                    seq,
                    at: now,
                    frame: Bytes::from(frame),
                });
            }
            // Stream ids are not stored on every POST: skip past any the
            // stored counter may have missed, so no id is reused.
            st.next_stream = next_stream + STREAM_ID_SKIP;
            st.live.insert(
                0,
                Live {
                    sink: None,
                    next_seq: standalone_next,
                },
            );
        }
        shard.sessions.borrow_mut().insert(id, session);
        restored += 1;
    }
    // Events of sessions that are gone.
    for id in events.into_keys() {
        persist_op(shard, Op::DelSession(id));
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_shard_and_are_random() {
        let a = new_id(3);
        let b = new_id(3);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
        assert_eq!(owner_of(&a, 4), Some(3));
        assert_eq!(owner_of(&a, 3), None);
        assert_eq!(owner_of("zz", 4), None);
        assert_eq!(owner_of(&a.replace('0', "g"), 4), None);
        assert_eq!(parse_event_id("3-17"), Some((3, 17)));
        assert_eq!(parse_event_id("x"), None);
    }
}
