//! Glue between glommio and hyper: hyper's HTTP/1 state machine drives a
//! glommio stream through this adapter, and sleeps on glommio timers.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use hyper::rt::ReadBufCursor;

use crate::runtime::shard::{Shard, READ_CHUNK_BYTES};

/// A glommio stream as hyper I/O. Reads go through the shard's scratch buffer
/// (glommio reads into initialised memory; hyper hands out uninitialised
/// space), and every transfer stamps `activity` for the idle timeout.
pub struct HyperIo<S> {
    stream: S,
    shard: Rc<Shard>,
    clock: Rc<ConnClock>,
}

/// What a connection's timers need to know about its traffic.
#[derive(Debug)]
pub struct ConnClock {
    /// Last time bytes moved in either direction.
    pub activity: Cell<Instant>,
    /// Reads that returned data, ever.
    pub reads: Cell<u64>,
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
    pub fn new(stream: S, shard: Rc<Shard>, clock: Rc<ConnClock>) -> Self {
        Self {
            stream,
            shard,
            clock,
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
        let shard = this.shard.clone();
        let mut scratch = shard.scratch.borrow_mut();
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

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
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

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// hyper's timer, used only for the request-head timeout, on glommio's
/// timer wheel. hyper arms it whenever it waits for a head, including while
/// a keep-alive connection sits idle; counting from there would make it an
/// idle timeout. So a sleep from this timer starts counting only when the
/// first bytes arrive after it was armed: it bounds how long a head may take
/// to arrive once it has begun (slowloris), and idleness is left to the
/// connection's idle timeout.
#[derive(Clone, Debug)]
pub struct HeadTimer {
    clock: Rc<ConnClock>,
}

impl HeadTimer {
    pub fn new(clock: Rc<ConnClock>) -> Self {
        Self { clock }
    }
}

struct HeadSleep {
    clock: Rc<ConnClock>,
    reads_at_arm: u64,
    duration: Duration,
    timer: Option<glommio::timer::Timer>,
}

// SAFETY: hyper's `Sleep` (and `Timer`) must be Send + Sync, but an HTTP/1
// connection has no executor to move work to: timers and sleeps are created,
// polled and dropped only inside the connection future, which runs as one
// task of one glommio executor and never leaves its thread (glommio tasks
// are not Send). The `Rc`s inside are never touched from another thread.
unsafe impl Send for HeadSleep {}
// SAFETY: as above; the value is never shared between threads.
unsafe impl Sync for HeadSleep {}
// SAFETY: as above.
unsafe impl Send for HeadTimer {}
// SAFETY: as above.
unsafe impl Sync for HeadTimer {}

impl Future for HeadSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.is_none() {
            if self.clock.reads.get() == self.reads_at_arm {
                // No byte of a new head yet; hyper polls again after every read.
                return Poll::Pending;
            }
            let d = self.duration;
            self.timer = Some(glommio::timer::Timer::new(d));
        }
        let timer = self.timer.as_mut().expect("started above");
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            clock: self.clock.clone(),
            reads_at_arm: self.clock.reads.get(),
            duration,
            timer: None,
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}
