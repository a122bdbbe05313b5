//! The mesh: typed, bounded messages between shards.
//!
//! Two full meshes of glommio `shared_channel`s connect every pair of shards,
//! one carrying requests and one carrying replies. Keeping them apart is what
//! makes the mesh deadlock-free: a shard's request server may wait for room in
//! a reply queue, but the reply loop that drains it never waits on anything,
//! so no cycle of full queues can form.
//!
//! Bounds: each one-way queue holds `mesh_queue_depth` messages. A request is
//! *tried*, never awaited: when the queue is full the caller gets
//! [`MeshError::Overloaded`] at once and the client a -31010 error. The table
//! of requests awaiting replies holds at most `mesh_pending_max` entries per
//! shard, refused the same way. Every hop has a deadline (`mesh_timeout_ms`).
//!
//! Shard ids and mesh peer ids differ: glommio numbers peers by executor id,
//! and a restarted shard's executor gets a new, higher one. Messages name
//! shards (`from`, the result of `kv::owner()`); `peers` maps a shard to its
//! peer id in the current mesh and is handed to every shard by the main
//! thread with each (re)build.
//!
//! Rebuilds: glommio meshes cannot take a new member, so when the main thread
//! restarts a dead shard every shard joins a fresh pair of meshes and
//! swaps it in (`Shard::install_mesh`); requests still waiting on the old
//! mesh fail with [`MeshError::PeerGone`] and their clients get an error.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::GlommioError;

use super::local::{oneshot, OneshotSender, Pipe, PushError};
use crate::server::kv::{KvOp, KvReply};
use crate::server::registry::ListKind;
use crate::server::resources::Watcher;
use crate::server::tasks::TaskOp;
use crate::server::tools::RpcError;
use crate::transport::http::forward::{HttpCall, HttpFrame};

/// Work one shard asks another to do.
#[derive(Debug)]
pub enum Request {
    Kv(KvOp),
    /// `uri` changed; tell these subscribers of the receiving shard. Sent
    /// without expecting a reply.
    Notify {
        uri: String,
        subscribers: Vec<u64>,
    },
    /// An HTTP request for a legacy session the receiver owns. Answered by a
    /// stream of [`Reply::Http`] frames ending with `HttpFrame::End`.
    Http(Box<HttpCall>),
    /// The client of the relayed stream `stream` (the `corr` of its `Http`
    /// request) went away or fell behind; stop sending it. No reply.
    HttpCancel {
        stream: u64,
    },
    /// Add `watcher` to the watchers of `uri` the receiver keeps. Answered
    /// with [`Reply::Watched`].
    Watch {
        uri: String,
        watcher: Watcher,
    },
    /// Forget `watcher` of `uri`. No reply.
    Unwatch {
        uri: String,
        watcher: Watcher,
    },
    /// `uri` changed; the receiver keeps its watchers. No reply.
    Updated {
        uri: String,
    },
    /// A `tasks/*` operation for a task the receiver owns. Answered with
    /// [`Reply::Task`].
    Task(TaskOp),
    /// Offer (`on`) or withdraw an item of the registry. Sent to shard 0,
    /// which applies it and forwards it (`broadcast: false`) to the others,
    /// so every shard sees changes in one order. No reply.
    SetEnabled {
        kind: ListKind,
        name: String,
        on: bool,
        broadcast: bool,
    },
}

/// `corr` of a request sent with [`Mesh::tell`]: no reply is wanted.
pub const NO_REPLY: u64 = u64::MAX;

/// The owner's answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    Kv(KvReply),
    Http(HttpFrame),
    /// Answer to [`Request::Watch`]: `Err(max)` at the per-URI bound.
    Watched(Result<(), usize>),
    /// Answer to [`Request::Task`]: the result's members, or the error.
    Task(Result<String, RpcError>),
}

#[derive(Debug)]
pub struct RequestMsg {
    pub from: usize,
    pub corr: u64,
    pub body: Request,
}

#[derive(Debug)]
pub struct ReplyMsg {
    pub corr: u64,
    pub body: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshError {
    /// The queue to the owner, or this shard's pending table, is full.
    Overloaded,
    /// No reply within the deadline.
    Timeout,
    /// The owner's executor is gone.
    PeerGone,
}

/// What every executor needs to join the two meshes; cloned into each thread.
#[derive(Clone)]
pub struct MeshBuilders {
    requests: MeshBuilder<RequestMsg, Full>,
    replies: MeshBuilder<ReplyMsg, Full>,
}

impl MeshBuilders {
    pub fn new(shards: usize, queue_depth: usize) -> Self {
        Self {
            requests: MeshBuilder::full(shards, queue_depth),
            replies: MeshBuilder::full(shards, queue_depth),
        }
    }

    /// Joins both meshes; resolves once every shard has joined.
    pub async fn join(self) -> Result<Joined, String> {
        let (req_tx, req_rx) = self
            .requests
            .join()
            .await
            .map_err(|e| format!("joining the request mesh: {e}"))?;
        let (rep_tx, rep_rx) = self
            .replies
            .join()
            .await
            .map_err(|e| format!("joining the reply mesh: {e}"))?;
        Ok(Joined {
            req_tx,
            req_rx,
            rep_tx,
            rep_rx,
        })
    }
}

pub struct Joined {
    pub req_tx: Senders<RequestMsg>,
    pub req_rx: Receivers<RequestMsg>,
    pub rep_tx: Senders<ReplyMsg>,
    pub rep_rx: Receivers<ReplyMsg>,
}

/// Who waits for replies to one request.
enum Waiter {
    /// A single reply.
    Once(OneshotSender<Reply>),
    /// A stream of replies (HTTP relays), until `HttpFrame::End`.
    Stream(Rc<Pipe<Reply>>),
}

/// What became of an incoming reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Nobody waits for it (the caller timed out or cancelled).
    Unclaimed,
    /// A relayed stream's consumer fell `stream_depth` frames behind; the
    /// stream was cut and the sender must be told to stop.
    Overflowed,
}

/// This shard's end of the mesh.
pub struct Mesh {
    me: usize,
    /// Shard id -> peer id in this mesh.
    peers: Vec<usize>,
    req_tx: Senders<RequestMsg>,
    rep_tx: Senders<ReplyMsg>,
    /// Correlation id -> (the shard asked, who waits for the reply).
    pending: RefCell<HashMap<u64, (usize, Waiter)>>,
    next_corr: Cell<u64>,
    pending_max: usize,
    timeout: Duration,
}

impl Mesh {
    pub fn new(
        me: usize,
        peers: Vec<usize>,
        req_tx: Senders<RequestMsg>,
        rep_tx: Senders<ReplyMsg>,
        pending_max: usize,
        timeout: Duration,
    ) -> Self {
        debug_assert_eq!(
            peers[me],
            req_tx.peer_id(),
            "the main thread's peer map is wrong"
        );
        Self {
            me,
            peers,
            req_tx,
            rep_tx,
            pending: RefCell::new(HashMap::new()),
            next_corr: Cell::new(0),
            pending_max,
            timeout,
        }
    }

    /// This shard's id.
    pub fn me(&self) -> usize {
        self.me
    }

    /// The shard behind a peer id of this mesh.
    pub fn shard_of_peer(&self, peer: usize) -> usize {
        self.peers.iter().position(|&p| p == peer).unwrap_or(peer)
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

    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Requests awaiting a reply, by the shard they were sent to (`shards`
    /// entries): the depth of each pair's request queue as seen from here.
    pub fn pending_per_shard(&self, shards: usize) -> Vec<u64> {
        let mut out = vec![0u64; shards];
        for (to, _) in self.pending.borrow().values() {
            if let Some(n) = out.get_mut(*to) {
                *n += 1;
            }
        }
        out
    }

    /// Sends `body` to shard `to`. Fails at once if the request cannot be
    /// queued; otherwise returns a future for the reply that also enforces
    /// the hop deadline.
    pub fn call(
        self: &Rc<Self>,
        to: usize,
        body: Request,
    ) -> Result<impl Future<Output = Result<Reply, MeshError>> + 'static, MeshError> {
        let corr = self.send_request(to, body)?;
        let (tx, rx) = oneshot();
        self.pending
            .borrow_mut()
            .insert(corr, (to, Waiter::Once(tx)));
        let mesh = self.clone();
        let timeout = self.timeout;
        Ok(async move {
            let reply =
                futures_lite::future::or(async { rx.await.ok_or(MeshError::PeerGone) }, async {
                    glommio::timer::sleep(timeout).await;
                    Err(MeshError::Timeout)
                })
                .await;
            if reply.is_err() {
                // A reply that arrives after the deadline finds no entry and is dropped.
                mesh.pending.borrow_mut().remove(&corr);
            }
            reply
        })
    }

    fn send_request(&self, to: usize, body: Request) -> Result<u64, MeshError> {
        if self.pending.borrow().len() >= self.pending_max {
            return Err(MeshError::Overloaded);
        }
        let corr = self.next_corr.get();
        // NO_REPLY is never a real correlation id.
        self.next_corr.set((corr + 1) % NO_REPLY);
        let msg = RequestMsg {
            from: self.me,
            corr,
            body,
        };
        match self.req_tx.try_send_to(self.peers[to], msg) {
            Ok(()) => Ok(corr),
            Err(GlommioError::WouldBlock(_)) => Err(MeshError::Overloaded),
            Err(_) => Err(MeshError::PeerGone),
        }
    }

    /// Sends `body` to shard `to` and returns its correlation id and the pipe
    /// its stream of replies arrives in (at most `depth` queued).
    pub fn call_stream(
        &self,
        to: usize,
        body: Request,
        depth: usize,
    ) -> Result<(u64, Rc<Pipe<Reply>>), MeshError> {
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

    /// Sends `body` to shard `to` without waiting for (or wanting) a reply.
    /// A full queue refuses it at once.
    pub fn tell(&self, to: usize, body: Request) -> Result<(), MeshError> {
        let msg = RequestMsg {
            from: self.me,
            corr: NO_REPLY,
            body,
        };
        match self.req_tx.try_send_to(self.peers[to], msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(_)) => Err(MeshError::Overloaded),
            Err(_) => Err(MeshError::PeerGone),
        }
    }

    /// Delivers a reply to whoever waits for it.
    pub fn complete(&self, msg: ReplyMsg) -> Delivery {
        let mut pending = self.pending.borrow_mut();
        let stream = match pending.get(&msg.corr) {
            None => return Delivery::Unclaimed,
            Some((_, Waiter::Stream(p))) => p.clone(),
            Some((_, Waiter::Once(_))) => {
                if let Some((_, Waiter::Once(tx))) = pending.remove(&msg.corr) {
                    drop(pending);
                    tx.send(msg.body);
                }
                return Delivery::Delivered;
            }
        };
        let last = matches!(msg.body, Reply::Http(HttpFrame::End));
        let pushed = if last {
            stream.push_final(msg.body)
        } else {
            stream.push(msg.body)
        };
        match pushed {
            Ok(()) if !last => Delivery::Delivered,
            Ok(()) => {
                pending.remove(&msg.corr);
                Delivery::Delivered
            }
            Err(PushError::Closed) => {
                pending.remove(&msg.corr);
                Delivery::Unclaimed
            }
            Err(PushError::Full) => {
                pending.remove(&msg.corr);
                stream.close();
                Delivery::Overflowed
            }
        }
    }

    /// Sends a reply back to the shard that asked; waits for queue room, which
    /// the peer's reply loop always makes (it never blocks).
    pub async fn reply(&self, to: usize, corr: u64, body: Reply) -> Result<(), MeshError> {
        self.rep_tx
            .send_to(self.peers[to], ReplyMsg { corr, body })
            .await
            .map_err(|_| MeshError::PeerGone)
    }
}
