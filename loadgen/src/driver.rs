//! One load-generating connection, for every transport: set up (initialize,
//! learn which kv keys are local), then keep requests in flight until the run
//! ends, checking every response.
//!
//! Closed loop (`--pipeline D`): each of D slots sends its next request as
//! soon as its previous one is answered; latency is measured from the send.
//! Open loop (`--rate`): requests are due at fixed intervals and latency is
//! measured from when each was *due*, not from when it could be sent (wrk2),
//! so a stalled server shows up as queueing instead of hiding behind fewer
//! sends. Outstanding requests are still bounded by D; a request that finds
//! every slot busy waits and its wait is counted.
//!
//! Request ids encode their slot: slot `s` sends ids `s, s+D, s+2D, ...`, so
//! a response maps back to its slot with one modulo and a stale, duplicate or
//! invented id is caught by comparing with the one id that slot has
//! outstanding. Timestamps are taken once per read, not per message.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use simd_json::prelude::*;

use crate::gate::{Ticket, Window};
use crate::scan::{Scanner, Verdict};
use crate::stats::Stats;
use crate::wire::{Frame, Wire};
use crate::workload::{Rng, Workload};

/// What every connection of a run does.
pub struct Plan {
    pub wire: Wire,
    pub workload: Workload,
    pub pipeline: usize,
    /// Open loop: requests per second for each connection.
    pub rate_per_conn: Option<f64>,
    /// A connection with requests outstanding that receives nothing for this
    /// long gives up and counts them as missing.
    pub response_timeout: Duration,
    /// `--reconnect`: a connection the server closes is opened again and
    /// its unanswered requests are sent again.
    pub reconnect: bool,
}

/// Opens a new connection to the same server (`--reconnect`).
pub type Dial<S> = Pin<Box<dyn Future<Output = Result<S, std::io::Error>>>>;

const READ_BUFFER_BYTES: usize = 256 * 1024;
const CLOSED_DURING_SETUP: &str = "the server closed the connection during setup";
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Keys of each kind (local, remote) a connection prepares for `{key}`.
const KEYS_PER_POOL: usize = 64;
/// kv_get probes used to learn the shard count and the connection's shard.
const PROBES: usize = 64;

pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            filled: 0,
        }
    }

    fn make_room(&mut self) -> Result<(), String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.buf.len() {
            if self.buf.len() >= MESSAGE_BYTES_MAX {
                return Err(format!("a response exceeded {MESSAGE_BYTES_MAX} bytes"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        Ok(())
    }

    /// Reads more bytes, waiting at most until `deadline`. Ok(None) when
    /// the deadline passed first, Ok(Some(0)) on EOF.
    pub async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        deadline: Instant,
    ) -> Result<Option<usize>, String> {
        self.make_room()?;
        let buf = &mut self.buf[self.filled..];
        // Most reads find data or arm the socket's poll at once; only a read
        // that must wait pays for a timer.
        let read = match futures_lite::future::poll_once(stream.read(&mut *buf)).await {
            Some(r) => Some(r),
            None => {
                let wait = deadline.saturating_duration_since(Instant::now());
                futures_lite::future::or(async { Some(stream.read(buf).await) }, async {
                    glommio::timer::sleep(wait).await;
                    None
                })
                .await
            }
        };
        match read {
            None => Ok(None),
            Some(Err(e)) => Err(format!("read: {e}")),
            Some(Ok(n)) => {
                self.filled += n;
                Ok(Some(n))
            }
        }
    }

    pub fn next_frame(&mut self, wire: &mut Wire) -> Result<Option<Frame>, String> {
        wire.next_frame(&self.buf[self.start..self.filled], &mut self.start)
    }
}

/// Sends `bytes` and reads frames until `done` accepts one.
pub async fn exchange<S, T>(
    stream: &mut S,
    reader: &mut Reader,
    wire: &mut Wire,
    bytes: &[u8],
    timeout: Duration,
    mut done: impl FnMut(Frame) -> Option<Result<T, String>>,
) -> Result<T, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        while let Some(f) = reader.next_frame(wire)? {
            if let Some(r) = done(f) {
                return r;
            }
        }
        match reader.fill(stream, deadline).await? {
            None => return Err(format!("no answer during setup for {timeout:?}")),
            Some(0) => return Err(CLOSED_DURING_SETUP.into()),
            Some(_) => {}
        }
    }
}

fn parse(bytes: &[u8]) -> Option<simd_json::OwnedValue> {
    let mut copy = bytes.to_vec();
    simd_json::to_owned_value(&mut copy).ok()
}

/// Opens the MCP conversation the wire needs.
pub async fn initialize<S>(
    stream: &mut S,
    reader: &mut Reader,
    wire: &mut Wire,
    timeout: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if matches!(wire, Wire::Http(h) if h.modern) {
        return Ok(());
    }
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":"init","method":"initialize","params":{{"protocolVersion":"{}","capabilities":{{}},"clientInfo":{{"name":"tessera-loadgen","version":"{}"}}}}}}"#,
        crate::wire::LEGACY_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    let mut bytes = Vec::new();
    wire.encode_raw(&mut bytes, "initialize", &init);
    let http = matches!(wire, Wire::Http(_));
    exchange(stream, reader, wire, &bytes, timeout, |f| match f {
        Frame::Json(j) => {
            let v = parse(&j)?;
            if v.get_str("id") != Some("init") {
                return None;
            }
            Some(
                match v.get("result").and_then(|r| r.get_str("protocolVersion")) {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "initialize failed: {}",
                        String::from_utf8_lossy(&j)
                    )),
                },
            )
        }
        Frame::Status(s) if http => Some(Err(format!("initialize answered HTTP {s}"))),
        Frame::Status(_) => None,
    })
    .await?;
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let mut bytes = Vec::new();
    wire.encode_raw(&mut bytes, "notifications/initialized", note);
    if http {
        exchange(stream, reader, wire, &bytes, timeout, |f| match f {
            Frame::Status(s) if s < 300 => Some(Ok(())),
            Frame::Status(s) => Some(Err(format!("notifications/initialized answered HTTP {s}"))),
            Frame::Json(_) => Some(Ok(())),
        })
        .await
    } else {
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

/// kv keys for `{key}`: some owned by the connection's own shard, some by
/// others (empty on a one-shard server).
#[derive(Clone)]
pub struct Keys {
    local: Vec<String>,
    remote: Vec<String>,
}

/// Learns the shard count and which shard serves this connection from the
/// `_meta` tessera puts on kv results, and prepares keys of both kinds.
pub async fn learn_keys<S>(
    stream: &mut S,
    reader: &mut Reader,
    wire: &mut Wire,
    conn: usize,
    timeout: Duration,
) -> Result<Keys, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let probe = Workload::single("tools/call", "kv_get", Some(r#"{"key":"{key}"}"#), None)?;
    let shape = &probe.shapes[0];
    let (mut shards, mut served_by) = (1usize, None);
    let mut scratch = Vec::new();
    for i in 0..PROBES {
        let mut bytes = Vec::new();
        let id = format!("\"probe{i}\"");
        let key = format!("lg-probe-{i}");
        wire.encode(
            &mut bytes,
            &mut scratch,
            shape,
            id.as_bytes(),
            key.as_bytes(),
        );
        let want = &id[1..id.len() - 1];
        let meta = exchange(stream, reader, wire, &bytes, timeout, |f| match f {
            Frame::Json(j) => {
                let v = parse(&j)?;
                if v.get_str("id") != Some(want) {
                    return None;
                }
                let m = v
                    .get("result")
                    .and_then(|r| r.get("_meta"))
                    .and_then(|m| m.get("tessera/shard"))
                    .and_then(|s| Some((s.get_u64("served_by")?, s.get_u64("owner")?)));
                Some(m.ok_or_else(|| {
                    format!(
                        "{{key}} needs tessera's kv tools (a kv_get result with _meta.tessera/shard); got {}",
                        String::from_utf8_lossy(&j)
                    )
                }))
            }
            Frame::Status(s) => Some(Err(format!("kv_get probe answered HTTP {s}"))),
        })
        .await?;
        served_by = Some(meta.0 as usize);
        shards = shards.max(meta.1 as usize + 1).max(meta.0 as usize + 1);
    }
    let served_by = served_by.unwrap_or(0);
    let mut keys = Keys {
        local: Vec::new(),
        remote: Vec::new(),
    };
    let mut n = 0u64;
    while keys.local.len() < KEYS_PER_POOL || (shards > 1 && keys.remote.len() < KEYS_PER_POOL) {
        let k = format!("lg-{conn}-{n}");
        n += 1;
        let pool = if tessera::internals::kv_owner(&k, shards) == served_by {
            &mut keys.local
        } else {
            &mut keys.remote
        };
        if pool.len() < KEYS_PER_POOL {
            pool.push(k);
        }
    }
    Ok(keys)
}

/// Drives one connection for the whole run; everything it sees goes to
/// `stats`. With `others` (a cluster's other nodes), the conversation is
/// opened on `stream` and its requests are then sent on every socket at
/// once, each with its own pipeline: one session, many nodes.
#[allow(clippy::too_many_arguments)]
pub async fn run<S>(
    mut stream: S,
    others: Vec<S>,
    init: Option<S>,
    redial: Option<&dyn Fn() -> Dial<S>>,
    plan: &Plan,
    conn: usize,
    ticket: Ticket,
    stats: &RefCell<Stats>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut wire = plan.wire.clone();
    let mut reader = Reader::new();
    match init {
        // The session is made elsewhere (--init-addr): every request of
        // this connection is then relayed by the node it reaches.
        Some(mut s) => {
            let mut r = Reader::new();
            initialize(&mut s, &mut r, &mut wire, plan.response_timeout).await?;
        }
        None => initialize(&mut stream, &mut reader, &mut wire, plan.response_timeout).await?,
    }
    let keys = if plan.workload.uses_keys() {
        Some(
            learn_keys(
                &mut stream,
                &mut reader,
                &mut wire,
                conn,
                plan.response_timeout,
            )
            .await?,
        )
    } else {
        None
    };
    let window = ticket.enter().await;
    let mut lanes = vec![(stream, reader, wire.clone())];
    lanes.extend(others.into_iter().map(|s| (s, Reader::new(), wire.clone())));
    let runs = lanes.iter_mut().map(|(s, r, w)| {
        let keys = keys.clone();
        Box::pin(steady(s, r, w, redial, plan, window, conn, keys, stats))
    });
    let mut first_error = None;
    for r in join_all(runs.collect()).await {
        if let Err((e, outstanding)) = r {
            stats.borrow_mut().total.missing += outstanding as u64;
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Polls every future until all are done; their outputs in order.
async fn join_all<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

struct Slots {
    id: Vec<u64>,
    busy: Vec<bool>,
    since: Vec<Instant>,
    free: Vec<usize>,
    outstanding: usize,
    /// `--reconnect`: each busy slot's encoded request, to send again.
    bytes: Option<Vec<Vec<u8>>>,
}

/// Whether an I/O error means the peer reset the connection.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// Connects again (refused attempts are retried every 10 ms, counted,
/// for at most the response timeout), initializes an NDJSON connection, and
/// queues every unanswered request again, oldest id first.
#[allow(clippy::too_many_arguments)]
async fn reconnect<S>(
    redial: &dyn Fn() -> Dial<S>,
    reader: &mut Reader,
    wire: &mut Wire,
    plan: &Plan,
    slots: &Slots,
    wbuf: &mut Vec<u8>,
    order: &mut VecDeque<u64>,
    stats: &RefCell<Stats>,
) -> Result<S, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let give_up = Instant::now() + plan.response_timeout;
    let stream = loop {
        let mut stream = match redial().await {
            Ok(s) => s,
            Err(e) if Instant::now() < give_up => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    stats.borrow_mut().total.refused += 1;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(format!("reconnect: {e}")),
        };
        *reader = Reader::new();
        if !matches!(wire, Wire::Ndjson) {
            break stream;
        }
        // A server that is draining may close a connection it accepted
        // before answering anything: that is a close, not a failure.
        match initialize(&mut stream, reader, wire, plan.response_timeout).await {
            Ok(()) => break stream,
            Err(e) if e.contains(CLOSED_DURING_SETUP) && Instant::now() < give_up => {
                stats.borrow_mut().total.reconnects += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let bytes = slots.bytes.as_ref().expect("kept with --reconnect");
    let mut busy: Vec<usize> = (0..slots.busy.len()).filter(|&i| slots.busy[i]).collect();
    busy.sort_by_key(|&i| slots.id[i]);
    order.clear();
    wbuf.clear();
    let mut st = stats.borrow_mut();
    st.total.reconnects += 1;
    for i in busy {
        wbuf.extend_from_slice(&bytes[i]);
        if matches!(wire, Wire::Http(_)) {
            order.push_back(slots.id[i]);
        }
        st.total.resent += 1;
    }
    Ok(stream)
}

#[allow(clippy::too_many_arguments)]
async fn steady<S>(
    stream: &mut S,
    reader: &mut Reader,
    wire: &mut Wire,
    redial: Option<&dyn Fn() -> Dial<S>>,
    plan: &Plan,
    window: Window,
    conn: usize,
    keys: Option<Keys>,
    stats: &RefCell<Stats>,
) -> Result<(), (String, usize)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let d = plan.pipeline;
    let now = Instant::now();
    let mut slots = Slots {
        id: (0..d as u64).collect(),
        busy: vec![false; d],
        since: vec![now; d],
        free: (0..d).rev().collect(),
        outstanding: 0,
        bytes: redial.map(|_| vec![Vec::new(); d]),
    };
    let http = matches!(wire, Wire::Http(_));
    let mut order: VecDeque<u64> = VecDeque::new();
    let mut wbuf = Vec::with_capacity(d * 256);
    let interval = plan
        .rate_per_conn
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    // Spread connections' first sends over one interval so they do not
    // fire in lockstep.
    let mut next_due = interval.map(|i| now + i.mul_f64((conn % 97) as f64 / 97.0));
    let scanner = Scanner::default();
    let mut last_progress = Instant::now();
    let mut maker = Maker {
        rng: Rng::new(conn as u64 + 1),
        scratch: Vec::with_capacity(256),
        keys,
        http,
    };
    loop {
        let now = Instant::now();
        {
            let mut st = stats.borrow_mut();
            match (&mut next_due, interval) {
                (Some(due), Some(iv)) => {
                    while *due <= now && *due < window.end {
                        if !maker.send(wire, plan, &mut slots, &mut wbuf, &mut order, *due, &mut st)
                        {
                            break;
                        }
                        *due += iv;
                    }
                }
                _ => {
                    if now < window.end {
                        while maker
                            .send(wire, plan, &mut slots, &mut wbuf, &mut order, now, &mut st)
                        {
                        }
                    }
                }
            }
        }
        // Why the connection broke (ECONNRESET, EPIPE), when it did.
        let mut lost: Option<String> = None;
        if !wbuf.is_empty() {
            match stream.write_all(&wbuf).await {
                Ok(()) => wbuf.clear(),
                Err(e) if is_reset(&e) => lost = Some(format!("write: {e}")),
                Err(e) => return Err((format!("write: {e}"), slots.outstanding)),
            }
        }
        let sending_done = match next_due {
            Some(due) => due >= window.end || now >= window.end,
            None => now >= window.end,
        };
        if sending_done && slots.outstanding == 0 {
            return Ok(());
        }
        // Wake for the next due request (open loop, a slot free) or data.
        let mut deadline = last_progress + plan.response_timeout;
        if let Some(due) = next_due {
            if !slots.free.is_empty() && due < window.end {
                deadline = deadline.min(due);
            }
        }
        if slots.outstanding == 0 {
            deadline = match next_due {
                Some(due) => due,
                None => now,
            };
        }
        let filled = match lost {
            Some(_) => Ok(Some(0)),
            None => reader.fill(stream, deadline).await,
        };
        let filled = match filled {
            Err(e) if e.contains("reset") || e.contains("Broken pipe") => {
                lost = Some(e);
                Ok(Some(0))
            }
            other => other,
        };
        match filled {
            Ok(Some(0)) => {
                let reset = lost.take();
                if reset.is_some() {
                    stats.borrow_mut().total.resets += 1;
                }
                let again = redial.filter(|_| !sending_done || slots.outstanding > 0);
                let Some(redial) = again else {
                    return Err((
                        reset.unwrap_or_else(|| {
                            format!(
                                "server closed the connection with {} request(s) outstanding",
                                slots.outstanding
                            )
                        }),
                        slots.outstanding,
                    ));
                };
                // As a client would: close our half at once, so a server
                // lingering on this connection sees it done.
                let _ = stream.close().await;
                *stream = reconnect(
                    redial, reader, wire, plan, &slots, &mut wbuf, &mut order, stats,
                )
                .await
                .map_err(|e| (e, slots.outstanding))?;
                last_progress = Instant::now();
                continue;
            }
            Ok(Some(_)) => last_progress = Instant::now(),
            Ok(None) => {
                if slots.outstanding > 0 && Instant::now() >= last_progress + plan.response_timeout
                {
                    return Err((
                        format!("no response for {:?}", plan.response_timeout),
                        slots.outstanding,
                    ));
                }
                if slots.outstanding == 0 {
                    last_progress = Instant::now();
                }
                continue;
            }
            Err(e) => return Err((e, slots.outstanding)),
        }
        let now = Instant::now();
        let measuring = now >= window.warm_end && now <= window.end;
        let mut st = stats.borrow_mut();
        loop {
            let frame = match reader.next_frame(wire) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let n = slots.outstanding;
                    return Err((e, n));
                }
            };
            let (id, failed) = match &frame {
                Frame::Json(j) => match scanner.scan(j) {
                    Verdict::Ok(id) => (id, false),
                    Verdict::RpcError(id) | Verdict::ToolError(id) => (id, true),
                    Verdict::Unrelated if !http => continue,
                    Verdict::Unrelated | Verdict::Garbage => {
                        st.total.note_wrong("not a response", j);
                        if http {
                            // The response took this request's place.
                            if let Some(id) = order.pop_front() {
                                release(&mut slots, id, d);
                            }
                        }
                        continue;
                    }
                },
                Frame::Status(_) => match order.front() {
                    // An HTTP error with no JSON-RPC body answers the oldest
                    // request (HTTP/1.1 answers in order).
                    Some(&id) => (id, true),
                    None => {
                        st.total
                            .note_wrong("a status with nothing outstanding", &describe(&frame));
                        continue;
                    }
                },
            };
            let slot = (id % d as u64) as usize;
            if http && order.front() != Some(&id) {
                let expected = format!("answers id {id}, expected {:?}: ", order.front());
                st.total.note_wrong(&expected, &describe(&frame));
                order.pop_front();
                continue;
            }
            order.pop_front();
            if !slots.busy[slot] || slots.id[slot] != id {
                st.total
                    .note_wrong(&format!("id {id} is not outstanding"), &describe(&frame));
                continue;
            }
            st.answered(
                failed,
                measuring,
                now.saturating_duration_since(slots.since[slot]),
            );
            release(&mut slots, id, d);
        }
    }
}

/// A frame's bytes for a wrong-response sample.
fn describe(frame: &Frame) -> Vec<u8> {
    match frame {
        Frame::Json(j) => j.clone(),
        Frame::Status(code) => format!("HTTP {code}").into_bytes(),
    }
}

/// Encodes requests into free slots.
struct Maker {
    rng: Rng,
    scratch: Vec<u8>,
    keys: Option<Keys>,
    http: bool,
}

impl Maker {
    /// Sends the next request on a free slot, timed from `at`; false when
    /// every slot is busy.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        wire: &Wire,
        plan: &Plan,
        slots: &mut Slots,
        wbuf: &mut Vec<u8>,
        order: &mut VecDeque<u64>,
        at: Instant,
        stats: &mut Stats,
    ) -> bool {
        let Some(slot) = slots.free.pop() else {
            return false;
        };
        let shape = plan.workload.pick(self.rng.next_u64());
        let key: &[u8] = match &self.keys {
            Some(k) if shape.uses_key() => {
                let remote = !k.remote.is_empty() && self.rng.chance(plan.workload.cross_shard);
                let pool = if remote { &k.remote } else { &k.local };
                pool[(self.rng.next_u64() % pool.len() as u64) as usize].as_bytes()
            }
            _ => b"",
        };
        let id = slots.id[slot];
        let mut idbuf = itoa::Buffer::new();
        let from = wbuf.len();
        wire.encode(
            wbuf,
            &mut self.scratch,
            shape,
            idbuf.format(id).as_bytes(),
            key,
        );
        if let Some(kept) = slots.bytes.as_mut() {
            kept[slot].clear();
            kept[slot].extend_from_slice(&wbuf[from..]);
        }
        slots.busy[slot] = true;
        slots.since[slot] = at;
        slots.outstanding += 1;
        if self.http {
            order.push_back(id);
        }
        stats.total.sent += 1;
        true
    }
}

fn release(slots: &mut Slots, id: u64, d: usize) {
    let slot = (id % d as u64) as usize;
    if slots.busy[slot] && slots.id[slot] == id {
        slots.busy[slot] = false;
        slots.id[slot] += d as u64;
        slots.free.push(slot);
        slots.outstanding -= 1;
    }
}
