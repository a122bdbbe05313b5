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

use crate::server::trace::TraceParent;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::relay::{Accepts, HttpCall, HttpMethod};
use super::request::padded;
use super::response::{sse_event, trim_newline, McpBody, McpResponse, SseSource};
use super::{HttpConfig, HttpShard};
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::runtime::local::{Flag, Pipe, PushError};
use crate::server::auth::Identity;
use crate::server::placement;
use crate::server::ratelimit::Principal;
use crate::server::session::{account, Session};
use crate::server::store::{event_key, Op};
use crate::server::{Answer, Notifier, Pending, SharedNotifier};

mod stored;

use stored::mark_dirty;
pub(crate) use stored::{flush_store, forget, republish, restore, restore_one, StoredRecords};

/// Hex digits of the shard prefix of a session id.
const SHARD_DIGITS: usize = 4;
/// Random bytes after the prefix.
const RANDOM_BYTES: usize = 16;

/// A fresh session id owned by `shard` (of `node`, in a cluster).
pub(crate) fn new_id(shard: usize, node: Option<&str>) -> String {
    let local = format!(
        "{shard:0SHARD_DIGITS$x}{}",
        crate::runtime::random::hex::<RANDOM_BYTES>()
    );
    placement::name(local, node)
}

/// Write-through (`--cluster-sync-events`): Redis acknowledged event `seq`
/// of `stream` of session `id`, held by this shard.
pub(crate) fn durable(http: &HttpShard, id: &str, stream: u64, seq: u64) {
    let session = http.sessions.borrow().get(id).cloned();
    if let Some(s) = session {
        s.durable(stream, seq);
    }
}

/// The node a cluster session id names (the one that created it), if any.
pub(crate) fn node_of(id: &str) -> Option<&str> {
    placement::node_of(id)
}

/// The shard of this node (`node`, in a cluster) that owns session `id`, if
/// the id is well-formed (see `server::placement`).
pub(crate) fn owner_of(id: &str, shard_count: usize, node: Option<&str>) -> Option<usize> {
    let (local, _) = placement::split(id);
    if local.len() != SHARD_DIGITS + 2 * RANDOM_BYTES
        || !local.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let shard = usize::from_str_radix(&local[..SHARD_DIGITS], 16).ok()?;
    placement::owner(id, shard, shard_count, node)
}

struct Stored {
    stream: u64,
    seq: u64,
    at: Instant,
    frame: Bytes,
    /// In the store for sure (always, unless `--cluster-sync-events` waits
    /// for Redis to say so).
    durable: bool,
}

/// A stream that has not finished.
struct Live {
    /// The connection currently reading it, if any.
    sink: Option<Rc<Pipe<Bytes>>>,
    next_seq: u64,
    /// Write-through (`--cluster-sync-events`): the last event handed to a
    /// reader (events go out in order, once durable).
    delivered: u64,
    /// Write-through: the event that ends the stream, once emitted.
    final_seq: Option<u64>,
    /// Write-through, POST streams: raised at the first event (or when the
    /// stream goes away), for the choice between JSON and SSE.
    first: Option<Rc<Flag>>,
}

impl Live {
    fn new(sink: Option<Rc<Pipe<Bytes>>>, next_seq: u64) -> Self {
        Live {
            sink,
            next_seq,
            delivered: next_seq - 1,
            final_seq: None,
            first: None,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(f) = &self.first {
            f.raise();
        }
    }
}

struct Streams {
    store: VecDeque<Stored>,
    live: HashMap<u64, Live>,
    next_stream: u64,
}

pub(crate) struct HttpSession {
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
    /// `--cluster-sync-events`: events reach readers once durable.
    sync: bool,
    http: Weak<HttpShard>,
    /// Who created the session (`--auth`); only they may use it.
    principal: RefCell<Option<Identity>>,
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
    fn new(http: &Rc<HttpShard>) -> Rc<Self> {
        Self::with_id(http, new_id(http.net.core.id, http.node_id()))
    }

    fn with_id(http: &Rc<HttpShard>, id: String) -> Rc<Self> {
        let cfg: &HttpConfig = &http.cfg;
        Rc::new_cyclic(|me: &Weak<HttpSession>| {
            let standalone: SharedNotifier = Rc::new(StreamNotifier {
                session: me.clone(),
                stream: 0,
            });
            let mut mcp = Session::new(&http.net.core, Some(standalone));
            mcp.set_label(&id);
            mcp.set_store_key(&id);
            // What the store keeps of this session changed: write its record
            // at the next flush.
            let (owner, named) = (Rc::downgrade(http), id.clone());
            mcp.on_change(Rc::new(move || {
                if let Some(h) = owner.upgrade() {
                    mark_dirty(&h, &named);
                }
            }));
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
                sync: http.cluster().is_some_and(|c| c.sync_events()),
                http: Rc::downgrade(http),
                principal: RefCell::new(None),
            }
        })
    }

    fn touch(&self) {
        self.last_active.set(Instant::now());
    }

    /// Queues a change to this session's stored copy (`--data-dir`).
    fn persist(&self, op: Op) {
        if let Some(http) = self.http.upgrade() {
            http.net.core.persist(op);
        }
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
            st.live.entry(0).or_insert_with(|| Live::new(None, 1));
        }
        let Some(live) = st.live.get_mut(&stream) else {
            return; // a POST stream that already finished
        };
        let seq = live.next_seq;
        live.next_seq += 1;
        let frame = sse_event(Some(&format!("{stream}-{seq}")), json);
        if self.sync {
            // Handed to the reader once Redis has it (`durable`).
            if last {
                live.final_seq = Some(seq);
            }
            if let Some(f) = &live.first {
                f.raise();
            }
        } else {
            self.deliver(live, frame.clone(), last);
            if last {
                st.live.remove(&stream);
            }
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
            durable: !self.sync,
        });
        self.evict(&mut st);
    }

    /// Hands an event to the stream's reader, if it has one; a reader too
    /// slow for `sse_queue_events` is cut (it resumes from the store with
    /// Last-Event-ID).
    fn deliver(&self, live: &mut Live, frame: Bytes, last: bool) {
        let Some(sink) = &live.sink else { return };
        let pushed = if last {
            sink.push_final(frame)
        } else {
            sink.push(frame)
        };
        match pushed {
            Ok(()) => {}
            Err(PushError::Full) => {
                sink.close();
                live.sink = None;
                if let Some(http) = self.http.upgrade() {
                    http.net.core.metrics.borrow_mut().counters.sse_streams_cut += 1;
                }
            }
            Err(PushError::Closed) => live.sink = None,
        }
    }

    /// Write-through: Redis has event `seq` of `stream`; the stream's
    /// durable events that follow what its reader got go out, in order.
    fn durable(&self, stream: u64, seq: u64) {
        let mut st = self.streams.borrow_mut();
        let st = &mut *st;
        if let Some(e) = st
            .store
            .iter_mut()
            .rev()
            .find(|e| e.stream == stream && e.seq == seq)
        {
            e.durable = true;
        }
        let Some(live) = st.live.get_mut(&stream) else {
            return;
        };
        loop {
            // The stream's next event in the store (events are stored in
            // the order they were emitted).
            let Some(e) = st
                .store
                .iter()
                .find(|e| e.stream == stream && e.seq > live.delivered)
                .filter(|e| e.durable)
            else {
                return;
            };
            let (seq, last) = (e.seq, live.final_seq == Some(e.seq));
            self.deliver(live, e.frame.clone(), last);
            live.delivered = seq;
            if last {
                st.live.remove(&stream);
                return;
            }
        }
    }

    fn evict(&self, st: &mut Streams) {
        let now = Instant::now();
        while let Some(front) = st.store.front() {
            if st.store.len() > self.store_max_events
                || now.duration_since(front.at) > self.store_max_age
            {
                self.persist(Op::DelEvent(event_key(&self.id, front.stream, front.seq)));
                let gone = st.store.pop_front().expect("the front exists");
                if !gone.durable {
                    self.skip_undelivered(st, gone.stream, gone.seq);
                }
            } else {
                break;
            }
        }
    }

    /// Write-through: an event left the store before Redis acknowledged it
    /// (Redis was out of reach for longer than the store keeps events): its
    /// reader never gets it; the stream goes on past it, or ends if it was
    /// the last. Counted (`sse_events_unacked_dropped`).
    fn skip_undelivered(&self, st: &mut Streams, stream: u64, seq: u64) {
        if let Some(http) = self.http.upgrade() {
            let mut m = http.net.core.metrics.borrow_mut();
            m.counters.sse_events_unacked_dropped += 1;
        }
        let Some(live) = st.live.get_mut(&stream) else {
            return;
        };
        if live.final_seq == Some(seq) {
            if let Some(s) = live.sink.take() {
                s.close();
            }
            st.live.remove(&stream);
        } else {
            live.delivered = live.delivered.max(seq);
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
        let mut live = Live::new(Some(sink.clone()), 1);
        if self.sync {
            live.first = Some(Rc::default());
        }
        st.live.insert(stream, live);
        (stream, sink)
    }

    /// Whether POST stream `id` has carried an event besides the answer:
    /// then the answer goes on the stream, not as plain JSON. Waits for the
    /// first event (or the stream's end).
    async fn more_than_the_answer(&self, id: u64, sink: &Pipe<Bytes>) -> bool {
        if !self.sync {
            sink.ready().await;
            return !(sink.is_closed() && sink.len() <= 1);
        }
        let first = self
            .streams
            .borrow()
            .live
            .get(&id)
            .and_then(|l| l.first.clone());
        if let Some(f) = first {
            f.wait().await;
        }
        let st = self.streams.borrow();
        match st.live.get(&id) {
            Some(l) => l.final_seq != Some(1),
            // Ended already: by an answer after other events, or not at all.
            None => st.store.iter().any(|e| e.stream == id && e.seq > 1),
        }
    }

    /// Whether POST stream `id` has an event yet (sent or waiting for the
    /// store).
    fn has_events(&self, id: u64, sink: &Pipe<Bytes>) -> bool {
        !sink.is_empty() || self.streams.borrow().store.iter().any(|e| e.stream == id)
    }

    fn prime(&self, stream: u64, sink: &Pipe<Bytes>) {
        let priming = format!("id: {stream}-0\nretry: {}\ndata: \n\n", self.retry_ms);
        sink.push_front(Bytes::from(priming));
    }

    /// A POST's answer as its (primed, resumable) SSE stream.
    fn sse_response(&self, stream: u64, sink: Rc<Pipe<Bytes>>) -> McpResponse {
        self.prime(stream, &sink);
        McpResponse {
            status: 200,
            headers: Vec::new(),
            body: McpBody::Sse {
                source: SseSource::Local(sink),
                task: None,
                resumable: true,
            },
        }
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
        let live = st.live.entry(0).or_insert_with(|| Live::new(None, 1));
        let sink = self.new_sink(&format!("0-{}", live.next_seq - 1));
        // From now on: what was emitted before is not this reader's.
        live.delivered = live.next_seq - 1;
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
        let mut replayed = after;
        // Write-through: up to the first event Redis does not have yet; the
        // rest follow as they become durable.
        for e in st
            .store
            .iter()
            .filter(|e| e.stream == stream && e.seq > after)
            .take_while(|e| e.durable)
        {
            // The store is bounded, so a replay may exceed the live queue.
            pipe.push_replay(e.frame.clone());
            replayed = e.seq;
        }
        match st.live.get_mut(&stream) {
            Some(live) => {
                live.delivered = replayed;
                if let Some(old) = live.sink.replace(pipe.clone()) {
                    old.close();
                }
            }
            None if stream == 0 => {
                st.live.insert(0, Live::new(Some(pipe.clone()), after + 1));
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
            if let Some(s) = &live.sink {
                s.close();
            }
        }
    }

    fn end(&self, http: &HttpShard) {
        if self.ended.replace(true) {
            return;
        }
        let core = &http.net.core;
        core.persist(Op::DelSession(self.id.clone()));
        if let Some(records) = http.records.borrow_mut().as_mut() {
            records.forget(&self.id);
        }
        self.mcp.borrow_mut().close(core);
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

enum PostOutcome {
    Accepted,
    Error(McpResponse),
    Answer {
        /// The request's stream, when the client accepts one.
        stream: Option<(u64, Rc<Pipe<Bytes>>)>,
        pending: Option<Pending>,
        /// What was answered now (when not pending).
        now: Answer,
    },
}

/// Serves one POSTed JSON-RPC message in `session`; the bool says whether
/// the answer was an error.
///
/// A request is answered with JSON unless something related to it (progress,
/// a log line, a question to the client) is sent before its result, or the
/// client accepts only SSE; then the answer is an SSE stream that carries
/// those messages and ends with the result. A stream outlives its
/// connection: the handler keeps running and its events stay resumable.
async fn post(
    http: &Rc<HttpShard>,
    session: &Rc<HttpSession>,
    accepts: Accepts,
    body: Vec<u8>,
    trace: Option<TraceParent>,
) -> (McpResponse, bool) {
    if trace.is_some() {
        session.mcp.borrow_mut().set_trace_header(trace);
    }
    let (stream, pending, now) = match serve_message(http, session, accepts, body) {
        PostOutcome::Accepted => return (McpResponse::empty(202), false),
        PostOutcome::Error(r) => return (r, true),
        PostOutcome::Answer {
            stream,
            pending,
            now,
        } => (stream, pending, now),
    };
    match pending {
        None => answer_now(session, stream, now, !accepts.json),
        Some(p) => answer_later(session, stream, p, !accepts.json).await,
    }
}

/// Parses the body and hands the message to the session.
fn serve_message(
    http: &HttpShard,
    session: &Rc<HttpSession>,
    accepts: Accepts,
    body: Vec<u8>,
) -> PostOutcome {
    let core = &http.net.core;
    let (mut buf, len) = padded(body);
    let started = Instant::now();
    let mut parser = core.parser.borrow_mut();
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
        let mut out = Vec::with_capacity(256);
        let _log = session.mcp.borrow().log_scope();
        if !matches!(msg, Message::Request { .. }) {
            let h = session
                .mcp
                .borrow_mut()
                .handle_parsed(core, msg, &mut out, started, None);
            account(core, &h, started);
            return PostOutcome::Accepted;
        }
        let stream = accepts.sse.then(|| session.open_stream());
        let related: Option<SharedNotifier> = stream.as_ref().map(|(id, _)| {
            Rc::new(StreamNotifier {
                session: Rc::downgrade(session),
                stream: *id,
            }) as SharedNotifier
        });
        let h =
            session
                .mcp
                .borrow_mut()
                .handle_parsed(core, msg, &mut out, started, related.as_ref());
        account(core, &h, started);
        PostOutcome::Answer {
            stream,
            pending: h.pending,
            now: Answer {
                bytes: out,
                error: h.error,
            },
        }
    })
}

/// The response to a request answered at once.
fn answer_now(
    session: &Rc<HttpSession>,
    stream: Option<(u64, Rc<Pipe<Bytes>>)>,
    mut now: Answer,
    sse_only: bool,
) -> (McpResponse, bool) {
    trim_newline(&mut now.bytes);
    let is_error = now.error.is_some();
    match stream {
        Some((id, sink)) if sse_only || session.has_events(id, &sink) => {
            session.emit(id, &now.bytes, true);
            (session.sse_response(id, sink), is_error)
        }
        Some((id, _)) => {
            session.drop_stream(id);
            (McpResponse::json(200, now.bytes), is_error)
        }
        None => (McpResponse::json(200, now.bytes), is_error),
    }
}

/// The response to a request whose handler runs on: its own task, so
/// `notifications/cancelled` can stop it and a disconnect does not.
async fn answer_later(
    session: &Rc<HttpSession>,
    stream: Option<(u64, Rc<Pipe<Bytes>>)>,
    p: Pending,
    sse_only: bool,
) -> (McpResponse, bool) {
    let done = Pipe::new(1);
    session.inflight.set(session.inflight.get() + 1);
    let mut running = Running {
        session: session.clone(),
        stream: stream.clone(),
        done: Some(done.clone()),
    };
    let fut = p.fut;
    let task = glommio::spawn_local(async move {
        let mut answer = fut.await;
        trim_newline(&mut answer.bytes);
        if let Some((id, _)) = running.stream.take() {
            if !answer.bytes.is_empty() {
                running.session.emit(id, &answer.bytes, true);
            } else {
                running.session.end_stream(id);
            }
        }
        if let Some(d) = running.done.take() {
            let _ = d.push_final(answer);
        }
    })
    .detach();
    if let Some(id) = &p.id {
        session.mcp.borrow().inflight().attach(id, task);
    }
    match stream {
        None => match done.next().await {
            Some(a) if !a.bytes.is_empty() => {
                let is_error = a.error.is_some();
                (McpResponse::json(200, a.bytes), is_error)
            }
            _ => (McpResponse::empty(202), false),
        },
        Some((id, sink)) => {
            if !sse_only && !session.more_than_the_answer(id, &sink).await {
                if let Some(a) = done.next().await.filter(|a| !a.bytes.is_empty()) {
                    session.drop_stream(id);
                    let is_error = a.error.is_some();
                    return (McpResponse::json(200, a.bytes), is_error);
                }
            }
            (session.sse_response(id, sink), false)
        }
    }
}

/// A handler running for a POST: when it ends without an answer
/// (cancelled), its stream ends too.
struct Running {
    session: Rc<HttpSession>,
    stream: Option<(u64, Rc<Pipe<Bytes>>)>,
    done: Option<Rc<Pipe<Answer>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.session.inflight.set(self.session.inflight.get() - 1);
        if let Some((id, sink)) = &self.stream {
            self.session.end_stream(*id);
            sink.close();
        }
        if let Some(d) = &self.done {
            d.close();
        }
    }
}

/// `initialize` without a session: creates one on this shard when the
/// handshake succeeds.
pub(crate) async fn initialize(
    http: &Rc<HttpShard>,
    accepts: Accepts,
    body: Vec<u8>,
    principal: Option<Identity>,
    trace: Option<TraceParent>,
) -> McpResponse {
    let core = &http.net.core;
    let max = http.cfg.max_sessions_per_shard;
    if http.sessions.borrow().len() >= max {
        core.metrics.borrow_mut().counters.sessions_rejected += 1;
        let msg = format!(
            "too many sessions on this shard ({max} max, max-sessions-per-shard); retry later"
        );
        return McpResponse::rpc_error(503, &Id::Null, jsonrpc::SERVER_OVERLOADED, &msg)
            .with_header("retry-after", "1");
    }
    let session = HttpSession::new(http);
    if let Some(who) = &principal {
        session.mcp.borrow_mut().set_identity(core, who.clone());
    }
    *session.principal.borrow_mut() = principal;
    let (resp, failed) = post(http, &session, accepts, body, trace).await;
    if failed || session.mcp.borrow().negotiated_version().is_none() {
        session.end(http);
        return resp;
    }
    core.metrics.borrow_mut().counters.sessions_created += 1;
    http.sessions
        .borrow_mut()
        .insert(session.id.clone(), session.clone());
    mark_dirty(http, &session.id);
    resp.with_header("mcp-session-id", session.id.clone())
}

pub(crate) fn not_found() -> McpResponse {
    McpResponse::rpc_error(
        404,
        &Id::Null,
        jsonrpc::INVALID_REQUEST,
        "Session not found: it ended or expired; start a new one with initialize",
    )
}

/// On the owning shard: serves a request for an existing session.
pub(crate) async fn serve_call(http: &Rc<HttpShard>, call: HttpCall) -> McpResponse {
    let session = http.sessions.borrow().get(&call.session_id).cloned();
    let Some(session) = session.filter(|s| !s.ended.get()) else {
        return match http.cluster() {
            // Held by another node, or left by a dead one.
            Some(link) if !call.from_node => {
                super::cluster::serve_elsewhere(http, link, call).await
            }
            _ => not_found(),
        };
    };
    serve_held(http, session, call).await
}

/// Serves a request for a session this shard holds.
pub(crate) async fn serve_held(
    http: &Rc<HttpShard>,
    session: Rc<HttpSession>,
    call: HttpCall,
) -> McpResponse {
    let core = &http.net.core;
    let owner = session
        .principal
        .borrow()
        .as_ref()
        .map(|i| i.principal.clone());
    if owner.as_ref() != call.principal.as_ref().map(|i| &i.principal) {
        // Indistinguishable from an unknown session: a token must not learn
        // which session ids exist.
        core.metrics.borrow_mut().counters.auth_session_mismatch += 1;
        return not_found();
    }
    session.touch();
    match call.method {
        HttpMethod::Post => {
            let who = Principal::Session(session.id.clone());
            if let Err(wait) = core.rate_check(&who, Instant::now()) {
                return McpResponse::rate_limited(wait);
            }
            post(http, &session, call.accepts, call.body, call.trace)
                .await
                .0
        }
        HttpMethod::Delete => {
            http.sessions.borrow_mut().remove(&session.id);
            core.rate
                .borrow_mut()
                .forget(&Principal::Session(session.id.clone()));
            session.end(http);
            McpResponse::empty(200)
        }
        HttpMethod::Get => get(&session, &call),
    }
}

/// `GET`: the standalone stream, or a stream resumed after `Last-Event-ID`.
fn get(session: &HttpSession, call: &HttpCall) -> McpResponse {
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

fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Removes sessions idle for `session_idle_ttl_ms` (no request, no open
/// stream); their ids answer 404 from then on.
pub(crate) async fn sweep_loop(http: Rc<HttpShard>) {
    let ttl = Duration::from_millis(http.cfg.session_idle_ttl_ms);
    let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    while !http.net.sleep_unless_shutdown(every).await {
        let now = Instant::now();
        let expired: Vec<Rc<HttpSession>> = http
            .sessions
            .borrow()
            .values()
            .filter(|s| s.expired(now, ttl))
            .cloned()
            .collect();
        for s in expired {
            http.sessions.borrow_mut().remove(&s.id);
            s.end(&http);
            http.net.core.metrics.borrow_mut().counters.sessions_expired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_name_their_node_and_foreign_ones_hash_to_a_shard() {
        let a = new_id(2, Some("n-1"));
        assert!(a.ends_with(".n-1"), "{a}");
        assert_eq!(node_of(&a), Some("n-1"));
        assert_eq!(owner_of(&a, 4, Some("n-1")), Some(2));
        // Another node adopts it: the shard is the hash's, the same every time.
        let there = owner_of(&a, 3, Some("n-2")).expect("well-formed");
        assert!(there < 3);
        assert_eq!(owner_of(&a, 3, Some("n-2")), Some(there));
        // Outside a cluster a node-named id is unknown; bad node names too.
        assert_eq!(owner_of(&a, 4, None), None);
        assert_eq!(
            owner_of(&format!("{}.bad name", &a[..36]), 4, Some("x")),
            None
        );
        assert_eq!(owner_of(&format!("{}.", &a[..36]), 4, Some("x")), None);
    }

    #[test]
    fn ids_name_their_shard_and_are_random() {
        let a = new_id(3, None);
        let b = new_id(3, None);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
        assert_eq!(owner_of(&a, 4, None), Some(3));
        assert_eq!(owner_of(&a, 3, None), Some(0));
        assert_eq!(owner_of("zz", 4, None), None);
        assert_eq!(owner_of(&a.replace('0', "g"), 4, None), None);
        assert_eq!(parse_event_id("3-17"), Some((3, 17)));
        assert_eq!(parse_event_id("x"), None);
    }
}
