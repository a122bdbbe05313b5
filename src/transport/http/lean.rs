//! The lean HTTP/1.1 path: the request shape MCP clients send (HTTP/1.1
//! `GET`/`POST`/`DELETE`, a `Content-Length` body of at most
//! [`LEAN_BODY_MAX_BYTES`], keep-alive) parsed with `httparse` straight from
//! the connection's buffer and answered with one write; the connection's
//! read and write buffers are reused from request to request.
//!
//! Why: under load hyper's per-request machinery (dispatcher, body channel,
//! `HeaderMap`, `Bytes` reference counts) and a timer per wait cost about a
//! quarter of the server's CPU per request (docs/PERFORMANCE.md).
//!
//! Anything else — HTTP/1.0, chunked or oversized request bodies,
//! `Expect`, `Upgrade`, other methods, a head over the bounds or one
//! `httparse` refuses — hands the connection, with the bytes read so far, to
//! hyper ([`super::serve_hyper`]) for the rest of its life, so every answer
//! to an unusual request (431, 400, 100-continue, HTTP/1.0 framing) stays
//! hyper's. Hand-over happens only between requests: nothing was consumed.
//!
//! Bounds, as on the hyper path: a head must be complete within
//! `header_timeout_ms` of its first byte (else the connection is closed), a
//! body within `body_timeout_ms` (else 408 and close); a connection waiting
//! for a head with nothing buffered closes after `idle_timeout_ms`. One
//! timer per connection serves the idle bound; it is re-armed only when it
//! fires, never per request.

use crate::transport::Peer;
use std::cell::RefCell;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;
use http_body_util::BodyExt;
use hyper::Method;

use super::super::{ConnHandle, Net, LINGER, READ_CHUNK_BYTES};
use super::head::{Head, Headers};
use super::request::{self, Body};
use super::response::{fixed_headers, OutBody, Prepared, SHARD_HEADER};
use super::HttpShard;
use crate::runtime::supervisor::RestartIntensity;

/// Request bodies up to this are read whole by the lean path; longer ones
/// go to hyper, which streams them in within `max_message_bytes`.
pub(super) const LEAN_BODY_MAX_BYTES: usize = 64 * 1024;

/// Header fields the lean parser makes room for; a head with more (up to
/// `max_headers`) is served by hyper.
const LEAN_HEADERS_MAX: usize = 32;

/// A connection buffer larger than this is released once empty, so an idle
/// keep-alive connection holds at most this much.
const BUFFER_KEEP_BYTES: usize = 4 * 1024;

/// How the lean path left a connection.
pub(super) enum Ended<S> {
    Closed,
    /// Serve the rest with hyper, starting with the bytes already read.
    Handover(Rewind<S>),
}

/// A stream with bytes read ahead of it put back in front.
pub(super) struct Rewind<S> {
    ahead: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos < this.ahead.len() {
            let n = buf.len().min(this.ahead.len() - this.pos);
            buf[..n].copy_from_slice(&this.ahead[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.ahead.len() {
                this.ahead = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// A request head the lean path serves.
struct Request {
    head: Head,
    head_len: usize,
    body_len: usize,
    /// The client asked for `Connection: close`.
    close: bool,
}

enum Step {
    Partial,
    Lean(Request),
    Hyper,
}

/// Parses the head at the start of `buf`, if it is complete, and decides
/// which path serves it.
fn parse(buf: &[u8], max_headers: usize, max_head_bytes: usize, max_body: usize) -> Step {
    let mut slots = [httparse::EMPTY_HEADER; LEAN_HEADERS_MAX];
    let mut req = httparse::Request::new(&mut slots[..max_headers.min(LEAN_HEADERS_MAX)]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(_) => return Step::Hyper,
    };
    if head_len > max_head_bytes || req.version != Some(1) {
        return Step::Hyper;
    }
    let method = match req.method {
        Some("POST") => Method::POST,
        Some("GET") => Method::GET,
        Some("DELETE") => Method::DELETE,
        _ => return Step::Hyper,
    };
    let (mut body_len, mut close, mut bytes) = (None, false, 0);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        bytes += name.len() + h.value.len();
        if name.eq_ignore_ascii_case(b"content-length") {
            let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|_| digits)
                .and_then(|v| v.parse::<usize>().ok());
            match (body_len, n) {
                (None, Some(n)) => body_len = Some(n),
                _ => return Step::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Step::Hyper;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Step::Hyper;
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > max_body {
        return Step::Hyper;
    }
    let mut headers = Headers::with_capacity(req.headers.len(), bytes);
    for h in req.headers.iter() {
        headers.push(h.name.as_bytes(), h.value);
    }
    Step::Lean(Request {
        head: Head {
            method,
            target: req.path.unwrap_or_default().to_owned(),
            headers,
        },
        head_len,
        body_len,
        close,
    })
}

/// What an SSE response waits for.
enum Event {
    Frame(http_body::Frame<bytes::Bytes>),
    End,
    /// The client closed (or reset) the connection.
    Gone,
    /// The client sent bytes (a next request) while the stream runs.
    Pipelined,
}

/// Why the lean path stops serving a connection.
enum Stop {
    Close,
    Handover,
}

/// What waiting for bytes ended with.
enum Got {
    Data,
    Eof,
    /// Nothing buffered, and nothing arrived for `idle_timeout_ms`.
    Idle,
    /// The head or body in progress missed its deadline.
    Late,
    /// The shard drains and nothing is buffered.
    Shutdown,
}

struct Conn<'a, S> {
    net: &'a Net,
    handle: &'a ConnHandle,
    stream: S,
    buf: Vec<u8>,
    out: Vec<u8>,
    idle: Duration,
    /// Made when the connection first waits for a request, dropped (and
    /// so taken out of the reactor's timer map) while it streams a
    /// response, which may last hours.
    idle_timer: Option<glommio::timer::Timer>,
    /// When `idle_timer` is due; it is registered with the reactor when
    /// `idle_registered`.
    idle_deadline: Instant,
    idle_registered: bool,
    last_activity: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    /// Reads what is there into `buf`, through the shard's scratch buffer.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = self.net.scratch.borrow_mut();
        let read = &mut scratch.read[..READ_CHUNK_BYTES];
        match Pin::new(&mut self.stream).poll_read(cx, read) {
            Poll::Ready(Ok(n)) => {
                self.buf.extend_from_slice(&read[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Waits for more bytes. With nothing buffered the idle bound and the
    /// shard's drain apply; otherwise `deadline`'s timer (a head or body in
    /// progress).
    async fn more(&mut self, mut deadline: Option<&mut glommio::timer::Timer>) -> Got {
        std::future::poll_fn(|cx| {
            match self.poll_read_some(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Got::Eof),
                Poll::Ready(Ok(_)) => return Poll::Ready(Got::Data),
                Poll::Pending => {}
            }
            if let Some(t) = deadline.as_mut() {
                return Pin::new(t).poll(cx).map(|_| Got::Late);
            }
            self.handle.set_waker(cx.waker());
            if self.net.shutdown.is_raised() {
                return Poll::Ready(Got::Shutdown);
            }
            self.poll_idle(cx)
        })
        .await
    }

    /// The idle bound. The timer is registered with the reactor once per
    /// arming and re-armed only when it is due: every poll of a glommio
    /// timer re-inserts it into the reactor's timer map, which per request
    /// showed in the profile.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Got> {
        loop {
            let now = Instant::now();
            if self.idle_registered && now < self.idle_deadline {
                return Poll::Pending;
            }
            if now >= self.idle_deadline {
                let quiet = now.saturating_duration_since(self.last_activity);
                if quiet >= self.idle {
                    return Poll::Ready(Got::Idle);
                }
                let left = (self.idle - quiet).max(Duration::from_millis(10));
                self.idle_deadline = now + left;
                if let Some(t) = self.idle_timer.as_mut() {
                    t.reset(left);
                }
            }
            let due_in = self.idle_deadline.saturating_duration_since(now);
            let timer = self
                .idle_timer
                .get_or_insert_with(|| glommio::timer::Timer::new(due_in));
            self.idle_registered = Pin::new(timer).poll(cx).is_pending();
        }
    }

    /// Reads until a whole lean request is buffered; `Err` says how the
    /// connection ends instead.
    async fn next_request(&mut self, http: &Rc<HttpShard>) -> Result<Request, Stop> {
        let cfg = &http.cfg;
        let max_body = LEAN_BODY_MAX_BYTES.min(self.net.limits.max_message_bytes);
        let mut head_timer = None;
        let req = loop {
            if !self.buf.is_empty() {
                match parse(&self.buf, cfg.max_headers, cfg.max_head_bytes, max_body) {
                    Step::Lean(r) => break r,
                    Step::Hyper => return Err(Stop::Handover),
                    Step::Partial if self.buf.len() > cfg.max_head_bytes => {
                        return Err(Stop::Handover)
                    }
                    Step::Partial => {}
                }
                if head_timer.is_none() {
                    let t = Duration::from_millis(cfg.header_timeout_ms);
                    head_timer = Some(glommio::timer::Timer::new(t));
                }
            }
            match self.more(head_timer.as_mut()).await {
                Got::Data => {}
                Got::Eof | Got::Idle | Got::Late | Got::Shutdown => return Err(Stop::Close),
            }
        };
        let need = req.head_len + req.body_len;
        let mut body_timer = None;
        while self.buf.len() < need {
            if body_timer.is_none() {
                let t = Duration::from_millis(cfg.body_timeout_ms);
                body_timer = Some(glommio::timer::Timer::new(t));
            }
            match self.more(body_timer.as_mut()).await {
                Got::Data => {}
                Got::Late => {
                    // Boxed: rare, and inline it would size every
                    // connection's future.
                    Box::pin(self.respond_late(http)).await;
                    return Err(Stop::Close);
                }
                Got::Eof | Got::Idle | Got::Shutdown => return Err(Stop::Close),
            }
        }
        Ok(req)
    }

    /// 408 for a body that did not arrive in time; the connection then
    /// closes (the rest of the body may still come).
    async fn respond_late(&mut self, http: &Rc<HttpShard>) {
        let p = request::body_timed_out().prepare(http);
        let body = self.start_response(p, true);
        debug_assert!(matches!(body, OutBody::Full(None)));
        let _ = self.stream.write_all(&self.out).await;
    }

    /// Reads the next request, runs its handler and puts the response's
    /// head (and a whole body) in `out`; returns the body still to stream,
    /// if any, and whether the connection closes after the response.
    ///
    /// A separate future from the streaming that follows, so the request's
    /// and the response's locals take no room in a connection's future
    /// while it streams, which may last hours.
    async fn respond(
        &mut self,
        http: &Rc<HttpShard>,
        peer: &Peer,
        restarts: &Rc<RefCell<RestartIntensity>>,
    ) -> Result<(OutBody, bool), Stop> {
        let req = self.next_request(http).await?;
        let body = self.buf[req.head_len..req.head_len + req.body_len].to_vec();
        self.buf.drain(..req.head_len + req.body_len);
        if self.buf.is_empty() && self.buf.capacity() > BUFFER_KEEP_BYTES {
            self.buf = Vec::new();
        }
        // Boxed: the handler's future is as large as the deepest request
        // path, and inline it would size this connection's task for good,
        // including while it only streams or sits idle.
        let handler = super::supervised(
            http.clone(),
            req.head,
            Body::Read(body),
            peer,
            restarts.clone(),
        );
        let resp = Box::pin(handler).await;
        let asked_close = resp
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        let close = req.close || asked_close || self.net.shutdown.is_raised();
        let prepared = resp.prepare(http);
        Ok((self.start_response(prepared, close && !asked_close), close))
    }

    /// Puts the head of `p` in `out`, and its body if it is whole; returns
    /// what is left to write (an SSE stream, or `Full(None)`). `close` adds
    /// `Connection: close`.
    fn start_response(&mut self, p: Prepared, close: bool) -> OutBody {
        let Prepared {
            status,
            content_type,
            shard,
            headers,
            body,
        } = p;
        self.out.clear();
        write_head(&mut self.out, status, content_type, shard, &headers, close);
        match body {
            OutBody::Full(b) => {
                let b = b.unwrap_or_default();
                write_len(&mut self.out, b.len());
                self.out.extend_from_slice(&b);
                OutBody::Full(None)
            }
            sse @ OutBody::Sse(_) => {
                self.out
                    .extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                // A stream may stay open for hours with nothing to send:
                // it holds no read buffer until bytes arrive, and no idle
                // timer (the idle bound is for waits between requests).
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                self.idle_timer = None;
                self.idle_registered = false;
                sse
            }
        }
    }

    /// Writes what [`Self::start_response`] left in `out`, then the SSE
    /// stream if there is one; Err when the client is gone.
    async fn write_response(&mut self, body: &mut OutBody) -> Result<(), ()> {
        let result = match body {
            OutBody::Full(_) => self.stream.write_all(&self.out).await.map_err(drop),
            OutBody::Sse(_) => self.stream_events(body).await,
        };
        self.last_activity = Instant::now();
        result
    }

    /// An SSE body as chunks, each written as it comes. Reads meanwhile,
    /// so a client that goes away ends the stream (and cancels what feeds
    /// it); a request pipelined behind the stream stays buffered.
    async fn stream_events(&mut self, body: &mut OutBody) -> Result<(), ()> {
        let mut watching = true;
        loop {
            if !self.out.is_empty() {
                self.stream.write_all(&self.out).await.map_err(drop)?;
                // Released rather than cleared: between events the stream
                // holds no buffer; one allocation per event is small
                // against the write it goes with.
                self.out = Vec::new();
            }
            let next = {
                let frame = async {
                    match body.frame().await {
                        Some(Ok(f)) => Event::Frame(f),
                        None => Event::End,
                        Some(Err(never)) => match never {},
                    }
                };
                let gone = async {
                    if !watching {
                        return std::future::pending().await;
                    }
                    match std::future::poll_fn(|cx| self.poll_read_some(cx)).await {
                        Ok(0) | Err(_) => Event::Gone,
                        Ok(_) => Event::Pipelined,
                    }
                };
                frame.or(gone).await
            };
            match next {
                Event::Gone => return Err(()),
                // Bytes of a next request: kept; stop watching.
                Event::Pipelined => watching = false,
                Event::Frame(frame) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            write!(self.out, "{:x}\r\n", data.len()).expect("writing to a Vec");
                            self.out.extend_from_slice(&data);
                            self.out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                Event::End => {
                    self.out.extend_from_slice(b"0\r\n\r\n");
                    return self.stream.write_all(&self.out).await.map_err(drop);
                }
            }
        }
    }

    /// Half-closes; while the shard drains, what the client sent after its
    /// last answer is read and dropped until it closes too or [`LINGER`]
    /// passes, so it sees the end of the stream rather than a reset.
    async fn finish(mut self) {
        let _ = self.stream.close().await;
        if !self.net.shutdown.is_raised() {
            return;
        }
        let linger = async {
            // On the heap: an array here would be part of every
            // connection's future for its whole life, draining or not.
            let mut scratch = vec![0u8; 1024];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        linger
            .or(async {
                glommio::timer::sleep(LINGER).await;
            })
            .await;
    }
}

/// Serves `stream` on the lean path until it closes or a request needs
/// hyper.
pub(super) async fn serve<S>(
    http: &Rc<HttpShard>,
    stream: S,
    handle: &ConnHandle,
    peer: &Peer,
    restarts: &Rc<RefCell<RestartIntensity>>,
) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = Duration::from_millis(http.cfg.idle_timeout_ms);
    let mut c = Conn {
        net: &http.net,
        handle,
        stream,
        buf: Vec::new(),
        out: Vec::new(),
        idle,
        idle_timer: None,
        idle_deadline: Instant::now() + idle,
        idle_registered: false,
        last_activity: Instant::now(),
    };
    loop {
        let (mut body, close) = match c.respond(http, peer, restarts).await {
            Ok(r) => r,
            Err(Stop::Close) => {
                // Boxed: rare, and inline it would size every
                // connection's future.
                Box::pin(c.finish()).await;
                return Ended::Closed;
            }
            Err(Stop::Handover) => {
                return Ended::Handover(Rewind {
                    ahead: std::mem::take(&mut c.buf),
                    pos: 0,
                    inner: c.stream,
                })
            }
        };
        let written = c.write_response(&mut body).await;
        drop(body);
        if c.out.capacity() > BUFFER_KEEP_BYTES {
            c.out = Vec::new();
        }
        if written.is_err() || close {
            Box::pin(c.finish()).await;
            return Ended::Closed;
        }
    }
}

/// The status line and headers, up to the framing header. `close` adds
/// `Connection: close`.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&'static str>,
    shard: usize,
    headers: &[(String, String)],
    close: bool,
) {
    let code =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut field = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in fixed_headers(content_type) {
        field(name, value.as_bytes());
    }
    let mut digits = itoa::Buffer::new();
    field(SHARD_HEADER, digits.format(shard).as_bytes());
    for (name, value) in headers {
        if valid_name(name) && valid_value(value) {
            field(name, value.as_bytes());
        }
    }
    if close {
        field("connection", b"close");
    }
    DATE.with(|d| field("date", d.borrow_mut().now()));
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// An RFC 9110 token, as `HeaderName` accepts (the hyper path drops other
/// names too).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What `HeaderValue` accepts: no control characters but tab.
fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// The `Date` header, formatted once per second per thread.
struct DateCache {
    second: u64,
    text: String,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache {
            second: 0,
            text: String::new(),
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(raw: &str) -> Step {
        parse(raw.as_bytes(), 100, 64 * 1024, 1024)
    }

    #[test]
    fn the_common_shape_is_lean_and_everything_else_goes_to_hyper() {
        let post = "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}";
        match step(post) {
            Step::Lean(r) => {
                assert_eq!(r.head.method, Method::POST);
                assert_eq!(r.head.target, "/mcp");
                assert_eq!(r.head.headers.get("host"), Some("a"));
                assert_eq!((r.body_len, r.close), (2, false));
                assert_eq!(r.head_len, post.len() - 2);
            }
            _ => panic!("not lean"),
        }
        let close = "GET /mcp HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(matches!(
            step(close),
            Step::Lean(Request {
                close: true,
                body_len: 0,
                ..
            })
        ));
        assert!(matches!(
            step("POST /mcp HTTP/1.1\r\nHost: a\r\n"),
            Step::Partial
        ));
        for hyper in [
            "POST /mcp HTTP/1.0\r\n\r\n",
            "PUT /mcp HTTP/1.1\r\n\r\n",
            "OPTIONS /mcp HTTP/1.1\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /mcp HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nContent-Length: 4096\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(step(hyper), Step::Hyper), "{hyper}");
        }
    }

    #[test]
    fn heads_over_the_bounds_go_to_hyper() {
        let mut many = String::from("POST /mcp HTTP/1.1\r\n");
        for i in 0..LEAN_HEADERS_MAX + 1 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(step(&many), Step::Hyper));
        let long = format!("POST /mcp HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(100));
        assert!(matches!(parse(long.as_bytes(), 100, 64, 0), Step::Hyper));
    }

    #[test]
    fn the_head_is_what_hyper_would_write() {
        let mut out = Vec::new();
        let headers = vec![
            ("mcp-session-id".to_owned(), "abc".to_owned()),
            ("bad name".to_owned(), "x".to_owned()),
            ("x-bad-value".to_owned(), "a\r\nb".to_owned()),
        ];
        write_head(&mut out, 200, Some("text/event-stream"), 3, &headers, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nx-tessera-shard: 3\r\nmcp-session-id: abc\r\nconnection: close\r\ndate: "), "{text}");
        assert!(!text.contains("bad"), "{text}");
        assert!(text.ends_with(" GMT\r\n"), "{text}");
    }
}
