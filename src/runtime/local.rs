//! Single-threaded synchronisation primitives for code inside one shard.
//!
//! Everything here is `!Send` and uses `Rc`/`Cell`: a shard's tasks all run on
//! one thread, so atomics and locks would only cost cycles. The one exception
//! is [`ThreadBound`], for APIs that demand `Send` of values that never leave
//! their thread: it checks, at every access, that they really do not.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// Sending half of a one-shot channel between tasks of one shard.
pub struct OneshotSender<T>(Rc<RefCell<Slot<T>>>);
/// Receiving half; resolves to `None` if the sender was dropped unsent.
pub struct OneshotReceiver<T>(Rc<RefCell<Slot<T>>>);

pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Rc::new(RefCell::new(Slot {
        value: None,
        waker: None,
        sender_gone: false,
    }));
    (OneshotSender(slot.clone()), OneshotReceiver(slot))
}

impl<T> OneshotSender<T> {
    pub fn send(self, value: T) {
        let waker = {
            let mut s = self.0.borrow_mut();
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.borrow_mut();
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.0.borrow_mut();
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.sender_gone {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A flag that tasks can wait on; once raised it stays raised. Used for the
/// shard's shutdown so accept loops and idle connections notice at once.
#[derive(Default)]
pub struct Flag {
    raised: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Flag {
    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Lowers the flag again, for flags used as a repeatable kick.
    pub fn lower(&self) {
        self.raised.set(false);
    }

    pub fn raise(&self) {
        self.raised.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Ready once the flag is raised; otherwise registers the task to wake.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.get() {
            return Poll::Ready(());
        }
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Resolves once the flag is raised.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.raised.get() {
                return Poll::Ready(());
            }
            let mut w = self.waiters.borrow_mut();
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// Why [`Pipe::push`] refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// `capacity` items are waiting for a slow consumer.
    Full,
    /// The consumer is gone, or the pipe was closed.
    Closed,
}

/// A bounded queue from any number of producers to one consumer task of the
/// same shard. Used for SSE response bodies and cross-shard relays: the
/// producer never waits, it learns the consumer is slow (`Full`) or gone
/// (`Closed`) and decides what to do.
pub struct Pipe<T> {
    queue: RefCell<VecDeque<T>>,
    capacity: usize,
    closed: Cell<bool>,
    consumer_gone: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Pipe<T> {
    pub fn new(capacity: usize) -> Rc<Self> {
        Rc::new(Self {
            queue: RefCell::new(VecDeque::new()),
            capacity,
            closed: Cell::new(false),
            consumer_gone: Cell::new(false),
            waker: RefCell::new(None),
        })
    }

    pub fn push(&self, item: T) -> Result<(), PushError> {
        if self.closed.get() || self.consumer_gone.get() {
            return Err(PushError::Closed);
        }
        if self.queue.borrow().len() >= self.capacity {
            return Err(PushError::Full);
        }
        self.push_unbounded(item);
        Ok(())
    }

    /// Pushes past the capacity: for the one final item of a stream (a
    /// response must never be dropped), so it exceeds the bound by at most one.
    pub fn push_final(&self, item: T) -> Result<(), PushError> {
        if self.closed.get() || self.consumer_gone.get() {
            return Err(PushError::Closed);
        }
        self.push_unbounded(item);
        self.close();
        Ok(())
    }

    /// Pushes past the capacity, for replaying a bounded history into a
    /// fresh pipe.
    pub fn push_replay(&self, item: T) {
        if !self.closed.get() && !self.consumer_gone.get() {
            self.push_unbounded(item);
        }
    }

    /// Puts `item` before everything queued (a stream's first event,
    /// decided after others were queued).
    pub fn push_front(&self, item: T) {
        if !self.consumer_gone.get() {
            self.queue.borrow_mut().push_front(item);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn push_unbounded(&self, item: T) {
        self.queue.borrow_mut().push_back(item);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// No more items; the consumer drains what is queued, then sees the end.
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The consumer stopped reading for good (it is dropped).
    pub fn consumer_gone(&self) -> bool {
        self.consumer_gone.get()
    }

    /// Called by the consumer when it goes away.
    pub fn detach_consumer(&self) {
        self.consumer_gone.set(true);
        self.queue.borrow_mut().clear();
    }

    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Next item, `None` once closed and drained.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut queue = self.queue.borrow_mut();
        if let Some(item) = queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if self.closed.get() {
            return Poll::Ready(None);
        }
        // The consumer waits on an empty queue: a pipe that feeds a stream
        // open for hours holds no buffer between its items (one allocation
        // per batch of items, beside the write each batch costs).
        if queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        drop(queue);
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Resolves once an item is queued or the pipe is closed, leaving the
    /// items in place.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| {
            if !self.queue.borrow().is_empty() || self.closed.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    pub async fn next(&self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// A value that the type system lets move between threads but that is only
/// ever touched on the thread that made it. For libraries that require
/// `Send`/`Sync` of things a thread-per-core server keeps on one core (hyper's
/// timers hold `Rc`s and glommio timers): any access from another thread
/// panics instead of racing, and a drop on another thread leaks the value
/// instead of running its destructor there.
pub struct ThreadBound<T> {
    owner: ThreadId,
    value: ManuallyDrop<T>,
}

impl<T> ThreadBound<T> {
    pub fn new(value: T) -> Self {
        Self {
            owner: std::thread::current().id(),
            value: ManuallyDrop::new(value),
        }
    }

    fn on_owner(&self) -> bool {
        std::thread::current().id() == self.owner
    }

    fn check(&self) {
        assert!(
            self.on_owner(),
            "a thread-bound value was used on a thread other than the one that made it"
        );
    }

    /// The value.
    ///
    /// # Panics
    /// On any thread but the one that made it.
    pub fn get(&self) -> &T {
        self.check();
        &self.value
    }

    /// The value, mutably.
    ///
    /// # Panics
    /// On any thread but the one that made it.
    pub fn get_mut(&mut self) -> &mut T {
        self.check();
        &mut self.value
    }
}

impl<T> Drop for ThreadBound<T> {
    fn drop(&mut self) {
        if self.on_owner() {
            // SAFETY: the value is dropped once, here, and never used again
            // (`self` is being dropped).
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
        // Elsewhere the value is leaked: its destructor may only run on its
        // own thread.
    }
}

// SAFETY: a `ThreadBound<T>` never gives access to its `T` except on the
// thread that created it: `get` and `get_mut` compare the calling thread's id
// with the creator's (ids are never reused) and panic on a mismatch, and
// `Drop` runs `T`'s destructor only on the creator's thread. So no `T` is
// ever read, written or dropped by two threads, whatever safe code does with
// the wrapper, which is all `Send` and `Sync` promise.
unsafe impl<T> Send for ThreadBound<T> {}
// SAFETY: as for `Send`: shared references reach the `T` only through `get`,
// which refuses every thread but the creator's.
unsafe impl<T> Sync for ThreadBound<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn thread_bound_values_stay_on_their_thread() {
        let mut b = ThreadBound::new(Rc::new(Cell::new(1)));
        b.get().set(2);
        assert_eq!(b.get_mut().get(), 2);
        // Sent elsewhere, the value cannot be reached, and dropping it there
        // leaks it rather than touching the Rc from a second thread.
        let seen = Rc::downgrade(b.get());
        let r = std::thread::spawn(move || {
            let reached = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.get().get();
            }))
            .is_ok();
            drop(b);
            reached
        })
        .join()
        .unwrap();
        assert!(!r, "another thread reached the value");
        assert!(
            seen.upgrade().is_some(),
            "the value was leaked, not dropped"
        );
        let local = ThreadBound::new(Rc::new(()));
        let weak = Rc::downgrade(local.get());
        drop(local);
        assert!(weak.upgrade().is_none(), "dropped on its own thread");
    }

    #[test]
    fn oneshot_delivers_or_reports_drop() {
        let (tx, rx) = oneshot();
        tx.send(5);
        assert_eq!(block_on(rx), Some(5));
        let (tx, rx) = oneshot::<u8>();
        drop(tx);
        assert_eq!(block_on(rx), None);
    }

    #[test]
    fn pipe_is_bounded_and_ends_after_close() {
        let p = Pipe::new(2);
        assert_eq!(p.push(1), Ok(()));
        assert_eq!(p.push(2), Ok(()));
        assert_eq!(p.push(3), Err(PushError::Full));
        assert_eq!(p.push_final(4), Ok(()));
        assert_eq!(p.push(5), Err(PushError::Closed));
        let got: Vec<i32> = std::iter::from_fn(|| block_on(p.next())).collect();
        assert_eq!(got, [1, 2, 4]);
        let q = Pipe::<u8>::new(1);
        q.detach_consumer();
        assert_eq!(q.push(1), Err(PushError::Closed));
    }

    #[test]
    fn flag_wakes_waiters() {
        let f = Flag::default();
        assert!(!f.is_raised());
        f.raise();
        block_on(f.wait());
        assert!(f.is_raised());
    }
}
