//! The mesh: typed, bounded messages between the executors of one process,
//! generic over what they carry.
//!
//! `Mesh<Req, Rep>` knows nothing of what its messages mean: the layer that
//! owns a cross-core feature defines its message type, the composition root
//! wraps them all in one `Req` and one `Rep` enum, and the runtime only
//! carries them. Adding a cross-core feature never edits this file.
//!
//! Two full meshes of glommio shared channels connect every pair of
//! executors, one carrying requests and one carrying replies. Keeping them
//! apart is what makes the mesh deadlock-free: a request server may wait for
//! room in a reply queue, but the reply loop that drains it never waits on
//! anything, so no cycle of full queues can form.
//!
//! Bounds: each one-way queue holds `queue_depth` messages. A request is
//! *tried*, never awaited: when the queue is full the caller gets
//! [`MeshError::Overloaded`] at once. The table of requests awaiting replies
//! holds at most `pending_max` entries, refused the same way. Every call has
//! a deadline (`timeout_ms`); a stream of replies has a per-stream queue
//! bound on the asking side (`call_stream`), past which the stream is cut.
//!
//! Building: [`build`] makes every channel of a mesh on one thread and hands
//! out one [`Membership`] per shard (its row of senders, its column of
//! receivers), which that shard's executor joins. Channels are indexed by
//! shard id, so a message names its receiver directly; a shard id outside
//! the mesh is a bug and stops the program. (glommio's own `MeshBuilder`
//! shares an `Rc` between the threads that clone and join it, which races;
//! and it numbers members by executor id, which a restart changes.)
//!
//! Rebuilds: a mesh cannot take a new member, so when a dead executor is
//! restarted every member joins a freshly built mesh and swaps it in;
//! everything still waiting on the old one fails at once with
//! [`MeshError::PeerGone`] ([`Mesh::fail_all`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::GlommioError;

use super::local::{oneshot, OneshotReceiver, OneshotSender, Pipe, PushError};

/// Why a message did not get where it was going, or got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The queue to the receiver, or this member's table of calls awaiting
    /// replies, is full. Nothing was sent.
    #[error("the queue to the other core is full")]
    Overloaded,
    /// No reply within the deadline; the receiver may or may not have acted.
    #[error("the other core did not answer in time")]
    Timeout,
    /// The receiver's executor is gone, or the mesh was rebuilt under the call.
    #[error("the other core is not running")]
    PeerGone,
}

/// What a mesh member counts; the layer above turns these into metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshEvent {
    /// A call was queued to another member.
    Sent,
    /// A request from another member was handed to the server.
    Served,
    /// A call or tell was refused at a bound (`Overloaded`).
    Overloaded,
    /// A one-way message could not be queued and was dropped.
    Dropped,
    /// A call got no reply within the deadline.
    TimedOut,
    /// A stream's consumer fell `depth` replies behind; the stream was cut.
    /// `shard` is the member streaming it, `corr` the call: tell it to stop.
    StreamCut { shard: usize, corr: u64 },
    /// A reply arrived that nobody waits for any more (its caller gave up).
    Unclaimed,
}

/// Where a member's counts go.
pub type Observer = Rc<dyn Fn(MeshEvent)>;

/// A reply type tells the mesh which reply ends a stream of replies.
pub trait StreamEnd {
    /// True for the last reply of a stream ([`Mesh::call_stream`]).
    fn ends_stream(&self) -> bool;
}

/// The address a reply goes to: the asking member and its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: usize,
    corr: u64,
}

impl ReplyTo {
    /// The correlation id of the call (names a stream to cancel it).
    pub fn corr(self) -> u64 {
        self.corr
    }
}

/// What a member does with requests from the others.
pub trait Serve<Req, Rep> {
    /// Serves `req` from shard `from`. `reply` is set when the sender waits
    /// for an answer: return it here, or keep `reply` and answer later
    /// (possibly with a stream) through [`Mesh::reply`].
    fn serve(&self, from: usize, req: Req, reply: Option<ReplyTo>) -> Option<Rep>;
}

/// `corr` of a message sent with [`Mesh::tell`]: no reply is wanted.
const NO_REPLY: u64 = u64::MAX;

/// A request on the wire.
pub struct RequestMsg<Req> {
    corr: u64,
    body: Req,
}

/// A reply on the wire.
pub struct ReplyMsg<Rep> {
    corr: u64,
    body: Rep,
}

/// One shard's unconnected ends of a freshly built mesh: senders indexed by
/// the shard they reach, receivers by the shard they hear from. Made on one
/// thread by [`build`], sent to the shard's executor, joined there.
pub struct Membership<Req: Send + 'static, Rep: Send + 'static> {
    shard: usize,
    req_tx: Vec<Option<SharedSender<RequestMsg<Req>>>>,
    req_rx: Vec<Option<SharedReceiver<RequestMsg<Req>>>>,
    rep_tx: Vec<Option<SharedSender<ReplyMsg<Rep>>>>,
    rep_rx: Vec<Option<SharedReceiver<ReplyMsg<Rep>>>>,
}

/// A member's channels, connected but not yet serving.
pub struct Joined<Req: Send, Rep: Send> {
    shard: usize,
    req_tx: Vec<Option<ConnectedSender<RequestMsg<Req>>>>,
    req_rx: Vec<(usize, ConnectedReceiver<RequestMsg<Req>>)>,
    rep_tx: Vec<Option<ConnectedSender<ReplyMsg<Rep>>>>,
    rep_rx: Vec<(usize, ConnectedReceiver<ReplyMsg<Rep>>)>,
}

/// An `n` by `n` matrix of bounded channels without its diagonal, split
/// into each member's row of senders and column of receivers.
#[allow(clippy::type_complexity)]
fn matrix<T: Send>(
    n: usize,
    depth: usize,
) -> (
    Vec<Vec<Option<SharedSender<T>>>>,
    Vec<Vec<Option<SharedReceiver<T>>>>,
) {
    let mut tx: Vec<Vec<Option<SharedSender<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut rx: Vec<Vec<Option<SharedReceiver<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            let (s, r) = shared_channel::new_bounded(depth);
            tx[from][to] = Some(s);
            rx[to][from] = Some(r);
        }
    }
    (tx, rx)
}

/// Builds a mesh of `members` shards whose queues hold `queue_depth`
/// messages each: one [`Membership`] per shard, in shard order.
pub fn build<Req: Send + 'static, Rep: Send + 'static>(
    members: usize,
    queue_depth: usize,
) -> Vec<Membership<Req, Rep>> {
    assert!(members >= 2, "a mesh connects at least two executors");
    assert!(queue_depth >= 1, "mesh queues hold at least one message");
    let (req_tx, req_rx) = matrix(members, queue_depth);
    let (rep_tx, rep_rx) = matrix(members, queue_depth);
    req_tx
        .into_iter()
        .zip(req_rx)
        .zip(rep_tx.into_iter().zip(rep_rx))
        .enumerate()
        .map(|(shard, ((req_tx, req_rx), (rep_tx, rep_rx)))| Membership {
            shard,
            req_tx,
            req_rx,
            rep_tx,
            rep_rx,
        })
        .collect()
}

/// Bytes one request queue slot and one reply queue slot take (a glommio
/// shared channel preallocates every slot: the message and a flag).
pub fn slot_bytes<Req: Send + 'static, Rep: Send + 'static>() -> (usize, usize) {
    (
        std::mem::size_of::<(RequestMsg<Req>, std::sync::atomic::AtomicBool)>(),
        std::mem::size_of::<(ReplyMsg<Rep>, std::sync::atomic::AtomicBool)>(),
    )
}

/// Memory the mesh of `members` executors preallocates for its queues: a
/// request and a reply queue of `queue_depth` slots per ordered pair, so
/// it grows with members² (see docs/PERFORMANCE.md, "Scaling").
pub fn queue_bytes<Req: Send + 'static, Rep: Send + 'static>(
    members: usize,
    queue_depth: usize,
) -> usize {
    let (req, rep) = slot_bytes::<Req, Rep>();
    members * members.saturating_sub(1) * queue_depth * (req + rep)
}

/// Starts connecting every end of `ends` (each connection waits for its
/// other end, so all of a member's ends must be under way before any is
/// awaited).
fn connecting<E, T: 'static>(
    ends: Vec<Option<E>>,
    connect: impl Fn(E) -> Pin<Box<dyn Future<Output = T>>>,
) -> Vec<Option<glommio::Task<T>>> {
    ends.into_iter()
        .map(|e| e.map(|e| glommio::spawn_local(connect(e))))
        .collect()
}

/// The connected ends, in the order they were started.
async fn connected<T>(tasks: Vec<Option<glommio::Task<T>>>) -> Vec<Option<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(match t {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    out
}

/// Receivers with the shard each hears from.
fn by_shard<T>(ends: Vec<Option<T>>) -> Vec<(usize, T)> {
    ends.into_iter()
        .enumerate()
        .filter_map(|(from, r)| r.map(|r| (from, r)))
        .collect()
}

impl<Req: Send + 'static, Rep: Send + 'static> Membership<Req, Rep> {
    /// The shard this membership belongs to.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Connects this member's ends; resolves once every other member has
    /// joined too.
    pub async fn join(self) -> Joined<Req, Rep> {
        let req_tx = connecting(self.req_tx, |e| Box::pin(e.connect()));
        let req_rx = connecting(self.req_rx, |e| Box::pin(e.connect()));
        let rep_tx = connecting(self.rep_tx, |e| Box::pin(e.connect()));
        let rep_rx = connecting(self.rep_rx, |e| Box::pin(e.connect()));
        Joined {
            shard: self.shard,
            req_tx: connected(req_tx).await,
            req_rx: by_shard(connected(req_rx).await),
            rep_tx: connected(rep_tx).await,
            rep_rx: by_shard(connected(rep_rx).await),
        }
    }
}

/// Settings of one mesh (every member uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshSettings {
    /// Messages each one-way queue holds.
    pub queue_depth: usize,
    /// Calls one member may have awaiting replies.
    pub pending_max: usize,
    /// How long a call waits for its reply.
    pub timeout_ms: u64,
}

/// Who waits for replies to one call.
enum Waiter<Rep> {
    /// A single reply.
    Once(OneshotSender<Rep>),
    /// A stream of replies, until one [`StreamEnd::ends_stream`].
    Stream(Rc<Pipe<Rep>>),
}

/// This member's end of the mesh.
pub struct Mesh<Req: Send, Rep: Send> {
    me: usize,
    /// Request queues by the shard they reach (none to itself).
    req_tx: Vec<Option<ConnectedSender<RequestMsg<Req>>>>,
    /// Reply queues by the shard they reach (none to itself).
    rep_tx: Vec<Option<ConnectedSender<ReplyMsg<Rep>>>>,
    /// Correlation id -> (the shard asked, who waits for the reply).
    pending: RefCell<HashMap<u64, (usize, Waiter<Rep>)>>,
    next_corr: Cell<u64>,
    settings: MeshSettings,
    observer: Observer,
}

/// The tasks serving one member's receivers: one request loop and one reply
/// loop per peer. Dropping it stops them (and releases the mesh they hold).
pub struct Serving {
    _tasks: Vec<glommio::Task<()>>,
}

impl<Req: Send + 'static, Rep: Send + StreamEnd + 'static> Mesh<Req, Rep> {
    /// Starts serving a joined mesh as shard `me`. The mesh lives as long as
    /// the returned [`Serving`] or any other holder. Nothing is served before
    /// the calling task next yields, so whatever it sets up right after this
    /// returns (installing the mesh where the server finds it) is in place
    /// for the first request.
    pub fn start(
        joined: Joined<Req, Rep>,
        settings: MeshSettings,
        server: Rc<dyn Serve<Req, Rep>>,
        observer: Observer,
    ) -> (Rc<Self>, Serving) {
        let Joined {
            shard: me,
            req_tx,
            req_rx,
            rep_tx,
            rep_rx,
        } = joined;
        let n = req_tx.len();
        assert!(
            req_tx
                .iter()
                .enumerate()
                .all(|(to, t)| t.is_some() == (to != me)),
            "a member has a queue to every other member and none to itself"
        );
        assert_eq!(
            req_rx.len(),
            n - 1,
            "a member hears from every other member"
        );
        let mesh = Rc::new(Self {
            me,
            req_tx,
            rep_tx,
            pending: RefCell::new(HashMap::new()),
            next_corr: Cell::new(0),
            settings,
            observer,
        });
        let mut tasks = Vec::new();
        for (from, rx) in req_rx {
            let server = server.clone();
            let mesh = mesh.clone();
            tasks.push(glommio::spawn_local(async move {
                // glommio runs a new task at once, up to its first await:
                // without this, a request already queued would be served
                // before `start` returned and the caller installed the mesh.
                futures_lite::future::yield_now().await;
                while let Some(msg) = rx.recv().await {
                    (mesh.observer)(MeshEvent::Served);
                    let reply_to = (msg.corr != NO_REPLY).then_some(ReplyTo {
                        shard: from,
                        corr: msg.corr,
                    });
                    let Some(reply) = server.serve(from, msg.body, reply_to) else {
                        continue;
                    };
                    let to = reply_to.expect("a reply is only returned to a call that wants one");
                    if mesh.reply(to, reply).await.is_err() {
                        // The asking member is gone; nobody is left to answer.
                        return;
                    }
                }
            }));
        }
        for (from, rx) in rep_rx {
            let mesh = mesh.clone();
            tasks.push(glommio::spawn_local(async move {
                futures_lite::future::yield_now().await;
                while let Some(msg) = rx.recv().await {
                    mesh.complete(from, msg);
                }
            }));
        }
        (mesh, Serving { _tasks: tasks })
    }
}

impl<Req: Send + 'static, Rep: Send + StreamEnd + 'static> Mesh<Req, Rep> {
    /// The queue of `kind` to shard `to`.
    ///
    /// # Panics
    /// If `to` is this shard (local work must not cross the mesh) or not a
    /// member of this mesh: both are bugs in the caller.
    fn queue<'a, T: Send>(
        &self,
        queues: &'a [Option<ConnectedSender<T>>],
        to: usize,
    ) -> &'a ConnectedSender<T> {
        assert_ne!(to, self.me, "local work must not cross the mesh");
        queues
            .get(to)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("shard {to} is not in a mesh of {}", queues.len()))
    }

    /// Calls awaiting a reply.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Calls awaiting a reply, by the shard they went to.
    pub fn pending_per_shard(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.req_tx.len()];
        for (to, _) in self.pending.borrow().values() {
            out[*to] += 1;
        }
        out
    }

    /// Fails everything waiting for a reply (the mesh is being replaced);
    /// returns how many waiters there were.
    pub fn fail_all(&self) -> usize {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let n = pending.len();
        for (_, (_, w)) in pending {
            if let Waiter::Stream(p) = w {
                p.close();
            }
        }
        n
    }

    fn send_request(&self, to: usize, body: Req) -> Result<u64, MeshError> {
        if self.pending.borrow().len() >= self.settings.pending_max {
            (self.observer)(MeshEvent::Overloaded);
            return Err(MeshError::Overloaded);
        }
        let corr = self.next_corr.get();
        // NO_REPLY is never a real correlation id.
        self.next_corr.set((corr + 1) % NO_REPLY);
        let msg = RequestMsg { corr, body };
        match self.queue(&self.req_tx, to).try_send(msg) {
            Ok(()) => {
                (self.observer)(MeshEvent::Sent);
                Ok(corr)
            }
            Err(GlommioError::WouldBlock(_)) => {
                (self.observer)(MeshEvent::Overloaded);
                Err(MeshError::Overloaded)
            }
            Err(_) => Err(MeshError::PeerGone),
        }
    }

    /// Sends `body` to shard `to`. Fails at once if it cannot be queued;
    /// otherwise returns the reply's future, which also enforces the deadline.
    pub fn call(self: &Rc<Self>, to: usize, body: Req) -> Result<Call<Req, Rep>, MeshError> {
        let corr = self.send_request(to, body)?;
        let (tx, rx) = oneshot();
        self.pending
            .borrow_mut()
            .insert(corr, (to, Waiter::Once(tx)));
        Ok(Call {
            mesh: self.clone(),
            corr,
            rx,
            timer: glommio::timer::Timer::new(Duration::from_millis(self.settings.timeout_ms)),
            done: false,
        })
    }

    /// Sends `body` to shard `to` and returns its correlation id and the pipe
    /// its stream of replies arrives in (at most `depth` queued; past that
    /// the stream is cut and [`MeshEvent::StreamCut`] reported). The caller
    /// enforces its own deadlines and calls [`Mesh::forget`] when it stops
    /// reading early.
    pub fn call_stream(
        &self,
        to: usize,
        body: Req,
        depth: usize,
    ) -> Result<(u64, Rc<Pipe<Rep>>), MeshError> {
        let corr = self.send_request(to, body)?;
        let pipe = Pipe::new(depth);
        self.pending
            .borrow_mut()
            .insert(corr, (to, Waiter::Stream(pipe.clone())));
        Ok((corr, pipe))
    }

    /// Stops waiting for replies to `corr`.
    pub fn forget(&self, corr: u64) {
        self.pending.borrow_mut().remove(&corr);
    }

    /// Sends `body` to shard `to` without wanting a reply. A full queue
    /// refuses it at once (counted as dropped).
    pub fn tell(&self, to: usize, body: Req) -> Result<(), MeshError> {
        let msg = RequestMsg {
            corr: NO_REPLY,
            body,
        };
        match self.queue(&self.req_tx, to).try_send(msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(_)) => {
                (self.observer)(MeshEvent::Dropped);
                Err(MeshError::Overloaded)
            }
            Err(_) => {
                (self.observer)(MeshEvent::Dropped);
                Err(MeshError::PeerGone)
            }
        }
    }

    /// Sends a reply back to the member that asked; waits for queue room,
    /// which the asker's reply loop always makes (it never blocks).
    pub async fn reply(&self, to: ReplyTo, body: Rep) -> Result<(), MeshError> {
        self.queue(&self.rep_tx, to.shard)
            .send(ReplyMsg {
                corr: to.corr,
                body,
            })
            .await
            .map_err(|_| MeshError::PeerGone)
    }

    /// Delivers a reply from shard `from` to whoever waits for it.
    fn complete(&self, from: usize, msg: ReplyMsg<Rep>) {
        let mut pending = self.pending.borrow_mut();
        let stream = match pending.get(&msg.corr) {
            None => {
                drop(pending);
                (self.observer)(MeshEvent::Unclaimed);
                return;
            }
            Some((asked, _)) if *asked != from => {
                panic!(
                    "reply to call {} came from shard {from}, which was not asked",
                    msg.corr
                )
            }
            Some((_, Waiter::Stream(p))) => p.clone(),
            Some((_, Waiter::Once(_))) => {
                let Some((_, Waiter::Once(tx))) = pending.remove(&msg.corr) else {
                    unreachable!("matched a single-reply waiter above")
                };
                drop(pending);
                tx.send(msg.body);
                return;
            }
        };
        let last = msg.body.ends_stream();
        let pushed = if last {
            stream.push_final(msg.body)
        } else {
            stream.push(msg.body)
        };
        match pushed {
            Ok(()) if !last => {}
            Ok(()) => {
                pending.remove(&msg.corr);
            }
            Err(PushError::Closed) => {
                pending.remove(&msg.corr);
                drop(pending);
                (self.observer)(MeshEvent::Unclaimed);
            }
            Err(PushError::Full) => {
                pending.remove(&msg.corr);
                drop(pending);
                stream.close();
                (self.observer)(MeshEvent::StreamCut {
                    shard: from,
                    corr: msg.corr,
                });
            }
        }
    }
}

/// The reply to one [`Mesh::call`]. Dropping it forgets the call; a reply
/// that arrives later is dropped (and counted as unclaimed).
pub struct Call<Req: Send + 'static, Rep: Send + StreamEnd + 'static> {
    mesh: Rc<Mesh<Req, Rep>>,
    corr: u64,
    rx: OneshotReceiver<Rep>,
    timer: glommio::timer::Timer,
    done: bool,
}

impl<Req: Send + 'static, Rep: Send + StreamEnd + 'static> Future for Call<Req, Rep> {
    type Output = Result<Rep, MeshError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "a mesh call is polled after it finished");
        if let Poll::Ready(r) = Pin::new(&mut self.rx).poll(cx) {
            self.done = true;
            return Poll::Ready(r.ok_or(MeshError::PeerGone));
        }
        if Pin::new(&mut self.timer).poll(cx).is_ready() {
            self.done = true;
            self.mesh.forget(self.corr);
            (self.mesh.observer)(MeshEvent::TimedOut);
            return Poll::Ready(Err(MeshError::Timeout));
        }
        Poll::Pending
    }
}

impl<Req: Send + 'static, Rep: Send + StreamEnd + 'static> Drop for Call<Req, Rep> {
    fn drop(&mut self) {
        if !self.done {
            self.mesh.forget(self.corr);
        }
    }
}

/// `iters` calls from one pinned executor to another and their replies:
/// the latency of a hop there and back (the hot-path benchmark's driver).
#[cfg(feature = "internals")]
pub(crate) fn bench_round_trips(iters: u64) -> Duration {
    hop_round_trips(iters, None).wall
}

/// What [`hop_round_trips`] measured.
#[cfg(feature = "internals")]
pub struct HopRun {
    /// Each round trip, in call order.
    pub round_trips: Vec<Duration>,
    /// All of them, back to back.
    pub wall: Duration,
    /// CPU time both executors' threads used meanwhile (spinning included).
    pub cpu: Duration,
}

/// `iters` round trips from one pinned executor to another (the first and
/// last allowed CPUs), each timed; with `spin`, both executors busy-poll
/// that long before parking (`--spin-before-park`).
#[cfg(feature = "internals")]
pub(crate) fn hop_round_trips(iters: u64, spin: Option<Duration>) -> HopRun {
    use glommio::{LocalExecutorBuilder, Placement};
    use std::sync::mpsc;

    struct Echo;
    impl Serve<u64, u64> for Echo {
        fn serve(&self, _: usize, req: u64, _: Option<ReplyTo>) -> Option<u64> {
            Some(req)
        }
    }
    const SETTINGS: MeshSettings = MeshSettings {
        queue_depth: 1024,
        pending_max: 1024,
        timeout_ms: 5_000,
    };
    use super::cores::thread_cpu_time as thread_cpu;
    let builder = |core: usize| {
        let b = LocalExecutorBuilder::new(Placement::Fixed(core));
        match spin {
            Some(d) => b.spin_before_park(d),
            None => b,
        }
    };
    let cores = super::cores::allowed_cores().expect("CPU affinity");
    let mut members = build::<u64, u64>(2, SETTINGS.queue_depth).into_iter();
    let (caller, server) = (
        members.next().expect("shard 0"),
        members.next().expect("shard 1"),
    );
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = builder(cores[cores.len() - 1])
        .spawn(move || async move {
            let (_mesh, _serving) = Mesh::start(
                server.join().await,
                SETTINGS,
                Rc::new(Echo),
                Rc::new(|_| {}),
            );
            let cpu0 = thread_cpu();
            // Serves until the caller is done.
            while done_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            thread_cpu() - cpu0
        })
        .expect("server executor");
    let caller = builder(cores[0])
        .spawn(move || async move {
            let (mesh, _serving) = Mesh::start(
                caller.join().await,
                SETTINGS,
                Rc::new(Echo),
                Rc::new(|_| {}),
            );
            let mut round_trips = Vec::with_capacity(iters as usize);
            let cpu0 = thread_cpu();
            let start = std::time::Instant::now();
            for i in 0..iters {
                let sent = std::time::Instant::now();
                let r = mesh.call(1, i).expect("queued").await.expect("reply");
                round_trips.push(sent.elapsed());
                assert_eq!(r, i);
            }
            let wall = start.elapsed();
            let cpu = thread_cpu() - cpu0;
            done_tx.send(()).expect("the server waits");
            (round_trips, wall, cpu)
        })
        .expect("caller executor");
    let (round_trips, wall, caller_cpu) = caller.join().expect("caller");
    let server_cpu = server.join().expect("server");
    HopRun {
        round_trips,
        wall,
        cpu: caller_cpu + server_cpu,
    }
}

#[cfg(feature = "internals")]
impl StreamEnd for u64 {
    fn ends_stream(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
