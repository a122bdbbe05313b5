//! The NDJSON connection driver shared by TCP and stdio.
//!
//! One task per connection, written as a hand-rolled poll loop so that one
//! task can wait on three things at once without dropping any in-flight I/O:
//! the socket becoming readable, the socket becoming writable, and async
//! handlers finishing. Per read it parses *every* complete line, appends all
//! responses to one buffer and writes that buffer once.
//!
//! Memory: reads land in the shard's scratch buffer, shared by every
//! connection on the core. A connection keeps bytes of its own only for a
//! line split across reads (`partial`) and for output the peer has not
//! accepted yet (`backlog`); both are released once they drain, so an idle
//! connection holds no buffers.
//!
//! Bounds: a line longer than `max_message_bytes` is answered with -32600 and
//! the rest of it is skipped; reading pauses while `max_inflight_per_conn`
//! handlers are running or `max_output_buffer_bytes` of output is waiting; a
//! TCP connection that completes no message for `idle_timeout_ms` while
//! nothing of it is in flight is closed (`idle_sweep`).
//!
//! Supervision: the connection's poll runs under `catch_unwind`. A panic in
//! the handler itself (request dispatch has its own catch and costs one
//! request) restarts it on the same socket with everything it holds: the
//! session, its subscriptions and pending server-to-client requests, async
//! handlers still running, and the input not yet handled (the rest of the
//! read that was being split into lines is re-queued). Responses already
//! produced are kept and written, so nothing is answered twice or dropped.
//! More than `max_restarts` panics within `restart_period_ms` close the
//! connection instead, after every request it read has been answered.

use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt;
use memchr::memchr;

use super::{ConnHandle, Net, READ_CHUNK_BYTES};
use crate::protocol::{jsonrpc, PARSE_PADDING};
use crate::runtime::supervisor::RestartIntensity;
use crate::server::session::{Resume, Session};
use crate::server::{Pending, SharedNotifier};

/// Reads served in one poll before the task yields to its neighbours, so a
/// client that keeps its socket full cannot starve the rest of the core.
const READS_PER_POLL: usize = 16;

/// A buffer grown past this by a burst is freed once empty, not kept.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

use super::LINGER;

/// Which transport a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP client: idle timeout applies.
    Tcp,
    /// The one stdio client: may stay quiet for as long as it likes.
    Stdio,
}

/// Serves one client until it closes, the I/O fails, or the shard drains.
/// `cert_name` is the subject common name of the client certificate its TLS
/// handshake verified (the principal under `--auth cert`).
pub(crate) async fn serve<S>(
    stream: S,
    net: Rc<Net>,
    kind: Kind,
    cert_name: Option<Rc<str>>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(stream, net, kind, None, None, cert_name).await
}

/// Serves the stdio client: like `serve`, but the session can start from
/// `resume` (the state it had before shard 0 restarted), and every change
/// to that state is handed to `report` so the next restart can resume too.
pub(crate) async fn serve_stdio<S>(
    stream: S,
    net: Rc<Net>,
    resume: Option<Resume>,
    report: Box<dyn Fn(Resume)>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(stream, net, Kind::Stdio, resume, Some(report), None).await
}

async fn serve_with<S>(
    stream: S,
    net: Rc<Net>,
    kind: Kind,
    resume: Option<Resume>,
    report: Option<Box<dyn Fn(Resume)>>,
    cert_name: Option<Rc<str>>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let core = net.core.clone();
    let handle = Rc::new(ConnHandle::new(&net));
    handle.idle_tracked.set(kind == Kind::Tcp);
    let notifier: SharedNotifier = handle.clone();
    let slot = net.conns.register(handle.clone());
    core.metrics.borrow_mut().counters.connections_opened += 1;
    let mut session = Session::new(&core, Some(notifier.clone()));
    session.limit_rate();
    if core.auth_on() {
        session.require_token();
        if let Err(why) = session.authenticate_cert(&core, cert_name.as_deref()) {
            log::info!("shard {}: connection not authenticated: {why}", core.id);
        }
    }
    match kind {
        Kind::Tcp => session.set_label(&format!("tcp-{}-{}", core.id, session.scope())),
        _ => session.set_label("stdio"),
    }
    if let Some(r) = resume.clone() {
        session.resume(&core, r);
    }
    let mut conn = Conn {
        stream,
        net: net.clone(),
        session,
        notifier,
        handle,
        partial: Vec::new(),
        discarding: false,
        backlog: Vec::new(),
        backlog_pos: 0,
        read_closed: false,
        paused: false,
        linger: None,
        chunk_len: None,
        consumed: 0,
        replay: VecDeque::new(),
        restarts: RestartIntensity::default(),
        gave_up: false,
        report,
        reported: resume,
        clock: Instant::now(),
    };
    let r = std::future::poll_fn(|cx| loop {
        match std::panic::catch_unwind(AssertUnwindSafe(|| conn.poll(cx))) {
            Ok(p) => return p,
            Err(_) => {
                if !conn.recover() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    })
    .await;
    conn.session.close(&core);
    net.conns.unregister(slot);
    core.metrics.borrow_mut().counters.connections_closed += 1;
    match r {
        Err(e) if is_disconnect(&e) => Ok(()),
        r => r,
    }
}

/// Closes TCP connections that complete no message for `idle_timeout_ms`
/// while nothing of theirs is in flight. One task per shard looks at every
/// connection a few times per timeout, so the request path pays one counter
/// increment per message and no timer.
pub(crate) async fn idle_sweep(net: Rc<Net>) {
    let idle = net.limits.idle_timeout();
    let period = (idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let sweeps_max = (idle.as_nanos() / period.as_nanos()).max(1) as u32;
    loop {
        if net.sleep_unless_shutdown(period).await {
            return;
        }
        for h in net.conns.handles() {
            if !h.idle_tracked.get() || h.expired.get() {
                continue;
            }
            let msgs = h.messages.get();
            if msgs != h.seen_messages.get() || h.inflight.get() > 0 {
                h.seen_messages.set(msgs);
                h.quiet_sweeps.set(0);
                continue;
            }
            let quiet = h.quiet_sweeps.get() + 1;
            h.quiet_sweeps.set(quiet);
            if quiet >= sweeps_max {
                h.expired.set(true);
                h.wake();
            }
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

struct Conn<S> {
    stream: S,
    net: Rc<Net>,
    session: Session,
    /// The connection as a notification target (the same `ConnHandle`).
    notifier: SharedNotifier,
    handle: Rc<ConnHandle>,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Skipping the rest of an oversize line.
    discarding: bool,
    /// Output the peer has not accepted yet.
    backlog: Vec<u8>,
    backlog_pos: usize,
    /// No more requests will be read (EOF, or the shard is draining).
    read_closed: bool,
    /// Reading is paused by a bound; counted once per pause.
    paused: bool,
    /// Set once a draining connection has sent its FIN.
    linger: Option<glommio::timer::Timer>,
    /// While a read is being split into lines: its length in the shard's
    /// read buffer, and how much of it is handled (`consumed`). What a crash
    /// leaves between the two is re-queued by `recover`.
    chunk_len: Option<usize>,
    consumed: usize,
    /// Complete lines (each followed by parser padding) re-queued after a
    /// restart, handled before anything new is read.
    replay: VecDeque<Vec<u8>>,
    restarts: RestartIntensity,
    /// Stdio only: where session changes go, and the last one sent.
    report: Option<Box<dyn Fn(Resume)>>,
    reported: Option<Resume>,
    /// The restart intensity was exceeded: answer what was read, then close.
    gave_up: bool,
    /// When the previous message of the current read was answered: each
    /// message is timed from there (one clock read per message).
    clock: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.handle.set_waker(cx.waker());
        if self.linger.is_some() {
            return self.poll_linger(cx);
        }
        let limits = &self.net.limits;
        let (max_inflight, max_out) =
            (limits.max_inflight_per_conn, limits.max_output_buffer_bytes);
        let mut reads = 0;
        if !self.replay.is_empty() {
            let net = self.net.clone();
            let mut scratch = net.scratch.borrow_mut();
            self.clock = Instant::now();
            while let Some(mut line) = self.replay.pop_front() {
                let len = line.len() - PARSE_PADDING;
                self.handle_line(&mut line, len, &mut scratch.write);
            }
            if let Poll::Ready(Err(e)) = self.write_batch(cx, &mut scratch.write) {
                return Poll::Ready(Err(e));
            }
        }
        if self.handle.expired.get() && !self.read_closed {
            self.read_closed = true;
            self.net
                .core
                .metrics
                .borrow_mut()
                .counters
                .connections_idle_closed += 1;
        }
        loop {
            self.take_completed();
            if let Poll::Ready(Err(e)) = self.flush_backlog(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.read_closed && self.net.shutdown.is_raised() {
                self.read_closed = true;
            }
            let inflight = self.handle.inflight.get();
            if self.read_closed {
                if inflight > 0 || !self.backlog.is_empty() {
                    return Poll::Pending;
                }
                if self.net.shutdown.is_raised() {
                    return self.begin_linger(cx);
                }
                return Poll::Ready(Ok(()));
            }
            if inflight >= max_inflight || self.backlog.len() - self.backlog_pos >= max_out {
                if !self.paused {
                    self.paused = true;
                    self.net
                        .core
                        .metrics
                        .borrow_mut()
                        .counters
                        .backpressure_pauses += 1;
                }
                return Poll::Pending;
            }
            self.paused = false;
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;

            let net = self.net.clone();
            let mut scratch = net.scratch.borrow_mut();
            let scratch = &mut *scratch;
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch.read[..READ_CHUNK_BYTES]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    self.read_closed = true;
                    self.finish_partial(&mut scratch.write);
                    // Nobody can answer server-to-client requests any more,
                    // and streams that live as long as the client end.
                    self.session.input_closed();
                }
                Poll::Ready(Ok(n)) => {
                    self.chunk_len = Some(n);
                    self.consumed = 0;
                    self.clock = Instant::now();
                    let _log = self.session.log_scope();
                    self.on_bytes(&mut scratch.read, n, &mut scratch.write);
                    self.chunk_len = None;
                    self.report_session();
                }
            }
            if let Poll::Ready(Err(e)) = self.write_batch(cx, &mut scratch.write) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn report_session(&mut self) {
        let Some(report) = &self.report else {
            return;
        };
        if let Some(now) = self.session.resume_state() {
            if self.reported.as_ref() != Some(&now) {
                self.reported = Some(now.clone());
                report(now);
            }
        }
    }

    /// Moves responses finished by async handlers into the output backlog.
    fn take_completed(&mut self) {
        let mut ready = self.handle.ready.borrow_mut();
        if ready.is_empty() {
            return;
        }
        if self.backlog.is_empty() {
            std::mem::swap(&mut self.backlog, &mut *ready);
            self.backlog_pos = 0;
        } else {
            self.backlog.extend_from_slice(&ready);
            ready.clear();
        }
    }

    /// Writes as much backlog as the socket takes. Ready(Ok) when empty.
    fn flush_backlog(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.backlog_pos < self.backlog.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.backlog[self.backlog_pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.backlog_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.backlog.capacity() > KEEP_BUFFER_BYTES {
            self.backlog = Vec::new();
        } else {
            self.backlog.clear();
        }
        self.backlog_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes one read's responses: straight from the shard's scratch when
    /// nothing is queued ahead of them, otherwise behind the backlog.
    fn write_batch(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<io::Result<()>> {
        if out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut pos = 0;
        if self.backlog.is_empty() {
            while pos < out.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &out[pos..]) {
                    Poll::Ready(Ok(0)) => {
                        out.clear();
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => pos += n,
                    Poll::Ready(Err(e)) => {
                        out.clear();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => break,
                }
            }
        }
        if pos < out.len() {
            self.backlog.extend_from_slice(&out[pos..]);
        }
        out.clear();
        Poll::Ready(Ok(()))
    }

    /// Splits freshly read bytes into lines and handles each complete one.
    /// `data[..n]` holds the bytes; `data` extends `PARSE_PADDING` further.
    fn on_bytes(&mut self, data: &mut [u8], n: usize, out: &mut Vec<u8>) {
        let max = self.net.limits.max_message_bytes;
        let mut start = 0;
        if self.discarding || !self.partial.is_empty() {
            let Some(i) = memchr(b'\n', &data[..n]) else {
                if !self.discarding {
                    if self.partial.len() + n > max {
                        self.oversize(out);
                    } else {
                        self.partial.extend_from_slice(&data[..n]);
                    }
                }
                return;
            };
            if self.discarding {
                self.discarding = false;
            } else if self.partial.len() + i > max {
                self.oversize(out);
                self.discarding = false;
            } else {
                self.partial.extend_from_slice(&data[..i]);
                self.handle_partial(out);
            }
            start = i + 1;
            self.consumed = start;
        }
        while start < n {
            match memchr(b'\n', &data[start..n]) {
                Some(len) => {
                    if len > max {
                        self.oversize(out);
                        self.discarding = false;
                    } else {
                        self.handle_line(&mut data[start..], len, out);
                    }
                    start += len + 1;
                    self.consumed = start;
                    if self.net.chaos_conn_panic() {
                        panic!("chaos: connection handler panic (--chaos-conn-panic-rate)");
                    }
                }
                None => {
                    if n - start > max {
                        self.oversize(out);
                    } else {
                        self.partial.extend_from_slice(&data[start..n]);
                    }
                    self.consumed = n;
                    break;
                }
            }
        }
    }

    /// Called right after the connection handler panicked, before any other
    /// task runs: saves what the shard's shared buffers hold for this
    /// connection and decides whether to restart. `false`: close now.
    fn recover(&mut self) -> bool {
        let net = self.net.clone();
        let mut scratch = net.scratch.borrow_mut();
        // Responses produced before the panic belong to this client; the
        // next connection to run would otherwise write them.
        self.backlog.extend_from_slice(&scratch.write);
        scratch.write.clear();
        if let Some(n) = self.chunk_len.take() {
            let mut rest = Vec::new();
            if self.consumed == 0 && !self.discarding {
                rest.append(&mut self.partial);
            }
            rest.extend_from_slice(&scratch.read[self.consumed.min(n)..n]);
            let mut lines = rest.split(|&b| b == b'\n').peekable();
            while let Some(line) = lines.next() {
                if lines.peek().is_none() {
                    // No newline yet: the start of the next line.
                    self.partial.extend_from_slice(line);
                    break;
                }
                let mut owned = Vec::with_capacity(line.len() + PARSE_PADDING);
                owned.extend_from_slice(line);
                owned.resize(line.len() + PARSE_PADDING, 0);
                self.replay.push_back(owned);
            }
        }
        drop(scratch);
        let limits = &net.limits;
        let mut m = net.core.metrics.borrow_mut();
        if !self.gave_up
            && self
                .restarts
                .allow(Instant::now(), limits.max_restarts, limits.restart_period())
        {
            m.counters.connection_restarts += 1;
            drop(m);
            log::debug!(
                "shard {}: connection handler panicked; restarted on the same socket ({} restart(s) in the last {} ms)",
                net.core.id,
                self.restarts.recent(),
                limits.restart_period_ms
            );
            return true;
        }
        if self.gave_up {
            // Panicked again while closing: stop here.
            return false;
        }
        m.counters.connections_given_up += 1;
        drop(m);
        log::warn!(
            "shard {}: connection handler panicked more than {} times in {} ms; closing the connection",
            net.core.id,
            limits.max_restarts,
            limits.restart_period_ms
        );
        self.give_up();
        true
    }

    /// Answers every request the connection read and has not answered with
    /// an error, then lets it close (`read_closed`).
    fn give_up(&mut self) {
        self.gave_up = true;
        self.read_closed = true;
        const MSG: &str =
            "Internal error: the connection is being closed after repeated internal failures";
        let core = self.net.core.clone();
        let mut out = Vec::new();
        for mut line in std::mem::take(&mut self.replay) {
            let len = line.len() - PARSE_PADDING;
            let mut parser = core.parser.borrow_mut();
            // Each line gets what it would have got, except that requests
            // are refused instead of served.
            parser.parse(&mut line, len, |parsed| match parsed {
                Err(e) => {
                    let msg = format!("Parse error: {e}");
                    jsonrpc::write_error(&mut out, &jsonrpc::Id::Null, jsonrpc::PARSE_ERROR, &msg);
                }
                Ok(root) => match jsonrpc::classify(root) {
                    Ok(jsonrpc::Message::Request { id, .. }) => {
                        jsonrpc::write_error(&mut out, &id, jsonrpc::INTERNAL_ERROR, MSG)
                    }
                    Ok(_) => {}
                    Err(inv) => jsonrpc::write_error(&mut out, &inv.id, inv.code, inv.message),
                },
            });
        }
        for id in self.session.inflight().ids() {
            jsonrpc::write_error(
                &mut out,
                &jsonrpc::Id::Encoded(&id),
                jsonrpc::INTERNAL_ERROR,
                MSG,
            );
        }
        // Their tasks end without answering: the error above is their answer.
        self.session.inflight().cancel_all();
        self.partial.clear();
        self.backlog.extend_from_slice(&out);
    }

    /// At EOF a final line without its newline is still a message.
    fn finish_partial(&mut self, out: &mut Vec<u8>) {
        if !self.discarding && !self.partial.is_empty() {
            self.handle_partial(out);
        }
        self.discarding = false;
    }

    fn handle_partial(&mut self, out: &mut Vec<u8>) {
        let mut line = std::mem::take(&mut self.partial);
        let len = line.len();
        line.resize(len + PARSE_PADDING, 0);
        self.handle_line(&mut line, len, out);
        if line.capacity() <= KEEP_BUFFER_BYTES {
            line.clear();
            self.partial = line;
        }
    }

    /// Answers an oversize line and starts skipping the rest of it.
    fn oversize(&mut self, out: &mut Vec<u8>) {
        let max = self.net.limits.max_message_bytes;
        let msg =
            format!("message too large: lines are limited to {max} bytes (max-message-bytes)");
        jsonrpc::write_error(out, &jsonrpc::Id::Null, jsonrpc::INVALID_REQUEST, &msg);
        let mut m = self.net.core.metrics.borrow_mut();
        m.counters.oversize_messages += 1;
        m.record_error(crate::metrics::MethodKind::Invalid);
        self.partial = Vec::new();
        self.discarding = true;
    }

    fn handle_line(&mut self, buf: &mut [u8], mut len: usize, out: &mut Vec<u8>) {
        self.handle.messages.set(self.handle.messages.get() + 1);
        if len > 0 && buf[len - 1] == b'\r' {
            len -= 1;
        }
        if len == 0
            || (buf[0].is_ascii_whitespace() && buf[..len].iter().all(u8::is_ascii_whitespace))
        {
            return;
        }
        if let Some(pending) = self.session.handle_message(
            &self.net.core,
            buf,
            len,
            out,
            Some(&self.notifier),
            &mut self.clock,
        ) {
            self.spawn_pending(pending);
        }
    }

    /// Runs a deferred response on this core. Counted in `inflight` (so
    /// the connection waits for it before closing, and stops reading at
    /// `max_inflight_per_conn`) unless it is a stream that lives as long as
    /// the client (a listen stream). A cancelled request's task is dropped
    /// without writing anything: cancelled requests get no response.
    fn spawn_pending(&self, pending: Pending) {
        struct Slot {
            handle: Rc<ConnHandle>,
            counted: bool,
        }
        impl Drop for Slot {
            fn drop(&mut self) {
                if self.counted {
                    self.handle.finish_one();
                }
            }
        }
        let counted = !pending.long_lived;
        if counted {
            self.handle.inflight.set(self.handle.inflight.get() + 1);
        }
        let slot = Slot {
            handle: self.handle.clone(),
            counted,
        };
        let fut = pending.fut;
        let task = glommio::spawn_local(async move {
            let slot = slot;
            let answer = fut.await;
            slot.handle.respond(&answer.bytes);
        })
        .detach();
        if let Some(id) = pending.id {
            self.session.inflight().attach(&id, task);
        }
    }

    /// Sends FIN, then reads and drops whatever the client still sends until
    /// it closes or `LINGER` passes.
    fn begin_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Half-close cannot block; an error only means the peer is gone.
        if let Poll::Ready(Err(_)) = Pin::new(&mut self.stream).poll_close(cx) {
            return Poll::Ready(Ok(()));
        }
        self.linger = Some(glommio::timer::Timer::new(LINGER));
        self.poll_linger(cx)
    }

    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let net = self.net.clone();
        let mut scratch = net.scratch.borrow_mut();
        loop {
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch.read[..READ_CHUNK_BYTES]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        match self.linger.as_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(_)) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}
