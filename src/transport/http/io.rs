//! Glue between glommio and hyper, private to the HTTP transport: hyper's
//! HTTP/1 state machine drives a glommio stream through [`HyperIo`], and
//! sleeps on glommio timers through [`head_timer`].
//!
//! hyper requires its timer and sleeps to be `Send + Sync`, but an HTTP/1
//! connection lives in one task of one executor, and so do the `Rc`s and
//! glommio timers behind them. They are wrapped in [`ThreadBound`], which
//! checks the thread at every use, so no `unsafe` is needed here and nothing
//! outside this module can even name these types.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use hyper::rt::ReadBufCursor;

use super::super::{Net, LINGER, READ_CHUNK_BYTES};
use crate::runtime::local::ThreadBound;

/// A glommio stream as hyper I/O. Reads go through the shard's scratch buffer
/// (glommio reads into initialised memory; hyper hands out uninitialised
/// space), and every transfer stamps `activity` for the idle timeout.
pub(super) struct HyperIo<S> {
    stream: S,
    net: Rc<Net>,
    clock: Rc<ConnClock>,
    /// Closing while the shard drains: the end of [`LINGER`].
    linger: Option<glommio::timer::Timer>,
}

/// What a connection's timers need to know about its traffic.
#[derive(Debug)]
pub(super) struct ConnClock {
    /// Last time bytes moved in either direction.
    pub activity: Cell<Instant>,
    /// Reads that returned data, ever.
    reads: Cell<u64>,
}

impl ConnClock {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            activity: Cell::new(Instant::now()),
            reads: Cell::new(0),
        })
    }
}

impl<S> HyperIo<S> {
    pub fn new(stream: S, net: Rc<Net>, clock: Rc<ConnClock>) -> Self {
        Self {
            stream,
            net,
            clock,
            linger: None,
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(READ_CHUNK_BYTES);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let net = this.net.clone();
        let mut scratch = net.scratch.borrow_mut();
        match Pin::new(&mut this.stream).poll_read(cx, &mut scratch.read[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&scratch.read[..n]);
                this.clock.activity.set(Instant::now());
                if n > 0 {
                    this.clock.reads.set(this.clock.reads.get() + 1);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.activity.set(Instant::now());
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Half-closes. While the shard drains, the connection then lingers:
    /// what the client sent after its last answer (a request racing the
    /// close of a keep-alive connection) is read and dropped until it
    /// closes too or [`LINGER`] passes, so it sees the end of the stream,
    /// not a reset, and sends that request again elsewhere.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            match Pin::new(&mut this.stream).poll_close(cx) {
                Poll::Ready(Ok(())) if this.net.shutdown.is_raised() => {
                    this.linger = Some(glommio::timer::Timer::new(LINGER));
                }
                other => return other,
            }
        }
        let net = this.net.clone();
        let mut scratch = net.scratch.borrow_mut();
        loop {
            match Pin::new(&mut this.stream).poll_read(cx, &mut scratch.read[..READ_CHUNK_BYTES]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        let timer = this.linger.as_mut().expect("set above");
        Pin::new(timer).poll(cx).map(|_| Ok(()))
    }
}

/// hyper's timer for one connection (used only for the request-head
/// timeout), on glommio's timer wheel.
pub(super) fn head_timer(clock: &Rc<ConnClock>) -> HeadTimer {
    HeadTimer {
        clock: ThreadBound::new(clock.clone()),
    }
}

/// hyper arms this timer whenever it waits for a head, including while a
/// keep-alive connection sits idle; counting from there would make it an
/// idle timeout. So a sleep starts counting only when the first bytes arrive
/// after it was armed: it bounds how long a head may take to arrive once it
/// has begun (slowloris), and idleness is left to the connection's idle
/// timeout.
pub(super) struct HeadTimer {
    clock: ThreadBound<Rc<ConnClock>>,
}

impl Clone for HeadTimer {
    fn clone(&self) -> Self {
        head_timer(self.clock.get())
    }
}

/// One sleep of a [`HeadTimer`].
struct HeadSleep(ThreadBound<Sleeping>);

struct Sleeping {
    clock: Rc<ConnClock>,
    reads_at_arm: u64,
    duration: Duration,
    timer: Option<glommio::timer::Timer>,
}

impl Future for HeadSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = self.get_mut().0.get_mut();
        if s.timer.is_none() {
            if s.clock.reads.get() == s.reads_at_arm {
                // No byte of a new head yet; hyper polls again after every read.
                return Poll::Pending;
            }
            s.timer = Some(glommio::timer::Timer::new(s.duration));
        }
        let timer = s.timer.as_mut().expect("started above");
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let clock = self.clock.get().clone();
        Box::pin(HeadSleep(ThreadBound::new(Sleeping {
            reads_at_arm: clock.reads.get(),
            clock,
            duration,
            timer: None,
        })))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}
