//! The shard: all state one core owns.
//!
//! A `Shard` is created inside its executor thread and never leaves it (it is
//! `!Send` by construction: `Rc`, `RefCell`). Connections on this core share
//! it through an `Rc`; nothing else can reach it. Cross-core work goes through
//! `mesh` only.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::Waker;

use super::local::Flag;
use glommio::channels::channel_mesh::Receivers;

use super::mesh::{Mesh, MeshError, Reply, ReplyMsg, Request, RequestMsg};
use crate::config::Limits;
use crate::metrics::ShardMetrics;
use crate::protocol::{Parser, PARSE_PADDING};
use crate::server::kv::KvStore;
use crate::server::tools::Registry;

/// Bytes read from a socket in one call. Every connection on the core reads
/// into the same scratch buffer of this size, so an idle connection holds no
/// read buffer at all.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Buffers shared by the connections of one core. Only one connection runs at
/// a time, so one set serves them all.
pub struct Scratch {
    /// `READ_CHUNK_BYTES` plus parser padding.
    pub read: Vec<u8>,
    /// Responses of the batch being processed, before they are written.
    pub write: Vec<u8>,
}

/// The shard's view of one live connection: what async handlers need to
/// hand back a response, and what shutdown needs to wake it.
#[derive(Default)]
pub struct ConnHandle {
    /// Encoded responses finished by async handlers, not yet written.
    pub ready: RefCell<Vec<u8>>,
    /// Requests whose handlers are still running.
    pub inflight: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl ConnHandle {
    /// Records the connection task's waker; cheap when it has not changed.
    pub fn set_waker(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Called by an async handler when its response is encoded.
    pub fn complete(&self, response: &[u8]) {
        self.ready.borrow_mut().extend_from_slice(response);
        self.inflight.set(self.inflight.get() - 1);
        self.wake();
    }
}

/// Live connections, so shutdown can wake every one of them.
#[derive(Default)]
pub struct ConnTable {
    slots: RefCell<Vec<Option<Rc<ConnHandle>>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

impl ConnTable {
    pub fn register(&self, handle: Rc<ConnHandle>) -> usize {
        self.live.set(self.live.get() + 1);
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = self.free.borrow_mut().pop() {
            slots[slot] = Some(handle);
            return slot;
        }
        slots.push(Some(handle));
        slots.len() - 1
    }

    pub fn unregister(&self, slot: usize) {
        self.slots.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
        self.live.set(self.live.get() - 1);
    }

    pub fn live(&self) -> usize {
        self.live.get()
    }

    pub fn wake_all(&self) {
        let handles: Vec<Rc<ConnHandle>> = self.slots.borrow().iter().flatten().cloned().collect();
        for h in handles {
            h.wake();
        }
    }
}

pub struct Shard {
    /// This shard's id: its index in the mesh, the value `kv::owner` returns.
    pub id: usize,
    /// The CPU this shard's executor is pinned to.
    pub core: usize,
    pub shard_count: usize,
    pub limits: Limits,
    /// Tools, identical on every shard.
    pub registry: Registry,
    /// The keys this shard owns.
    pub kv: RefCell<KvStore>,
    pub metrics: RefCell<ShardMetrics>,
    pub parser: RefCell<Parser>,
    pub scratch: RefCell<Scratch>,
    pub mesh: Option<Rc<Mesh>>,
    pub conns: ConnTable,
    /// Raised when the shard stops accepting and drains.
    pub shutdown: Flag,
}

impl Shard {
    pub fn new(
        id: usize,
        core: usize,
        shard_count: usize,
        limits: Limits,
        registry: Registry,
        mesh: Option<Rc<Mesh>>,
    ) -> Self {
        Self {
            id,
            core,
            shard_count,
            kv: RefCell::new(KvStore::new(limits.kv_max_keys_per_shard)),
            limits,
            registry,
            metrics: RefCell::new(ShardMetrics::new()),
            parser: RefCell::new(Parser::new()),
            scratch: RefCell::new(Scratch {
                read: vec![0; READ_CHUNK_BYTES + PARSE_PADDING],
                write: Vec::with_capacity(READ_CHUNK_BYTES),
            }),
            mesh,
            conns: ConnTable::default(),
            shutdown: Flag::default(),
        }
    }

    /// A single shard with no mesh, for benchmarks and unit tests that drive
    /// the protocol without an executor.
    pub fn standalone(limits: Limits, registry: Registry) -> Self {
        Self::new(0, 0, 1, limits, registry, None)
    }

    /// Sends `req` to the shard that owns it and returns a future for the
    /// reply. Errors at once when the hop cannot even be queued.
    pub fn mesh_call(
        &self,
        owner: usize,
        req: Request,
    ) -> Result<impl Future<Output = Result<Reply, MeshError>> + 'static, MeshError> {
        debug_assert_ne!(owner, self.id, "local work must not cross the mesh");
        let Some(mesh) = &self.mesh else {
            return Err(MeshError::PeerGone);
        };
        let r = mesh.call(owner, req);
        let mut m = self.metrics.borrow_mut();
        match &r {
            Ok(_) => m.counters.mesh_requests_sent += 1,
            Err(MeshError::Overloaded) => m.counters.mesh_overloaded += 1,
            Err(_) => {}
        }
        r
    }

    /// Serves a request another shard sent us.
    pub fn serve_remote(&self, req: Request) -> Reply {
        self.metrics.borrow_mut().counters.mesh_requests_served += 1;
        match req {
            Request::Kv(op) => {
                let reply = self.kv.borrow_mut().apply(op);
                if matches!(reply, crate::server::kv::KvReply::Full { .. }) {
                    self.metrics.borrow_mut().counters.kv_full += 1;
                }
                Reply::Kv(reply)
            }
        }
    }
}

/// Starts the tasks that serve this shard's end of the mesh: one request
/// server and one reply loop per peer.
pub fn spawn_mesh_tasks(
    shard: &Rc<Shard>,
    mut req_rx: Receivers<RequestMsg>,
    mut rep_rx: Receivers<ReplyMsg>,
) {
    let mesh = shard.mesh.clone().expect("mesh tasks need a mesh");
    for (from, rx) in req_rx.streams() {
        let shard = shard.clone();
        let mesh = mesh.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                debug_assert_eq!(msg.from, from);
                let reply = shard.serve_remote(msg.body);
                if mesh.reply(msg.from, msg.corr, reply).await.is_err() {
                    // The asking shard is gone; nobody is left to answer.
                    break;
                }
            }
        })
        .detach();
    }
    for (_, rx) in rep_rx.streams() {
        let shard = shard.clone();
        let mesh = mesh.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                if !mesh.complete(msg) {
                    log::debug!(
                        "shard {}: late mesh reply dropped (its caller timed out)",
                        shard.id
                    );
                }
            }
        })
        .detach();
    }
}
