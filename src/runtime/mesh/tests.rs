//! The mesh on its own: two and three real executors on their own threads,
//! test message types, and every outcome a call can have.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use super::*;

#[derive(Debug, PartialEq, Eq)]
enum TReq {
    /// Answered with `n + 1`.
    Add(u32),
    /// Never answered.
    Stall,
    /// Answered with `n` items and an end.
    Stream(u32),
    /// One-way; recorded by the receiver.
    Note(u32),
}

#[derive(Debug, PartialEq, Eq)]
enum TRep {
    Sum(u32),
    Item(u32),
    End,
}

impl StreamEnd for TRep {
    fn ends_stream(&self) -> bool {
        matches!(self, TRep::End)
    }
}

type TMesh = Mesh<TReq, TRep>;
type Slot = Rc<RefCell<Option<Rc<TMesh>>>>;

/// A member's server: answers `Add`, ignores `Stall`, streams `Stream`,
/// records `Note`s.
struct TestServer {
    me: Slot,
    notes: RefCell<Vec<(usize, u32)>>,
}

impl Serve<TReq, TRep> for TestServer {
    fn serve(&self, from: usize, req: TReq, reply: Option<ReplyTo>) -> Option<TRep> {
        match req {
            TReq::Add(n) => Some(TRep::Sum(n + 1)),
            TReq::Stall => None,
            TReq::Note(n) => {
                assert!(reply.is_none(), "a note wants no reply");
                self.notes.borrow_mut().push((from, n));
                None
            }
            TReq::Stream(n) => {
                let mesh = self.me.borrow().clone().expect("serving");
                let to = reply.expect("a stream is a call");
                glommio::spawn_local(async move {
                    for i in 0..n {
                        if mesh.reply(to, TRep::Item(i)).await.is_err() {
                            return;
                        }
                    }
                    let _ = mesh.reply(to, TRep::End).await;
                })
                .detach();
                None
            }
        }
    }
}

/// One member as its test body sees it.
struct Member {
    shard: usize,
    /// Its ends of the mesh, until joined.
    membership: Option<Membership<TReq, TRep>>,
    /// Members whose executors have ended.
    ended: Arc<Vec<AtomicBool>>,
    /// Members that called [`Member::finish`].
    finished: Arc<AtomicUsize>,
}

const SETTINGS: MeshSettings = MeshSettings {
    queue_depth: 16,
    pending_max: 64,
    timeout_ms: 5_000,
};

struct Started {
    mesh: Rc<TMesh>,
    _serving: Serving,
    server: Rc<TestServer>,
    events: Rc<RefCell<Vec<MeshEvent>>>,
}

impl Member {
    async fn join(&mut self) -> Joined<TReq, TRep> {
        self.membership
            .take()
            .expect("a member joins once")
            .join()
            .await
    }

    async fn start(&mut self, settings: MeshSettings) -> Started {
        let joined = self.join().await;
        start_joined(joined, settings)
    }

    fn is_ended(&self, shard: usize) -> bool {
        self.ended[shard].load(Ordering::SeqCst)
    }
}

/// Says this member is done and waits until every one of `n` is, so nobody
/// leaves while another still needs its answers.
async fn finish(finished: &AtomicUsize, n: usize) {
    finished.fetch_add(1, Ordering::SeqCst);
    until(|| finished.load(Ordering::SeqCst) >= n).await;
}

fn start_joined(joined: Joined<TReq, TRep>, settings: MeshSettings) -> Started {
    let slot: Slot = Rc::default();
    let server = Rc::new(TestServer {
        me: slot.clone(),
        notes: RefCell::new(Vec::new()),
    });
    let events: Rc<RefCell<Vec<MeshEvent>>> = Rc::default();
    let seen = events.clone();
    let (mesh, serving) = Mesh::start(
        joined,
        settings,
        server.clone(),
        Rc::new(move |e| seen.borrow_mut().push(e)),
    );
    *slot.borrow_mut() = Some(mesh.clone());
    Started {
        mesh,
        _serving: serving,
        server,
        events,
    }
}

type Body<R> = Arc<dyn Fn(Member) -> Pin<Box<dyn Future<Output = R>>> + Send + Sync>;

/// Runs `body` on `n` executors joined in one mesh (queue depth `depth`)
/// and returns what each returned, in shard order.
fn members<R: Send + 'static>(n: usize, depth: usize, body: Body<R>) -> Vec<R> {
    crate::runtime::process::ensure_memlock(n).expect("RLIMIT_MEMLOCK for the test executors");
    let ended: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let finished = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = build::<TReq, TRep>(n, depth)
        .into_iter()
        .map(|membership| {
            let (ended, body, finished) = (ended.clone(), body.clone(), finished.clone());
            std::thread::spawn(move || {
                let ex = LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(64 * 1024)
                    .make()
                    .expect("executor");
                let shard = membership.shard();
                let member = Member {
                    shard,
                    membership: Some(membership),
                    ended: ended.clone(),
                    finished,
                };
                let r = ex.run(body(member));
                // The member is gone for the others once its body (and with
                // it its end of the mesh) is.
                ended[shard].store(true, Ordering::SeqCst);
                drop(ex);
                r
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Waits (yielding the executor) until `cond` holds.
async fn until(cond: impl Fn() -> bool) {
    while !cond() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn calls_and_tells_reach_the_shard_they_name_among_three() {
    let got = members(
        3,
        16,
        Arc::new(|mut m: Member| {
            Box::pin(async move {
                let me = m.shard;
                let finished = m.finished.clone();
                let s = m.start(SETTINGS).await;
                let mut sums = Vec::new();
                for to in (0..3).filter(|&to| to != me) {
                    let r = s.mesh.call(to, TReq::Add(10 * to as u32)).unwrap().await;
                    sums.push(r.unwrap());
                    s.mesh.tell(to, TReq::Note(me as u32)).unwrap();
                }
                // Every member hears from the other two before it leaves.
                until(|| s.server.notes.borrow().len() == 2).await;
                let mut notes = s.server.notes.borrow().clone();
                notes.sort();
                finish(&finished, 3).await;
                (sums, notes)
            })
        }),
    );
    assert_eq!(got[0].0, vec![TRep::Sum(11), TRep::Sum(21)]);
    assert_eq!(got[1].0, vec![TRep::Sum(1), TRep::Sum(21)]);
    assert_eq!(got[2].0, vec![TRep::Sum(1), TRep::Sum(11)]);
    // A note carries its sender's shard id; the receiver sees who sent it.
    assert_eq!(got[0].1, vec![(1, 1), (2, 2)]);
    assert_eq!(got[1].1, vec![(0, 0), (2, 2)]);
    assert_eq!(got[2].1, vec![(0, 0), (1, 1)]);
}

#[test]
fn a_full_queue_refuses_at_once_and_counts_it() {
    let got = members(
        2,
        1,
        Arc::new(|mut m: Member| {
            Box::pin(async move {
                if m.shard == 1 {
                    // Joins but never reads: its queues fill up.
                    let joined = m.join().await;
                    until(|| m.is_ended(0)).await;
                    drop(joined);
                    return Vec::new();
                }
                let s = m.start(SETTINGS).await;
                let first = s.mesh.tell(1, TReq::Note(1));
                let second = s.mesh.tell(1, TReq::Note(2));
                let call = s.mesh.call(1, TReq::Add(1)).err();
                let events = s.events.borrow().clone();
                vec![format!("{first:?} {second:?} {call:?} {events:?}")]
            })
        }),
    );
    assert_eq!(
        got[0],
        vec!["Ok(()) Err(Overloaded) Some(Overloaded) [Dropped, Overloaded]".to_string()]
    );
}

#[test]
fn the_pending_table_is_bounded() {
    let settings = MeshSettings {
        pending_max: 2,
        ..SETTINGS
    };
    let got = members(
        2,
        16,
        Arc::new(move |mut m: Member| {
            Box::pin(async move {
                let me = m.shard;
                let s = m.start(settings).await;
                if me == 1 {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    return String::new();
                }
                let a = s.mesh.call(1, TReq::Stall).unwrap();
                let b = s.mesh.call(1, TReq::Stall).unwrap();
                let third = s.mesh.call(1, TReq::Add(1)).err();
                let pending = s.mesh.pending();
                drop((a, b));
                format!("{third:?} {pending} {}", s.mesh.pending())
            })
        }),
    );
    assert_eq!(got[0], "Some(Overloaded) 2 0");
}

#[test]
fn an_unanswered_call_times_out_and_is_forgotten() {
    let settings = MeshSettings {
        timeout_ms: 50,
        ..SETTINGS
    };
    let got = members(
        2,
        16,
        Arc::new(move |mut m: Member| {
            Box::pin(async move {
                let me = m.shard;
                let s = m.start(settings).await;
                if me == 1 {
                    until(|| m.is_ended(0)).await;
                    return String::new();
                }
                let r = s.mesh.call(1, TReq::Stall).unwrap().await;
                // The peer still answers what it can after a timeout.
                let after = s.mesh.call(1, TReq::Add(1)).unwrap().await;
                let timed_out = s
                    .events
                    .borrow()
                    .iter()
                    .filter(|e| **e == MeshEvent::TimedOut)
                    .count();
                format!("{r:?} {after:?} {} {timed_out}", s.mesh.pending())
            })
        }),
    );
    assert_eq!(got[0], "Err(Timeout) Ok(Sum(2)) 0 1");
}

#[test]
fn a_dead_peer_is_reported_not_waited_for() {
    let got = members(
        2,
        16,
        Arc::new(|mut m: Member| {
            Box::pin(async move {
                let me = m.shard;
                let ended = m.ended.clone();
                let s = m.start(SETTINGS).await;
                if me == 1 {
                    // Leaves at once: its executor ends, its queues close.
                    return String::new();
                }
                until(|| ended[1].load(Ordering::SeqCst)).await;
                let call = s.mesh.call(1, TReq::Add(1)).err();
                let tell = s.mesh.tell(1, TReq::Note(1)).err();
                format!("{call:?} {tell:?}")
            })
        }),
    );
    assert_eq!(got[0], "Some(PeerGone) Some(PeerGone)");
}

#[test]
fn streams_arrive_in_order_and_a_slow_consumer_is_cut() {
    let got = members(
        2,
        16,
        Arc::new(|mut m: Member| {
            Box::pin(async move {
                let me = m.shard;
                let s = m.start(SETTINGS).await;
                if me == 1 {
                    until(|| m.is_ended(0)).await;
                    return String::new();
                }
                let (_, pipe) = s.mesh.call_stream(1, TReq::Stream(3), 16).unwrap();
                let mut got = Vec::new();
                while let Some(r) = pipe.next().await {
                    got.push(r);
                }
                // A consumer that reads nothing, with room for one reply.
                let (_, slow) = s.mesh.call_stream(1, TReq::Stream(5), 1).unwrap();
                until(|| {
                    s.events
                        .borrow()
                        .iter()
                        .any(|e| matches!(e, MeshEvent::StreamCut { shard: 1, .. }))
                })
                .await;
                let first = slow.next().await;
                let rest = slow.next().await;
                format!("{got:?} {first:?} {rest:?} {}", s.mesh.pending())
            })
        }),
    );
    assert_eq!(
        got[0],
        "[Item(0), Item(1), Item(2), End] Some(Item(0)) None 0"
    );
}

#[test]
fn a_rebuilt_mesh_fails_old_waiters_and_routes_by_shard() {
    // Three members join a first mesh; shards 0 and 1 wait on calls to
    // shard 2. Then shard 0 "restarts": a new executor takes its place and
    // everyone joins a second mesh. The old calls fail at once; calls by
    // shard id reach the new shard 0.
    crate::runtime::process::ensure_memlock(4).unwrap();
    let mut first: Vec<Option<Membership<TReq, TRep>>> =
        build(3, 16).into_iter().map(Some).collect();
    let mut second: Vec<Option<Membership<TReq, TRep>>> =
        build(3, 16).into_iter().map(Some).collect();
    let (res_tx, res_rx) = mpsc::channel::<(usize, String)>();
    let first_done = Arc::new(AtomicUsize::new(0));
    let second_done = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    // Members: 0 (old shard 0), 1, 2, 3 (new shard 0).
    for member in 0..4usize {
        let shard = if member == 3 { 0 } else { member };
        let old = if member == 3 {
            None
        } else {
            first[shard].take()
        };
        let new = if member == 0 {
            None
        } else {
            second[shard].take()
        };
        let res_tx = res_tx.clone();
        let (first_done, second_done) = (first_done.clone(), second_done.clone());
        threads.push(std::thread::spawn(move || {
            let ex = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(64 * 1024)
                .make()
                .unwrap();
            ex.run(async move {
                let mut out = String::new();
                if let Some(old) = old {
                    let s = start_joined(old.join().await, SETTINGS);
                    if member == 0 {
                        let call = s.mesh.call(2, TReq::Stall).unwrap();
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                        // Shard 0 "dies" here: its mesh is failed and dropped.
                        let failed = s.mesh.fail_all();
                        out = format!("{failed} {:?}", call.await);
                        res_tx.send((member, out)).unwrap();
                        first_done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if member == 1 {
                        // A member that stays fails its own waiters the same way.
                        let call = s.mesh.call(2, TReq::Stall).unwrap();
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                        out = format!("{} {:?} ", s.mesh.fail_all(), call.await);
                    }
                    // Shard 2 keeps its first mesh until the others are done with it.
                    finish(&first_done, 3).await;
                }
                let s = start_joined(new.expect("joins the second mesh").join().await, SETTINGS);
                for to in (0..3).filter(|&to| to != shard) {
                    let r = s.mesh.call(to, TReq::Add(to as u32)).unwrap().await;
                    out.push_str(&format!("{to}:{r:?} "));
                }
                finish(&second_done, 3).await;
                res_tx.send((member, out)).unwrap();
            });
            drop(ex);
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let mut res: Vec<(usize, String)> = res_rx.try_iter().collect();
    res.sort();
    assert_eq!(res[0], (0, "1 Err(PeerGone)".to_string()));
    assert_eq!(
        res[1],
        (1, "1 Err(PeerGone) 0:Ok(Sum(1)) 2:Ok(Sum(3)) ".to_string())
    );
    assert_eq!(res[2], (2, "0:Ok(Sum(1)) 1:Ok(Sum(2)) ".to_string()));
    assert_eq!(res[3], (3, "1:Ok(Sum(2)) 2:Ok(Sum(3)) ".to_string()));
}

#[test]
fn an_unknown_shard_is_a_bug_not_a_fallback() {
    let got = members(
        2,
        4,
        Arc::new(|mut m: Member| {
            Box::pin(async move {
                let s = m.start(SETTINGS).await;
                let outside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.mesh.tell(5, TReq::Note(0))
                }));
                let itself = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.mesh.tell(m.shard, TReq::Note(0))
                }));
                finish(&m.finished, 2).await;
                (outside.is_err(), itself.is_err())
            })
        }),
    );
    assert_eq!(got, vec![(true, true), (true, true)]);
}
