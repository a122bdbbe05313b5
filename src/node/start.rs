//! What one executor thread runs: it builds its shard (the MCP service, its
//! transports, its store and audit ends), joins the mesh, restores what the
//! store held, starts accepting on the sockets the main thread gave it,
//! serves until told to stop, drains, and reports. A shard restarted after a crash runs the same steps.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use glommio::LocalExecutor;

use super::cluster::ClusterShard;
use super::control::{self, ShardCommand, ShardEvent};
use super::shard::NodeShard;
use crate::adapters::audit::{AuditBuffer, AuditConfig, FLUSH_INTERVAL_MS};
use crate::adapters::cluster::membership::{started_now_ms, Beat};
use crate::adapters::cluster::ClusterConfig;
use crate::adapters::otel;
use crate::adapters::store::{self, ShardStore, StoreConfig, Writer, FLUSH_MS};
use crate::runtime::executor::Slot;
use crate::runtime::local::Flag;
use crate::runtime::mesh::MeshSettings;
use crate::server::auth::AuthConfig;
use crate::server::core::{Core, CoreParts, FaultRates, Limits as ServerLimits};
use crate::server::mrtr::StateKey;
use crate::server::registry::{self, App, Registry};
use crate::server::session::Resume;
use crate::server::store::{Loaded, Store};
use crate::server::trace::Tracer;
use crate::transport::http::{self, HttpConfig, HttpShard};
use crate::transport::{conn, tcp, Limits as NetLimits, Net};

/// How long a shard waits for its first mesh plan and for the others to
/// join it.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What every shard is built from; shared by all executor threads.
pub(crate) struct Plan {
    pub shard_count: usize,
    /// The MCP layer's limits a shard starts with; a reload updates the
    /// ones it changes (the rate limit), so a shard restarted later starts
    /// with them (read only when a shard is built).
    pub server_limits: std::sync::Mutex<ServerLimits>,
    pub net_limits: NetLimits,
    pub mesh: MeshSettings,
    pub faults: FaultRates,
    pub http: Option<HttpConfig>,
    /// The `--auth` tables a shard starts with: replaced by a reload, so a
    /// shard restarted later starts with the reloaded ones (read only when
    /// a shard is built, never on a request path).
    pub auth: std::sync::Mutex<Option<AuthConfig>>,
    pub audit: Option<AuditConfig>,
    /// `--trace-sample-ratio` when `--otlp-endpoint` is set.
    pub trace_sample_ratio: Option<f64>,
    pub store: Option<StoreConfig>,
    pub cluster: Option<ClusterConfig>,
    /// Entered on every shard thread while `cluster` is on (see
    /// `adapters::cluster::TimerRuntime`).
    pub redis_timer: Option<tokio::runtime::Handle>,
    /// What a shard's registry is built from; a reload replaces it, so a
    /// shard restarted later builds the reloaded one (read only when a
    /// shard is built).
    pub app: std::sync::Mutex<App>,
    /// `--allow-cidr`/`--deny-cidr` a shard starts with; a reload replaces
    /// them (read only when a shard is built).
    pub net_rules: std::sync::Mutex<crate::config::NetRules>,
    /// `--tls-cert`: what a shard's handshakes start from; a reload replaces
    /// it (read only when a shard is built).
    pub tls: std::sync::Mutex<Option<crate::config::TlsConfig>>,
    pub state_key: StateKey,
    /// Send metrics to the main thread this often.
    pub report_every: Option<Duration>,
    pub drain_timeout: Duration,
    /// Stats ticks count from here on every shard, restarted ones included.
    pub epoch: Instant,
}

/// What one executor thread is given at start.
pub(crate) struct ShardStart {
    pub index: usize,
    pub cpu: usize,
    pub plan: Arc<Plan>,
    pub stdio: Option<UnixStream>,
    pub stdio_resume: Option<Resume>,
    pub events: Sender<ShardEvent>,
    pub commands: Receiver<ShardCommand>,
    /// The audit writer's queue (`--audit-log`).
    pub audit: Option<Sender<Vec<u8>>>,
    /// `--otlp-endpoint`: the exporter's queue.
    pub otel: Option<otel::Queue>,
    /// This shard's file (`--data-dir`).
    pub db: Option<Arc<redb::Database>>,
    /// The sockets it accepts TCP and HTTP connections on (more than one
    /// each after an upgrade to fewer shards).
    pub tcp_listeners: Vec<OwnedFd>,
    pub http_listeners: Vec<OwnedFd>,
}

/// What the thread prepares before its executor serves anything: the file
/// system and thread work of building the registry (file resources are
/// scanned) and opening the store (its file is read, its writer started).
struct Prepared {
    registry: Registry,
    store: Option<(ShardStore, Writer, Loaded)>,
}

fn prepare(start: &ShardStart) -> Result<Prepared, String> {
    let app = start
        .plan
        .app
        .lock()
        .expect("the app's lock is never held across a panic")
        .clone();
    let registry = app.build().map_err(|e| e.to_string())?;
    let store = match (&start.db, &start.plan.store) {
        (Some(db), Some(cfg)) => {
            // The keys now: a shard restarted after an online rekey reads
            // with the rekeyed ones.
            let keys = cfg.ring.current();
            let loaded = store::load(db, keys.as_deref()).map_err(|e| {
                format!(
                    "reading {}: {e}",
                    store::file_of(&cfg.dir, start.index).display()
                )
            })?;
            let (s, writer) = ShardStore::start(
                cfg,
                db.clone(),
                start.index,
                start.otel.as_ref().map(otel::Queue::span_out),
            )
            .map_err(|e| e.to_string())?;
            Some((s, writer, loaded))
        }
        _ => None,
    };
    Ok(Prepared { registry, store })
}

/// The thread's body: prepare, run the shard on `executor`, and return the
/// store writer to wait for once the executor is gone.
pub(crate) fn run(
    start: ShardStart,
    executor: &LocalExecutor,
    slot: Slot<NodeShard>,
) -> Option<Writer> {
    let prepared = match prepare(&start) {
        Ok(p) => p,
        Err(error) => {
            let _ = start.events.send(ShardEvent::Failed {
                core: start.cpu,
                error,
            });
            return None;
        }
    };
    let (store, writer) = match prepared.store {
        Some((s, w, loaded)) => (Some((s, loaded)), Some(w)),
        None => (None, None),
    };
    // For the whole life of the executor: fred's close timer needs it.
    let _tokio = start.plan.redis_timer.as_ref().map(|h| h.enter());
    executor.run(shard_main(start, prepared.registry, store, slot));
    writer
}

/// The whole life of a serving shard.
async fn shard_main(
    start: ShardStart,
    registry: Registry,
    store: Option<(ShardStore, Loaded)>,
    slot: Slot<NodeShard>,
) {
    let ShardStart {
        index,
        cpu,
        plan,
        stdio,
        stdio_resume,
        events,
        commands,
        audit,
        tcp_listeners,
        http_listeners,
        otel,
        ..
    } = start;
    let fail = |error: String| {
        let _ = events.send(ShardEvent::Failed { core: cpu, error });
    };
    let shard = match build(&plan, index, cpu, registry) {
        Ok(s) => Rc::new(s),
        Err(e) => return fail(e),
    };
    *slot.borrow_mut() = Some(shard.clone());
    if let (Some(queue), Some(ratio)) = (&otel, plan.trace_sample_ratio) {
        let mut seed = [0u8; 8];
        crate::runtime::random::fill(&mut seed);
        let tracer = Tracer::new(queue.sink(), ratio, u64::from_ne_bytes(seed));
        shard.core.set_tracer(tracer);
    }
    if plan.shard_count > 1 {
        if let Err(e) = join_first_mesh(&shard, &commands).await {
            return fail(e);
        }
    }
    if let Some((s, loaded)) = store {
        // Before any listener: a client continuing its session must find it.
        restore(&shard, Rc::new(s), loaded);
    }
    if let Some(c) = &shard.cluster {
        // Sessions live in Redis; they are loaded when asked for.
        restore(&shard, c.sessions.clone(), Loaded::default());
    }
    if events.send(ShardEvent::Ready { index, core: cpu }).is_err() {
        shard.leave_mesh();
        return;
    }
    log::debug!("shard {index} running on core {cpu}");
    if let (Some(tx), Some(cfg)) = (audit, &plan.audit) {
        *shard.core.audit.borrow_mut() =
            Some(Box::new(AuditBuffer::new(tx, cfg.buffer_bytes, index)));
        glommio::spawn_local(flush_audit(shard.core.clone())).detach();
    }
    if !tcp_listeners.is_empty() {
        glommio::spawn_local(conn::idle_sweep(shard.net.clone())).detach();
    }
    for fd in tcp_listeners {
        glommio::spawn_local(tcp::accept_loop(shard.net.clone(), tcp::listen_on(fd))).detach();
    }
    if let Some(h) = &shard.http {
        glommio::spawn_local(http::session::sweep_loop(h.clone())).detach();
        for fd in http_listeners {
            glommio::spawn_local(http::accept_loop(h.clone(), tcp::listen_on(fd))).detach();
        }
    }
    follow_sources(&shard.core);
    start_cluster(&shard, &plan);
    if let Some(sock) = stdio {
        serve_stdio(&shard, sock, stdio_resume, events.clone());
    }
    control::control_loop(&shard, &commands, &events, plan.report_every, plan.epoch).await;
    drain(&shard, plan.drain_timeout).await;
    if plan.shard_count > 1 && events.send(ShardEvent::Drained { index }).is_ok() {
        control::await_leave(&commands, plan.drain_timeout).await;
    }
    if let Some(c) = &shard.cluster {
        c.leave().await;
    }
    shard.leave_mesh();
    let snapshot = shard.core.metrics.borrow().snapshot(index);
    let _ = events.send(ShardEvent::Stopped {
        index,
        core: cpu,
        snapshot,
        unfinished_connections: shard.net.conns.live(),
    });
}

/// `--cluster`: connects and starts beating. Redis being down does not stop
/// the shard: it serves what needs no cluster state and reconnects.
fn start_cluster(shard: &Rc<NodeShard>, plan: &Plan) {
    let (Some(c), Some(cfg)) = (&shard.cluster, &plan.cluster) else {
        return;
    };
    let beat = Beat {
        shard: shard.id,
        shards: plan.shard_count,
        advertise: cfg
            .advertise
            .expect("resolved before the shards start")
            .to_string(),
        started_ms: started_now_ms(),
    };
    if shard.id == 0 {
        if let Err(e) = c.follow_announcements(&shard.core) {
            log::error!("cluster announcements: {e}");
        }
    }
    let http = shard.http.clone();
    c.start(beat, shard.http.clone(), move || {
        http.as_ref()
            .map_or(0, |h| h.sessions.borrow().len() as u64)
    });
}

/// The shard's services, wired to each other.
fn build(plan: &Plan, index: usize, cpu: usize, registry: Registry) -> Result<NodeShard, String> {
    let core = Rc::new(Core::new(CoreParts {
        id: index,
        shard_count: plan.shard_count,
        limits: plan
            .server_limits
            .lock()
            .expect("the limits' lock is never held across a panic")
            .clone(),
        registry,
        state_key: plan.state_key.clone(),
        auth: plan
            .auth
            .lock()
            .expect("the auth tables' lock is never held across a panic")
            .clone(),
        faults: plan.faults,
        shutdown: Rc::new(Flag::default()),
    }));
    let rules = plan
        .net_rules
        .lock()
        .expect("the network rules' lock is never held across a panic")
        .clone();
    let net = Rc::new(Net::new(core.clone(), plan.net_limits.clone(), rules));
    net.tls.set(
        plan.tls
            .lock()
            .expect("the TLS configuration's lock is never held across a panic")
            .clone(),
    );
    let web = plan
        .http
        .as_ref()
        .map(|cfg| Rc::new(HttpShard::new(net.clone(), cfg.clone())));
    let cluster = match (&plan.cluster, &web) {
        (Some(cfg), Some(h)) => {
            let c = Rc::new(ClusterShard::new(cfg, core.clone(), h).map_err(|e| e.to_string())?);
            h.set_cluster(c.clone());
            Some(c)
        }
        _ => None,
    };
    Ok(NodeShard::new(cpu, core, net, web, cluster, plan.mesh))
}

/// The mesh comes before anything is served: the shard's keys, tasks and
/// sessions are reachable only once it has joined. A newer plan (another
/// shard died meanwhile) replaces a join that cannot finish.
async fn join_first_mesh(
    shard: &Rc<NodeShard>,
    commands: &Receiver<ShardCommand>,
) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let Some(mut plan) = control::next_plan(commands, deadline).await else {
        return Err("no mesh plan from the main thread".into());
    };
    loop {
        assert_eq!(
            plan.shard(),
            shard.id,
            "the main thread sent another shard's membership"
        );
        let joined = futures_lite::future::or(async { Ok(plan.join().await) }, async {
            Err(control::next_plan(commands, deadline).await)
        })
        .await;
        match joined {
            Ok(j) => {
                shard.install_mesh(j);
                return Ok(());
            }
            Err(Some(newer)) => plan = newer,
            Err(None) => return Err("the mesh could not be joined in time".into()),
        }
    }
}

/// Brings back what the store held and writes every change from now on.
fn restore(shard: &Rc<NodeShard>, store: Rc<dyn Store>, mut loaded: Loaded) {
    let core = &shard.core;
    *core.store.borrow_mut() = Some(store.clone());
    let (sessions, events, tasks) = (
        loaded.sessions.len(),
        loaded.events.len(),
        loaded.tasks.len(),
    );
    core.metrics.borrow_mut().counters.store_records_unreadable += loaded.unreadable;
    core.tasks.borrow_mut().track_changes();
    let restored_tasks = crate::server::tasks::restore(core, std::mem::take(&mut loaded.tasks));
    let restored = match &shard.http {
        Some(h) => http::session::restore(h, loaded),
        None => 0,
    };
    if sessions + tasks > 0 {
        log::info!(
            "restored {restored} of {sessions} stored session(s), {events} SSE event(s), {restored_tasks} of {tasks} task(s)"
        );
    }
    glommio::spawn_local(flush_store(shard.clone(), store)).detach();
}

/// Hands the shard's changes to its store writer every [`FLUSH_MS`], and
/// everything left once the shard drains.
async fn flush_store(shard: Rc<NodeShard>, store: Rc<dyn Store>) {
    let flush = |s: &NodeShard| {
        crate::server::tasks::flush_store(&s.core);
        if let Some(h) = &s.http {
            http::session::flush_store(h);
        }
        store.flush()
    };
    while !shard
        .net
        .sleep_unless_shutdown(Duration::from_millis(FLUSH_MS))
        .await
    {
        flush(&shard);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !flush(&shard) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Hands the shard's audit lines to the writer every
/// [`FLUSH_INTERVAL_MS`], and everything left once the shard drains.
async fn flush_audit(core: Rc<Core>) {
    let flush = |core: &Core| core.audit.borrow_mut().as_mut().is_none_or(|s| s.flush());
    loop {
        glommio::timer::sleep(Duration::from_millis(FLUSH_INTERVAL_MS)).await;
        flush(&core);
        if core.shutdown.is_raised() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !flush(&core) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts following every resource source that changes at run time.
fn follow_sources(core: &Rc<Core>) {
    for source in &core.registry().sources {
        let weak = Rc::downgrade(core);
        let on_change = Rc::new(move |change| {
            if let Some(core) = weak.upgrade() {
                registry::source_changed(&core, change);
            }
        });
        if let Some(task) = source.clone().follow(core.shutdown.clone(), on_change) {
            glommio::spawn_local(task).detach();
        }
    }
}

/// Serves the stdio client on the shard's end of the bridge.
fn serve_stdio(
    shard: &Rc<NodeShard>,
    sock: UnixStream,
    resume: Option<Resume>,
    events: Sender<ShardEvent>,
) {
    let net = shard.net.clone();
    glommio::spawn_local(async move {
        // SAFETY: `into_raw_fd` gives up the std socket's ownership of the
        // descriptor, a connected Unix socket nothing else holds; the
        // glommio stream takes it over as its only owner.
        let stream = unsafe {
            <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(sock.into_raw_fd())
        };
        let report_to = events.clone();
        let report = Box::new(move |r| {
            // Never block the executor: a full event queue only means
            // a restart would resume an older state.
            if report_to.try_send(ShardEvent::StdioSession(r)).is_err() {
                log::warn!("stdio session state not recorded: event queue full");
            }
        });
        if let Err(e) = conn::serve_stdio(stream, net, resume, report).await {
            log::warn!("stdio connection ended: {e}");
        }
        let _ = events.send(ShardEvent::StdioClosed);
    })
    .detach();
}

/// No new connections or requests; in-flight requests finish, within the
/// drain timeout.
async fn drain(shard: &NodeShard, timeout: Duration) {
    shard.core.shutdown.raise();
    shard.net.conns.wake_all();
    let deadline = Instant::now() + timeout;
    while shard.net.conns.live() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}
