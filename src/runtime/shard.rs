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

use std::collections::HashMap;
use std::pin::Pin;

use super::local::Flag;
use glommio::channels::channel_mesh::Receivers;

use super::supervisor::Dice;
use crate::config::Chaos;
use crate::server::ratelimit::{Principal, RateTable, Verdict};

use super::mesh::{
    Delivery, Joined, Mesh, MeshError, Reply, ReplyMsg, Request, RequestMsg, NO_REPLY,
};
use crate::config::{HttpConfig, Limits};
use crate::metrics::ShardMetrics;
use crate::protocol::{Parser, PARSE_PADDING};
use crate::server::kv::{self, KvOp, KvReply, KvStore};
use crate::server::listen::Listener;
use crate::server::mrtr::StateKey;
use crate::server::registry::Registry;
use crate::server::resources::{self, WatchTable};
use crate::server::tasks::TaskTable;
use crate::server::SharedNotifier;

/// Where a kv operation went.
pub enum Routed {
    /// This shard owns the key; the reply is here.
    Local(KvReply),
    /// The owner (second field) will reply.
    Remote(
        Pin<Box<dyn Future<Output = Result<KvReply, MeshError>>>>,
        usize,
    ),
    /// The hop to the owner (second field) could not even start.
    Failed(MeshError, usize),
}

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
/// hand back a response, what notifications need to reach the client, and
/// what shutdown needs to wake it.
pub struct ConnHandle {
    /// Encoded responses finished by async handlers, not yet written.
    pub ready: RefCell<Vec<u8>>,
    /// Requests whose handlers are still running.
    pub inflight: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    /// `ready` beyond this drops notifications (not responses).
    max_ready_bytes: usize,
    shard: std::rc::Weak<Shard>,
    /// Subject to `idle_timeout_ms` (TCP connections).
    pub idle_tracked: Cell<bool>,
    /// Messages completed so far; the idle sweep watches it move.
    pub messages: Cell<u64>,
    /// Idle-sweep bookkeeping: the count at the last sweep, and how many
    /// sweeps in a row saw no message and nothing in flight.
    pub seen_messages: Cell<u64>,
    pub quiet_sweeps: Cell<u32>,
    /// Set by the sweep: the connection must close.
    pub expired: Cell<bool>,
}

impl ConnHandle {
    pub fn new(shard: &Rc<Shard>) -> Self {
        Self {
            ready: RefCell::new(Vec::new()),
            inflight: Cell::new(0),
            waker: RefCell::new(None),
            max_ready_bytes: shard.limits.max_output_buffer_bytes,
            shard: Rc::downgrade(shard),
            idle_tracked: Cell::new(false),
            messages: Cell::new(0),
            seen_messages: Cell::new(0),
            quiet_sweeps: Cell::new(0),
            expired: Cell::new(false),
        }
    }

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

    /// Queues a response an async handler finished (possibly empty).
    pub fn respond(&self, response: &[u8]) {
        if response.is_empty() {
            return;
        }
        self.ready.borrow_mut().extend_from_slice(response);
        self.wake();
    }

    /// An async handler counted in `inflight` ended (answered or cancelled).
    pub fn finish_one(&self) {
        self.inflight.set(self.inflight.get() - 1);
        self.wake();
    }
}

impl crate::server::Notifier for ConnHandle {
    /// Queues a server-initiated message as one NDJSON line.
    fn notify(&self, message: &[u8]) {
        let mut ready = self.ready.borrow_mut();
        if ready.len() + message.len() > self.max_ready_bytes {
            if let Some(shard) = self.shard.upgrade() {
                shard.metrics.borrow_mut().counters.notifications_dropped += 1;
            }
            return;
        }
        ready.extend_from_slice(message);
        ready.push(b'\n');
        drop(ready);
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

    /// Every live connection's handle.
    pub fn handles(&self) -> Vec<Rc<ConnHandle>> {
        self.slots.borrow().iter().flatten().cloned().collect()
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
    /// Tools, resources and prompts: the same definitions on every shard,
    /// each shard with its own copy.
    pub registry: Registry,
    /// Signs cursors and multi-round request state. The same key on every
    /// shard, so a later round may land on any of them.
    pub state_key: StateKey,
    /// Watchers of the resource URIs this shard owns (`watch_owner`).
    pub watches: RefCell<WatchTable>,
    /// Legacy sessions on this shard that hear list changes, by subscriber id.
    pub legacy_sessions: RefCell<HashMap<u64, SharedNotifier>>,
    /// Modern `subscriptions/listen` streams on this shard, by subscriber id.
    pub listeners: RefCell<HashMap<u64, Listener>>,
    /// Tasks this shard owns (their ids name it).
    pub tasks: RefCell<TaskTable>,
    /// The keys this shard owns.
    pub kv: RefCell<KvStore>,
    pub metrics: RefCell<ShardMetrics>,
    pub parser: RefCell<Parser>,
    /// While a transport handles a batch of messages in one go: when the
    /// previous message of the batch finished. Each message is timed from
    /// there, so a batch costs one clock read per message instead of two.
    pub batch_clock: Cell<Option<std::time::Instant>>,
    pub scratch: RefCell<Scratch>,
    /// This shard's end of the mesh; replaced when the mesh is rebuilt after
    /// a peer shard was restarted (`rejoin_mesh`).
    mesh: RefCell<Option<Rc<Mesh>>>,
    /// The tasks serving the current mesh's receivers; dropping them (at a
    /// rebuild) stops them.
    mesh_tasks: RefCell<Vec<glommio::Task<()>>>,
    pub conns: ConnTable,
    /// Fault injection settings (off unless `--chaos-*` is given).
    pub chaos: Cell<Chaos>,
    pub dice: Dice,
    /// Rate-limit buckets of HTTP principals served here.
    pub rate: RefCell<RateTable>,
    /// Listening and connected sockets this shard serves. If the executor
    /// dies, glommio 0.9 leaks its tasks (and the sockets in them) instead of
    /// dropping them; the thread shuts these down so clients see the
    /// connection end and the kernel stops queueing connections for a
    /// listener nobody accepts on.
    sockets: RefCell<std::collections::HashSet<std::os::fd::RawFd>>,
    /// Streamable HTTP settings, when `--http` is on.
    pub http: Option<Rc<HttpConfig>>,
    /// `--auth`: TCP and stdio sessions must authenticate with these (HTTP
    /// reads its copy in `http`).
    pub auth: Option<std::sync::Arc<crate::server::auth::AuthConfig>>,
    /// This shard's audit lines waiting for the writer (`--audit-log`).
    pub audit: RefCell<Option<crate::server::audit::AuditBuffer>>,
    /// This shard's persistence buffer and writer (`--data-dir`).
    pub store: RefCell<Option<crate::runtime::store::ShardStore>>,
    /// Legacy HTTP sessions this shard owns, by id.
    pub sessions: RefCell<HashMap<String, Rc<crate::transport::http::session::HttpSession>>>,
    /// HTTP responses this shard is streaming to other shards, by (asking
    /// shard, correlation id); dropping one cancels it.
    pub relays: RefCell<HashMap<(usize, u64), glommio::Task<()>>>,
    /// Sessions that subscribed to something, by subscriber id.
    pub subscribers: RefCell<HashMap<u64, SharedNotifier>>,
    next_subscriber: Cell<u64>,
    next_scope: Cell<u64>,
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
        state_key: StateKey,
        mesh: Option<Rc<Mesh>>,
        http: Option<HttpConfig>,
        auth: Option<std::sync::Arc<crate::server::auth::AuthConfig>>,
    ) -> Self {
        let rate = RateTable::new(limits.rate_limit_max_principals);
        Self {
            id,
            core,
            shard_count,
            kv: RefCell::new(KvStore::new(limits.kv_max_keys_per_shard)),
            watches: RefCell::new(WatchTable::new(limits.max_watchers_per_key)),
            tasks: RefCell::new(TaskTable::new(
                id,
                limits.max_tasks_per_shard,
                limits.task_ttl_ms,
            )),
            limits,
            registry,
            state_key,
            legacy_sessions: RefCell::new(HashMap::new()),
            listeners: RefCell::new(HashMap::new()),
            metrics: RefCell::new(ShardMetrics::new()),
            parser: RefCell::new(Parser::new()),
            batch_clock: Cell::new(None),
            scratch: RefCell::new(Scratch {
                read: vec![0; READ_CHUNK_BYTES + PARSE_PADDING],
                write: Vec::with_capacity(READ_CHUNK_BYTES),
            }),
            mesh: RefCell::new(mesh),
            mesh_tasks: RefCell::new(Vec::new()),
            conns: ConnTable::default(),
            chaos: Cell::new(Chaos::default()),
            dice: Dice::new(
                (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            ),
            rate: RefCell::new(rate),
            sockets: RefCell::new(Default::default()),
            auth,
            audit: RefCell::new(None),
            store: RefCell::new(None),
            http: http.map(Rc::new),
            sessions: RefCell::new(HashMap::new()),
            relays: RefCell::new(HashMap::new()),
            subscribers: RefCell::new(HashMap::new()),
            next_subscriber: Cell::new(1),
            // Scopes name sessions to their tasks, and both outlive a
            // restart with --data-dir: start past any earlier run's.
            next_scope: Cell::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| (d.as_millis() as u64) << 10),
            ),
            shutdown: Flag::default(),
        }
    }

    /// Sleeps for `period`; true (at once) when shutdown began instead.
    /// Periodic per-shard tasks loop on it and end with the shard.
    pub async fn sleep_unless_shutdown(&self, period: std::time::Duration) -> bool {
        futures_lite::future::or(
            async {
                glommio::timer::sleep(period).await;
                false
            },
            async {
                self.shutdown.wait().await;
                true
            },
        )
        .await
    }

    pub fn track_socket(&self, fd: std::os::fd::RawFd) {
        self.sockets.borrow_mut().insert(fd);
    }

    pub fn untrack_socket(&self, fd: std::os::fd::RawFd) {
        self.sockets.borrow_mut().remove(&fd);
    }

    /// After the executor died: ends every socket it served (see `sockets`).
    /// Shut down, not closed: the leaked tasks still own the descriptors.
    pub fn shutdown_sockets(&self) -> usize {
        let fds: Vec<_> = self.sockets.borrow_mut().drain().collect();
        for &fd in &fds {
            // SAFETY: shutdown(2) on a descriptor this shard opened and never
            // closed (the task owning it was leaked, not dropped).
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        fds.len()
    }

    /// After the executor died: drops the plain-data state its leaked tasks
    /// would keep alive (keys, watchers, rate buckets, buffers). Anything
    /// holding glommio objects (sessions, tasks, mesh, relays) must stay:
    /// dropping those outside their executor panics inside a destructor.
    pub fn release_state(&self) {
        let l = &self.limits;
        *self.kv.borrow_mut() = KvStore::new(l.kv_max_keys_per_shard);
        *self.watches.borrow_mut() = WatchTable::new(l.max_watchers_per_key);
        *self.rate.borrow_mut() = RateTable::new(l.rate_limit_max_principals);
        let mut scratch = self.scratch.borrow_mut();
        scratch.read = Vec::new();
        scratch.write = Vec::new();
    }

    /// This shard's current end of the mesh (none with one shard).
    /// What this shard holds right now, for the admin endpoint.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let mesh_pending = self
            .mesh()
            .map(|m| {
                m.pending_per_shard(self.shard_count)
                    .into_iter()
                    .enumerate()
                    .filter(|&(to, _)| to != self.id)
                    .map(|(to, n)| (self.id, to, n))
                    .collect()
            })
            .unwrap_or_default();
        crate::metrics::Gauges {
            connections: self.conns.live() as u64,
            http_sessions: self.sessions.borrow().len() as u64,
            tasks: self.tasks.borrow().len() as u64,
            kv_keys: self.kv.borrow().len() as u64,
            mesh_pending,
        }
    }

    pub fn mesh(&self) -> Option<Rc<Mesh>> {
        self.mesh.borrow().clone()
    }

    /// Whether a chaos roll says this tool call should panic.
    pub fn chaos_tool_panic(&self) -> bool {
        self.dice.roll(self.chaos.get().panic_rate)
    }

    /// Whether a chaos roll says the connection handler should panic now.
    pub fn chaos_conn_panic(&self) -> bool {
        self.dice.roll(self.chaos.get().conn_panic_rate)
    }

    /// Checks the rate limit of an HTTP principal; `Err(retry_after)` when
    /// over it. Always `Ok` with rate limiting off.
    pub fn rate_check(
        &self,
        who: &Principal,
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        let rate = self.limits.rate_limit_per_sec;
        if rate == 0 {
            return Ok(());
        }
        let verdict = self
            .rate
            .borrow_mut()
            .check(who, now, rate, self.limits.rate_burst());
        let mut m = self.metrics.borrow_mut();
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Untracked => {
                m.counters.rate_table_full += 1;
                Ok(())
            }
            Verdict::Deny(wait) => {
                m.counters.rate_limited += 1;
                Err(wait)
            }
        }
    }

    /// Replaces this shard's end of the mesh with a freshly joined one and
    /// starts serving it. Everything still waiting on the old mesh fails
    /// (its callers answer their clients with an error); returns how many.
    pub fn install_mesh(self: &Rc<Self>, joined: Joined, peers: Vec<usize>) -> usize {
        let mesh = Rc::new(Mesh::new(
            self.id,
            peers,
            joined.req_tx,
            joined.rep_tx,
            self.limits.mesh_pending_max,
            self.limits.mesh_timeout(),
        ));
        let old = self.mesh.replace(Some(mesh));
        // Dropping the old receivers' tasks stops them; their queues go with them.
        self.mesh_tasks.borrow_mut().clear();
        // Relayed HTTP streams were addressed over the old mesh.
        self.relays.borrow_mut().clear();
        let lost = old.map_or(0, |m| m.fail_all());
        spawn_mesh_tasks(self, joined.req_rx, joined.rep_rx);
        lost
    }

    /// A single shard with no mesh, for benchmarks and unit tests that drive
    /// the protocol without an executor.
    pub fn standalone(limits: Limits, registry: Registry) -> Self {
        Self::new(
            0,
            0,
            1,
            limits,
            registry,
            StateKey::random(),
            None,
            None,
            None,
        )
    }

    /// Sends `req` to the shard that owns it and returns a future for the
    /// reply. Errors at once when the hop cannot even be queued.
    pub fn mesh_call(
        &self,
        owner: usize,
        req: Request,
    ) -> Result<impl Future<Output = Result<Reply, MeshError>> + 'static, MeshError> {
        debug_assert_ne!(owner, self.id, "local work must not cross the mesh");
        let Some(mesh) = self.mesh() else {
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

    /// Sends `req` to shard `to` without a reply. A full queue drops it and
    /// counts the drop (`mesh_dropped`): callers only tell what the receiver
    /// can do without (notifications, unsubscribes).
    pub fn tell(&self, to: usize, req: Request) {
        let Some(mesh) = self.mesh() else {
            return;
        };
        if mesh.tell(to, req).is_err() {
            self.metrics.borrow_mut().counters.mesh_dropped += 1;
        }
    }

    /// Runs a kv operation at the key's owner: here, synchronously, when this
    /// shard owns it; otherwise over the mesh.
    pub fn kv_route(self: &Rc<Self>, op: KvOp) -> Routed {
        let owner = kv::owner(op.key(), self.shard_count);
        if owner == self.id {
            return Routed::Local(self.kv_execute(op));
        }
        match self.mesh_call(owner, Request::Kv(op)) {
            Ok(call) => Routed::Remote(
                Box::pin(async move {
                    match call.await? {
                        Reply::Kv(r) => Ok(r),
                        _ => Err(MeshError::PeerGone),
                    }
                }),
                owner,
            ),
            Err(e) => Routed::Failed(e, owner),
        }
    }

    /// Like [`Shard::kv_route`] for operations that need no answer.
    pub fn kv_tell(self: &Rc<Self>, op: KvOp) {
        let owner = kv::owner(op.key(), self.shard_count);
        if owner == self.id {
            self.kv_execute(op);
        } else {
            self.tell(owner, Request::Kv(op));
        }
    }

    /// Applies a kv operation to the keys this shard owns and tells the
    /// key's watchers when its value changed.
    pub fn kv_execute(self: &Rc<Self>, op: KvOp) -> KvReply {
        debug_assert_eq!(kv::owner(op.key(), self.shard_count), self.id);
        let uri = resources::uri_of(op.key());
        let (reply, changed) = self.kv.borrow_mut().apply(op);
        if matches!(reply, KvReply::Full { .. }) {
            self.metrics.borrow_mut().counters.kv_full += 1;
        }
        if changed {
            resources::notify_watchers(self, &uri);
        }
        reply
    }

    /// A fresh id for a legacy session (scopes its tasks).
    pub fn next_session_scope(&self) -> u64 {
        let id = self.next_scope.get();
        self.next_scope.set(id + 1);
        id
    }

    /// Adds a session that receives server-initiated notifications.
    pub fn register_subscriber(&self, notifier: SharedNotifier) -> u64 {
        let id = self.next_subscriber.get();
        self.next_subscriber.set(id + 1);
        self.subscribers.borrow_mut().insert(id, notifier);
        id
    }

    /// Serves a request another shard sent us; `None` when it wants no reply.
    pub fn serve_remote(self: &Rc<Self>, from: usize, corr: u64, req: Request) -> Option<Reply> {
        self.metrics.borrow_mut().counters.mesh_requests_served += 1;
        match req {
            Request::Kv(op) => Some(Reply::Kv(self.kv_execute(op))),
            Request::Notify { uri, subscribers } => {
                resources::deliver(self, &uri, &subscribers);
                None
            }
            Request::Http(call) => {
                crate::transport::http::forward::serve(self, from, corr, *call);
                None
            }
            Request::HttpCancel { stream } => {
                crate::transport::http::forward::cancel(self, from, stream);
                None
            }
            Request::Watch { uri, watcher } => {
                let r = self.watches.borrow_mut().watch(&uri, watcher);
                if r.is_err() {
                    self.metrics.borrow_mut().counters.kv_full += 1;
                }
                Some(Reply::Watched(r))
            }
            Request::Unwatch { uri, watcher } => {
                self.watches.borrow_mut().unwatch(&uri, watcher);
                None
            }
            Request::Task(op) => Some(Reply::Task(crate::server::tasks::execute(self, op))),
            Request::Updated { uri } => {
                resources::notify_watchers(self, &uri);
                None
            }
            Request::SetEnabled {
                kind,
                name,
                on,
                broadcast,
            } => {
                crate::server::apply_enabled(self, kind, &name, on, broadcast);
                None
            }
        }
    }
}

/// Starts the tasks that serve this shard's end of the mesh: one request
/// server and one reply loop per peer.
fn spawn_mesh_tasks(
    shard: &Rc<Shard>,
    mut req_rx: Receivers<RequestMsg>,
    mut rep_rx: Receivers<ReplyMsg>,
) {
    let mesh = shard.mesh().expect("mesh tasks need a mesh");
    let mut tasks = shard.mesh_tasks.borrow_mut();
    for (_peer, rx) in req_rx.streams() {
        let shard = shard.clone();
        let mesh = mesh.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let Some(reply) = shard.serve_remote(msg.from, msg.corr, msg.body) else {
                    continue;
                };
                if msg.corr == NO_REPLY {
                    continue;
                }
                if mesh.reply(msg.from, msg.corr, reply).await.is_err() {
                    // The asking shard is gone; nobody is left to answer.
                    break;
                }
            }
        }));
    }
    for (peer, rx) in rep_rx.streams() {
        let shard = shard.clone();
        let mesh = mesh.clone();
        let from = mesh.shard_of_peer(peer);
        tasks.push(glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let corr = msg.corr;
                match mesh.complete(msg) {
                    Delivery::Delivered => {}
                    Delivery::Unclaimed => {
                        log::debug!(
                            "shard {}: unclaimed mesh reply dropped (its caller is gone)",
                            shard.id
                        )
                    }
                    Delivery::Overflowed => {
                        shard.metrics.borrow_mut().counters.sse_streams_cut += 1;
                        shard.tell(from, Request::HttpCancel { stream: corr });
                    }
                }
            }
        }));
    }
}
