//! One closed-loop TCP connection: initialize, then keep `pipeline` requests
//! in flight until the run ends, checking every response.
//!
//! Request `id`s encode their slot: slot `s` sends ids `s, s+D, s+2D, ...`
//! (D = pipeline depth), so a response maps back to its slot with one modulo
//! and a stale, duplicate or invented id is caught by comparing with the one
//! id that slot has outstanding. Requests are pre-encoded around the id;
//! timestamps are taken once per read, not per message.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use memchr::memchr;
use simd_json::prelude::*;

use crate::scan::{Scanner, Verdict};

/// What every connection of a run sends and when.
pub struct Plan {
    pub addr: std::net::SocketAddr,
    pub pipeline: usize,
    /// `{"jsonrpc":"2.0","id":` — the id follows.
    pub prefix: Vec<u8>,
    /// Everything after the id, newline included.
    pub suffix: Vec<u8>,
    pub warm_end: Instant,
    pub end: Instant,
    /// A connection with requests outstanding that receives nothing for this
    /// long gives up and counts them as missing.
    pub response_timeout: Duration,
}

/// What one connection (or, merged, a whole run) observed.
pub struct Outcome {
    /// Latency of responses received inside the measurement window, in ns.
    pub hist: Histogram<u64>,
    /// Responses received inside the measurement window.
    pub measured: u64,
    /// Requests written (warm-up included).
    pub sent: u64,
    /// Every response matched to a request, window or not.
    pub answered: u64,
    /// JSON-RPC errors plus tool results with `isError: true`.
    pub errors: u64,
    /// Responses with an id we had not sent or had already seen, or lines
    /// that are not JSON-RPC.
    pub wrong: u64,
    /// Requests never answered.
    pub missing: u64,
    pub failures: Vec<String>,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds")
}

impl Outcome {
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            measured: 0,
            sent: 0,
            answered: 0,
            errors: 0,
            wrong: 0,
            missing: 0,
            failures: Vec::new(),
        }
    }

    pub fn merge(&mut self, o: Outcome) {
        self.hist.add(&o.hist).expect("same bounds");
        self.measured += o.measured;
        self.sent += o.sent;
        self.answered += o.answered;
        self.errors += o.errors;
        self.wrong += o.wrong;
        self.missing += o.missing;
        self.failures.extend(o.failures);
    }
}

const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"tessera-loadgen","version":"0.1.0"}}}
"#;
const INITIALIZED: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";
const READ_BUFFER_BYTES: usize = 256 * 1024;
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

pub async fn run(plan: Rc<Plan>) -> Outcome {
    let mut out = Outcome::new();
    if let Err(e) = drive(&plan, &mut out).await {
        out.failures.push(e);
    }
    out
}

struct Reader {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl Reader {
    /// Reads more bytes, waiting at most `timeout`. Ok(false) on EOF.
    async fn fill(&mut self, stream: &mut TcpStream, timeout: Duration) -> Result<bool, String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.buf.len() {
            if self.buf.len() >= MAX_LINE_BYTES {
                return Err(format!("a response line exceeded {MAX_LINE_BYTES} bytes"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let buf = &mut self.buf[self.filled..];
        let read = futures_lite::future::or(async { Some(stream.read(buf).await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match read {
            None => Err(format!("no response for {timeout:?}")),
            Some(Err(e)) => Err(format!("read: {e}")),
            Some(Ok(0)) => Ok(false),
            Some(Ok(n)) => {
                self.filled += n;
                Ok(true)
            }
        }
    }

    fn next_line(&mut self) -> Option<&[u8]> {
        let i = memchr(b'\n', &self.buf[self.start..self.filled])?;
        let line = &self.buf[self.start..self.start + i];
        self.start += i + 1;
        Some(line)
    }
}

async fn drive(plan: &Plan, out: &mut Outcome) -> Result<(), String> {
    let mut stream = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", plan.addr))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut reader = Reader {
        buf: vec![0; READ_BUFFER_BYTES],
        start: 0,
        filled: 0,
    };

    stream
        .write_all(INITIALIZE)
        .await
        .map_err(|e| format!("write: {e}"))?;
    'init: loop {
        if !reader.fill(&mut stream, plan.response_timeout).await? {
            return Err("server closed the connection during initialize".into());
        }
        while let Some(line) = reader.next_line() {
            let mut copy = line.to_vec();
            let Ok(v) = simd_json::to_borrowed_value(&mut copy) else {
                continue;
            };
            if v.get_str("id") != Some("init") {
                continue;
            }
            if v.get("result")
                .and_then(|r| r.get_str("protocolVersion"))
                .is_none()
            {
                return Err(format!(
                    "initialize failed: {}",
                    String::from_utf8_lossy(line)
                ));
            }
            break 'init;
        }
    }

    let d = plan.pipeline as u64;
    let mut slot_id: Vec<u64> = (0..d).collect();
    let mut slot_busy = vec![true; plan.pipeline];
    let mut sent_at = vec![Instant::now(); plan.pipeline];
    let mut outstanding = plan.pipeline;
    let mut wbuf = Vec::with_capacity(plan.pipeline * (plan.prefix.len() + plan.suffix.len() + 20));
    wbuf.extend_from_slice(INITIALIZED);
    for id in 0..d {
        encode(&mut wbuf, plan, id);
    }
    out.sent += d;
    let scanner = Scanner::default();
    loop {
        if !wbuf.is_empty() {
            stream
                .write_all(&wbuf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            wbuf.clear();
        }
        if outstanding == 0 {
            return Ok(());
        }
        match reader.fill(&mut stream, plan.response_timeout).await {
            Ok(true) => {}
            Ok(false) => {
                out.missing += outstanding as u64;
                return Err(format!(
                    "server closed the connection with {outstanding} request(s) outstanding"
                ));
            }
            Err(e) => {
                out.missing += outstanding as u64;
                return Err(e);
            }
        }
        let now = Instant::now();
        let measuring = now >= plan.warm_end && now <= plan.end;
        let sending = now < plan.end;
        while let Some(line) = reader.next_line() {
            let (id, failed) = match scanner.scan(line) {
                Verdict::Ok(id) => (id, false),
                Verdict::RpcError(id) | Verdict::ToolError(id) => (id, true),
                Verdict::Unrelated => continue,
                Verdict::Garbage => {
                    out.wrong += 1;
                    continue;
                }
            };
            let slot = (id % d) as usize;
            if !slot_busy[slot] || slot_id[slot] != id {
                out.wrong += 1;
                continue;
            }
            out.answered += 1;
            out.errors += failed as u64;
            if measuring {
                out.measured += 1;
                let ns = now.duration_since(sent_at[slot]).as_nanos() as u64;
                out.hist.saturating_record(ns.max(1));
            }
            if sending {
                slot_id[slot] += d;
                sent_at[slot] = now;
                encode(&mut wbuf, plan, slot_id[slot]);
                out.sent += 1;
            } else {
                slot_busy[slot] = false;
                outstanding -= 1;
            }
        }
    }
}

fn encode(buf: &mut Vec<u8>, plan: &Plan, id: u64) {
    buf.extend_from_slice(&plan.prefix);
    buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    buf.extend_from_slice(&plan.suffix);
}
