//! `Core`: the MCP service's state on one shard, and what it needs from the
//! layers around it (a link to the other shards, a store, an audit sink).
//!
//! One `Core` per executor, created inside its thread and never leaving it
//! (`Rc`/`RefCell`, `!Send` by construction). Sessions, handlers and the
//! transports on this core reach it through an `Rc`. Every table in it is
//! bounded by a field of [`Limits`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::audit::AuditSink;
use super::auth::AuthConfig;
use super::kv::{self, KvOp, KvReply, KvStore};
use super::listen::Listener;
use super::mrtr::StateKey;
use super::msg::{Link, LinkCall, Msg};
use super::ratelimit::{Principal, RateTable, Verdict};
use super::registry::Registry;
use super::store::Store;
use super::tasks::TaskTable;
use super::trace::AttrValue;
use super::watch::{self, WatchTable};
use super::SharedNotifier;
use crate::metrics::ShardMetrics;
use crate::protocol::Parser;
use crate::runtime::local::Flag;
use crate::runtime::mesh::MeshError;
use crate::runtime::supervisor::Dice;

/// The bounds the MCP layer enforces; see the public `config::Limits` for
/// what each does at its bound.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub kv_max_keys_per_shard: usize,
    pub kv_max_key_bytes: usize,
    pub kv_max_value_bytes: usize,
    pub max_subscriptions_per_session: usize,
    pub max_watchers_per_key: usize,
    pub max_client_requests: usize,
    pub client_request_timeout_ms: u64,
    pub page_size: usize,
    pub mrtr_state_ttl_ms: u64,
    pub max_tasks_per_shard: usize,
    pub task_ttl_ms: u64,
    pub rate_limit_per_sec: u32,
    /// Tokens a principal's bucket holds when full (never 0 while rate
    /// limiting is on).
    pub rate_limit_burst: u32,
    pub rate_limit_max_principals: usize,
    /// How long a cross-core hop may take (named in its error).
    pub mesh_timeout_ms: u64,
}

impl Limits {
    pub fn client_request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.client_request_timeout_ms)
    }
}

/// Fault injection in the MCP layer (off unless `--chaos-*` is given).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FaultRates {
    /// Fraction of tool calls whose handler panics.
    pub tool_panic: f64,
    /// Fraction of token checks that panic (TCP/stdio `_meta.authorization`).
    pub auth_panic: f64,
}

/// What a shard's MCP service is built from.
pub(crate) struct CoreParts {
    pub id: usize,
    pub shard_count: usize,
    pub limits: Limits,
    pub registry: Registry,
    pub state_key: StateKey,
    pub auth: Option<AuthConfig>,
    pub faults: FaultRates,
    pub shutdown: Rc<Flag>,
}

/// Where a subscriber's notifications go, and what it still wants.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub notifier: SharedNotifier,
    pub wants: Option<Rc<RefCell<std::collections::HashSet<Box<str>>>>>,
}

pub(crate) struct Core {
    /// This shard's id: its index in the mesh, what `kv::owner` returns.
    pub id: usize,
    pub shard_count: usize,
    pub limits: Limits,
    /// Tools, resources and prompts: the same definitions on every shard,
    /// each shard with its own copy; replaced whole by a reload.
    registry: RefCell<Rc<Registry>>,
    /// Signs cursors and multi-round request state; the same key on every
    /// shard, so a later round may land on any of them.
    pub state_key: StateKey,
    /// `--auth`: this shard's own copy of the token and role tables;
    /// replaced whole by a reload ([`Core::set_auth`]).
    auth: RefCell<Option<Rc<AuthConfig>>>,
    /// `--rate-limit-per-sec` and its burst, in force (a reload changes
    /// them; `limits` keeps the values the shard started with).
    rate_limit: Cell<(u32, u32)>,
    /// Counts replacements of `auth`: a session that checked its caller
    /// under an older generation checks again.
    auth_generation: Cell<u64>,
    /// Watchers of the resource URIs this shard owns (`watch::owner`).
    pub watches: RefCell<WatchTable>,
    /// Sessions and listen streams that subscribed to something, by id.
    pub subscribers: RefCell<HashMap<u64, Subscriber>>,
    /// Legacy sessions on this shard that hear list changes, by subscriber id.
    pub legacy_sessions: RefCell<HashMap<u64, SharedNotifier>>,
    /// Modern `subscriptions/listen` streams on this shard, by subscriber id.
    pub listeners: RefCell<HashMap<u64, Listener>>,
    /// Tasks this shard owns (their ids name it).
    pub tasks: RefCell<TaskTable>,
    /// The keys this shard owns.
    pub kv: RefCell<KvStore>,
    /// Rate-limit buckets of HTTP principals served here.
    pub rate: RefCell<RateTable>,
    pub metrics: RefCell<ShardMetrics>,
    pub parser: RefCell<Parser>,
    faults: FaultRates,
    dice: Dice,
    /// `--audit-log`: where this shard's audit lines go.
    pub audit: RefCell<Option<Box<dyn AuditSink>>>,
    /// `--data-dir`: where this shard's tasks are kept.
    pub store: RefCell<Option<Rc<dyn Store>>>,
    /// `--cluster`: the kv store and resource changes shared with the other
    /// nodes.
    pub shared: RefCell<Option<Rc<dyn super::shared::Shared>>>,
    /// The other shards (none with one shard, or while the mesh is rebuilt).
    link: RefCell<Option<Rc<dyn Link>>>,
    next_subscriber: Cell<u64>,
    next_scope: Cell<u64>,
    /// Raised when the shard stops accepting and drains.
    pub shutdown: Rc<Flag>,
    /// `--otlp-endpoint`: this shard's tracer (set once, at start).
    tracer: std::cell::OnceCell<super::trace::Tracer>,
}

impl Core {
    pub fn new(p: CoreParts) -> Self {
        let l = &p.limits;
        Self {
            id: p.id,
            shard_count: p.shard_count,
            kv: RefCell::new(KvStore::new(l.kv_max_keys_per_shard)),
            watches: RefCell::new(WatchTable::new(l.max_watchers_per_key)),
            tasks: RefCell::new(TaskTable::new(p.id, l.max_tasks_per_shard, l.task_ttl_ms)),
            rate: RefCell::new(RateTable::new(l.rate_limit_max_principals)),
            rate_limit: Cell::new((l.rate_limit_per_sec, l.rate_limit_burst)),
            limits: p.limits,
            registry: RefCell::new(Rc::new(p.registry)),
            state_key: p.state_key,
            auth: RefCell::new(p.auth.map(Rc::new)),
            auth_generation: Cell::new(0),
            subscribers: RefCell::new(HashMap::new()),
            legacy_sessions: RefCell::new(HashMap::new()),
            listeners: RefCell::new(HashMap::new()),
            metrics: RefCell::new(ShardMetrics::new()),
            parser: RefCell::new(Parser::new()),
            faults: p.faults,
            dice: Dice::new(dice_seed(p.id)),
            audit: RefCell::new(None),
            store: RefCell::new(None),
            shared: RefCell::new(None),
            link: RefCell::new(None),
            next_subscriber: Cell::new(1),
            // Scopes name sessions to their tasks, and both outlive a restart
            // with --data-dir: start past any earlier run's.
            next_scope: Cell::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| (d.as_millis() as u64) << 10),
            ),
            shutdown: p.shutdown,
            tracer: std::cell::OnceCell::new(),
        }
    }

    /// The tracer, when `--otlp-endpoint` is set.
    #[inline]
    pub fn tracer(&self) -> Option<&super::trace::Tracer> {
        self.tracer.get()
    }

    /// Installs the tracer (once, before the shard serves).
    pub fn set_tracer(&self, tracer: super::trace::Tracer) {
        assert!(self.tracer.set(tracer).is_ok(), "a shard has one tracer");
    }

    /// Connects this shard to the others (`None`: they are out of reach,
    /// e.g. while the mesh is rebuilt).
    pub fn set_link(&self, link: Option<Rc<dyn Link>>) {
        assert!(
            link.is_none() || self.shard_count > 1,
            "a single shard has no one to link to"
        );
        *self.link.borrow_mut() = link;
    }

    /// Sends `msg` to shard `to` and returns the reply's future; errors at
    /// once when the hop cannot even be queued.
    pub fn call(&self, to: usize, msg: Msg) -> Result<LinkCall, MeshError> {
        assert_ne!(to, self.id, "local work must not cross the mesh");
        let link = self.link.borrow().clone().ok_or(MeshError::PeerGone)?;
        let span = self.tracer().and_then(|t| {
            let attrs = vec![
                ("tessera.shard.from", AttrValue::Int(self.id as i64)),
                ("tessera.shard.to", AttrValue::Int(to as i64)),
            ];
            t.child(format!("hop {} shard {to}", msg.kind()), attrs)
        });
        let call = link.call(to, msg)?;
        let Some(span) = span else { return Ok(call) };
        Ok(Box::pin(async move {
            let reply = call.await;
            span.end(reply.as_ref().err().map(|e| format!("{e:?}")));
            reply
        }))
    }

    /// Sends `msg` to shard `to` without a reply. A full queue drops it
    /// (counted by the mesh): callers only tell what the receiver can do
    /// without (notifications, unsubscribes).
    pub fn tell(&self, to: usize, msg: Msg) {
        assert_ne!(to, self.id, "local work must not cross the mesh");
        let link = self.link.borrow().clone();
        if let Some(link) = link {
            let _ = link.tell(to, msg);
        }
    }

    /// Whether a chaos roll says this tool call should panic.
    pub fn chaos_tool_panic(&self) -> bool {
        self.dice.roll(self.faults.tool_panic)
    }

    /// Whether a chaos roll says this token check should panic.
    pub fn chaos_auth_panic(&self) -> bool {
        self.dice.roll(self.faults.auth_panic)
    }

    /// Checks the rate limit of an HTTP principal; `Err(retry_after)` when
    /// over it. Always `Ok` with rate limiting off.
    pub fn rate_check(&self, who: &Principal, now: Instant) -> Result<(), std::time::Duration> {
        let (rate, burst) = self.rate_limit();
        if rate == 0 {
            return Ok(());
        }
        let verdict = self.rate.borrow_mut().check(who, now, rate, burst);
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

    /// The tools, resources and prompts offered now.
    pub fn registry(&self) -> Rc<Registry> {
        self.registry.borrow().clone()
    }

    /// A reload's registry, in place of the current one.
    pub fn set_registry(&self, registry: Registry) {
        *self.registry.borrow_mut() = Rc::new(registry);
    }

    /// The token and role tables in force (`--auth`), if any.
    pub fn auth(&self) -> Option<Rc<AuthConfig>> {
        self.auth.borrow().clone()
    }

    /// Whether `--auth` is on (a reload never turns it on or off).
    pub fn auth_on(&self) -> bool {
        self.auth.borrow().is_some()
    }

    /// The rate limit in force: (requests per second, burst); 0: off.
    pub fn rate_limit(&self) -> (u32, u32) {
        self.rate_limit.get()
    }

    /// A reload's rate limit: buckets refill at the new rate from now on.
    pub fn set_rate_limit(&self, per_sec: u32, burst: u32) {
        self.rate_limit.set((per_sec, burst));
    }

    pub fn auth_generation(&self) -> u64 {
        self.auth_generation.get()
    }

    /// A reload's tables: from now on every request and every session is
    /// checked against them.
    pub fn set_auth(&self, auth: AuthConfig) {
        assert!(self.auth_on(), "a reload does not turn --auth on");
        *self.auth.borrow_mut() = Some(Rc::new(auth));
        self.auth_generation.set(self.auth_generation.get() + 1);
    }

    /// A fresh id naming a legacy session (it scopes the session's tasks).
    pub fn next_session_scope(&self) -> u64 {
        let id = self.next_scope.get();
        self.next_scope.set(id + 1);
        id
    }

    /// Adds a session that receives server-initiated notifications;
    /// `wants`: the URIs it is subscribed to right now (a change of one it
    /// has since unsubscribed from is not sent, even while the watch's owner
    /// has not yet heard of the unsubscribe).
    pub fn register_subscriber(
        &self,
        notifier: SharedNotifier,
        wants: Option<Rc<RefCell<std::collections::HashSet<Box<str>>>>>,
    ) -> u64 {
        let id = self.next_subscriber.get();
        self.next_subscriber.set(id + 1);
        self.subscribers
            .borrow_mut()
            .insert(id, Subscriber { notifier, wants });
        id
    }

    /// Applies a kv operation to the keys this shard owns and tells the
    /// key's watchers when its value changed.
    pub fn kv_execute(self: &Rc<Self>, op: KvOp) -> KvReply {
        assert_eq!(
            kv::owner(op.key(), self.shard_count),
            self.id,
            "a kv operation runs at its key's owner"
        );
        let uri = kv::uri_of(op.key());
        let (reply, changed) = self.kv.borrow_mut().apply(op);
        if matches!(reply, KvReply::Full { .. }) {
            self.metrics.borrow_mut().counters.kv_full += 1;
        }
        if changed {
            watch::notify_watchers(self, &uri);
        }
        reply
    }

    /// Queues an operation for the store (`--data-dir`); counts a drop.
    pub fn persist(&self, op: super::store::Op) {
        let store = self.store.borrow();
        if let Some(s) = store.as_ref() {
            let span = self.tracer().and_then(|t| t.detached(op.span_name()));
            let queued = match span {
                None => s.push(op),
                Some(span) => s.push_traced(op, span),
            };
            if !queued {
                self.metrics.borrow_mut().counters.store_dropped += 1;
            }
        }
    }

    /// What this shard holds right now, for the admin endpoint.
    pub fn gauges(&self) -> (u64, u64) {
        (
            self.tasks.borrow().len() as u64,
            self.kv.borrow().len() as u64,
        )
    }

    /// After the executor died: drops the plain-data state its leaked tasks
    /// would keep alive (keys, watchers, rate buckets). Anything holding
    /// glommio objects (tasks, sessions) must stay: dropping those outside
    /// their executor panics inside a destructor.
    pub fn release_state(&self) {
        let l = &self.limits;
        *self.kv.borrow_mut() = KvStore::new(l.kv_max_keys_per_shard);
        *self.watches.borrow_mut() = WatchTable::new(l.max_watchers_per_key);
        *self.rate.borrow_mut() = RateTable::new(l.rate_limit_max_principals);
    }
}

/// A per-shard seed: different on every shard and every run.
fn dice_seed(id: usize) -> u64 {
    (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
}

/// A one-shard core for unit tests: `app` under `limits`, with `auth` and
/// `faults`, no mesh, store or audit sink.
#[cfg(test)]
pub(crate) fn test_core(
    app: &super::registry::App,
    limits: &crate::config::Limits,
    auth: Option<AuthConfig>,
    faults: FaultRates,
) -> Rc<Core> {
    Rc::new(Core::new(CoreParts {
        id: 0,
        shard_count: 1,
        limits: crate::node::server_limits(limits),
        registry: app.build().expect("a valid test server"),
        state_key: StateKey::random(),
        auth,
        faults,
        shutdown: Rc::new(Flag::default()),
    }))
}
