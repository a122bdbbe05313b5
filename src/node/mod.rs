//! The composition root: it assembles each shard's services (the MCP core,
//! its transports, the store and audit adapters, the mesh and the message
//! types it carries), starts one pinned executor per core, supervises them
//! from the main thread, and shuts them down.
//!
//! Every other layer is wired here and nowhere else: `runtime` knows nothing
//! of MCP, `server` nothing of sockets, `transport` nothing of the store's
//! files; this module is the one place that names them all.

mod cluster;
mod control;
mod shard;
mod start;
mod supervise;
mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::adapters::audit::{AuditError, AuditWriter};
use crate::adapters::cluster::TimerRuntime;
use crate::adapters::otel;
use crate::adapters::store::{self, FsyncPolicy, StoreError};
use crate::config::{ConfigError, Limits, ServerConfig};
use crate::runtime::executor::LaunchError;
use crate::runtime::mesh::MeshSettings;
use crate::runtime::process::{self, ProcessError};
use crate::server::core::{FaultRates, Limits as ServerLimits};
use crate::server::mrtr::StateKey;
use crate::server::registry::{App, RegistryError};
use crate::transport::admin::{self, AdminError, AdminStop, AdminView};
use crate::transport::control_socket::ControlSocket;
use crate::transport::listeners::{Kind, Listeners};
use crate::transport::{stdio, Limits as NetLimits};
use start::Plan;
use supervise::{Launcher, Supervisor};

/// Why the server did not start, or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Settings(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("starting stdio: {0}")]
    Stdio(std::io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("shard on core {core}: {error}")]
    Shard { core: usize, error: String },
    #[error("only {ready} of {shards} shards started within {timeout:?}")]
    Startup {
        ready: usize,
        shards: usize,
        timeout: Duration,
    },
    /// A shard kept dying, could not be restarted, or panicked at the end.
    #[error("{0}")]
    Failed(String),
}

/// glommio's registered I/O memory is for file I/O through the ring, which
/// tessera does not do; the minimum keeps each executor's footprint small.
const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;

/// Runs the server until SIGINT/SIGTERM (or, with stdio, until stdin closes),
/// then prints the merged latency summary. Errors are startup failures or a
/// shard that kept dying.
pub fn serve(config: ServerConfig, app: App) -> Result<(), ServeError> {
    serve_reloadable(config, app, None)
}

/// What a reload (SIGHUP) reads again: the configuration and the app as
/// `serve` would get them now (the config file re-read), or why they cannot
/// be used (already reported, with the file and line where there is one).
pub type Reload = Box<dyn Fn() -> Result<(ServerConfig, App), String>>;

/// [`serve`], re-reading the configuration with `reload` on SIGHUP. What a
/// reload applies: the `--auth` tables (tokens, JWT keys, roles), the rate
/// limit, and the tools, prompts and resources (not `[[resources.dir]]`).
/// With `--upgrade` it first takes the running server's sockets over.
pub fn serve_reloadable(
    mut config: ServerConfig,
    app: App,
    reload: Option<Reload>,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Settings)?;
    if let Some(level) = config.log_level {
        log::set_max_level(level);
    }
    let mut upgrade = match (&config.upgrade_socket, config.upgrade) {
        (Some(path), true) => Some(upgrade::Upgrade::ask(
            path,
            Duration::from_millis(config.limits.upgrade_timeout_ms),
        )?),
        _ => None,
    };
    let served = serve_on(&mut config, app, reload, upgrade.as_mut());
    if let (Err(e), Some(u)) = (&served, &upgrade) {
        u.failed(&e.to_string());
    }
    served
}

fn serve_on(
    config: &mut ServerConfig,
    app: App,
    reload: Option<Reload>,
    mut upgrade: Option<&mut upgrade::Upgrade>,
) -> Result<(), ServeError> {
    let mut setup = prepare_process(config, &app, upgrade.as_deref_mut())?;
    let state_key = upgrade
        .as_ref()
        .and_then(|u| StateKey::from_bytes(&u.state_key))
        .unwrap_or_else(StateKey::random);
    let plan = Arc::new(plan(config, app, setup.timer.as_ref(), state_key));
    // Before any shard starts: a socket that cannot be opened (another
    // server on it) stops startup cleanly.
    let control = match &config.upgrade_socket {
        None => None,
        Some(p) => {
            let handed = upgrade
                .as_deref_mut()
                .and_then(|u| u.take_single(Kind::Control, None));
            let c = match handed {
                Some(fd) => ControlSocket::adopt(p, fd),
                None => ControlSocket::start(p),
            }
            .map_err(|e| ServeError::Settings(e.into()))?;
            let dup = c.listener().map_err(|e| ServeError::Settings(e.into()))?;
            setup.listeners.keep(Kind::Control, None, dup);
            Some(c)
        }
    };
    // A store is one writer's: the old process closes it before this one
    // opens it, so the old stops first. Without one, this process serves
    // before the old one stops accepting.
    let takes_store = config.store.is_some() || config.cluster.is_some();
    let mut orphans = Vec::new();
    if let Some(u) = upgrade.as_deref_mut().filter(|_| takes_store) {
        u.prepared()?;
        orphans = u.wait_released()?;
    }
    let dbs = open_store(config)?;
    let launcher = Launcher::new(
        config,
        plan,
        setup.stdio_end.take(),
        setup.audit_tx.take(),
        setup.otel_queue.take(),
        dbs,
        std::mem::take(&mut setup.listeners),
    );
    let mut sup = Supervisor::start(config.shard_count(), launcher, setup.admin.clone())?;
    sup.adopt(orphans);
    let mut release = None;
    if let Some(u) = upgrade.filter(|_| !takes_store) {
        u.prepared()?;
        release = Some(u.watch_release()?);
    }
    process::notify_systemd("READY=1");
    announce(config);
    let mut outcome = sup.run(
        config.chaos.kill_shard_every_ms.map(Duration::from_millis),
        reload.as_deref(),
        control.as_ref(),
        &setup.admin_stop,
        release.as_ref(),
    );
    let handed_to = outcome.handover.take();
    if handed_to.is_some() {
        if let Some(c) = &control {
            c.handed_over();
        }
    }
    drop(control);
    let result = sup.shutdown(
        outcome,
        setup.stdout_pump.take(),
        setup.audit_writer.take(),
        setup.otel.take(),
    );
    // Only now: the shards' Redis clients may close under its timer.
    drop(setup.timer.take());
    if let Some(conn) = handed_to {
        // Every shard has stopped and its store is closed.
        hand_over_orphans_and_release(config, &conn);
    }
    result
}

/// A binary upgrade's last step on the old side: connections io_uring
/// accepted as the shards stopped (no one serves them) go to the new
/// process, then `released`.
fn hand_over_orphans_and_release(config: &ServerConfig, conn: &std::os::unix::net::UnixStream) {
    let http = config.http.as_ref().map(|h| h.addr);
    let mut addrs: Vec<SocketAddr> = config.tcp.into_iter().collect();
    addrs.extend(http);
    let orphans = crate::transport::listeners::orphaned_connections(&addrs);
    let kinds = orphans.iter().map(|(local, fd)| {
        let kind = if Some(*local) == http {
            Kind::Http
        } else {
            Kind::Tcp
        };
        (kind, std::os::fd::AsFd::as_fd(fd))
    });
    match crate::transport::handover::release(conn, kinds) {
        Ok(()) => log::info!(
            "upgrade: store released ({} connection(s) accepted as the shards stopped handed over); the new process serves now",
            orphans.len()
        ),
        Err(e) => log::warn!("upgrade: telling the new process the store is released: {e} (it sees this process exit)"),
    }
}

/// What the main thread set up before any shard starts.
struct Setup {
    /// Every listening socket (shards get duplicates).
    listeners: Listeners,
    stdio_end: Option<std::os::unix::net::UnixStream>,
    stdout_pump: Option<std::thread::JoinHandle<()>>,
    admin: Option<Arc<Mutex<AdminView>>>,
    admin_stop: AdminStop,
    audit_writer: Option<AuditWriter>,
    audit_tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    otel: Option<otel::Exporter>,
    otel_queue: Option<otel::Queue>,
    /// `--cluster`: drives the one tokio timer fred arms (adapters/cluster).
    timer: Option<TimerRuntime>,
}

/// Everything that must happen on the main thread before any executor
/// exists: rlimits, signal routing, the listening sockets, the stdio
/// bridge, the admin endpoint, the audit writer.
fn prepare_process(
    config: &mut ServerConfig,
    app: &App,
    mut upgrade: Option<&mut upgrade::Upgrade>,
) -> Result<Setup, ServeError> {
    let n = config.shard_count();
    process::ensure_memlock(n)?;
    let nofile = process::raise_nofile();
    let wanted = (config.limits.max_connections_per_shard as u64).saturating_mul(n as u64);
    if nofile < wanted {
        log::info!(
            "RLIMIT_NOFILE is {nofile}: fewer connections than --max-connections-per-shard x shards ({wanted}) can be open; raise it (tuning/README.md)"
        );
    }
    process::block_stop_signals();
    let mut listeners = Listeners::default();
    let mut listen = |kind, addr: SocketAddr| match upgrade.as_deref_mut() {
        Some(u) => u.listen_shards(&mut listeners, kind, addr, n),
        None => {
            process::check_port_free(addr)?;
            listeners
                .bind_shards(kind, addr, n)
                .map_err(|source| ProcessError::Listen { addr, source }.into())
        }
    };
    if let Some(addr) = config.tcp.as_mut() {
        *addr = listen(Kind::Tcp, *addr)?;
    }
    if let Some(h) = config.http.as_mut() {
        h.addr = listen(Kind::Http, h.addr)?;
    }
    let (stdio_end, stdout_pump) = if config.stdio {
        let b = stdio::start().map_err(ServeError::Stdio)?;
        (Some(b.shard_end), Some(b.stdout_pump))
    } else {
        (None, None)
    };
    // Built once here so a definition error stops startup before any thread runs.
    app.validate()?;
    if config.chaos.is_on() {
        log::warn!(
            "CHAOS MODE ON: {:?} -- this server injects faults on purpose; never run it in production",
            config.chaos
        );
    }
    let admin_stop = AdminStop::default();
    let admin = match config.admin {
        Some(addr) => {
            let view = Arc::new(Mutex::new(AdminView::new(
                &config.cores,
                config.net_rules.clone(),
                config.admin_tls.clone(),
            )));
            let handed = upgrade.and_then(|u| u.take_single(Kind::Admin, Some(addr)));
            let socket = match handed {
                Some(fd) => std::net::TcpListener::from(fd),
                None => admin::bind(addr)?,
            };
            let dup = socket.try_clone().map_err(AdminError::Thread)?;
            let bound = admin::start(socket, view.clone(), admin_stop.clone())?;
            listeners.keep(Kind::Admin, Some(bound), dup.into());
            let scheme = if config.admin_tls.is_some() {
                "https"
            } else {
                "http"
            };
            log::info!("admin endpoint on {scheme}://{bound} (/metrics, /healthz, /readyz)");
            Some(view)
        }
        None => None,
    };
    let (audit_writer, audit_tx) = match &config.audit {
        Some(a) => {
            let (w, tx) = AuditWriter::start(a, n)?;
            log::info!(
                "audit log: {} (rotated at {} bytes, {} kept)",
                a.path.display(),
                a.max_bytes,
                a.keep
            );
            (Some(w), Some(tx))
        }
        None => (None, None),
    };
    let (otel, otel_queue) = match &config.otel {
        Some(o) => {
            let (e, q) = otel::Exporter::start(o).map_err(|e| ServeError::Settings(Box::new(e)))?;
            log::info!(
                "tracing: OTLP to {} (sampling {} of requests without a sampled parent)",
                o.endpoint,
                o.sample_ratio
            );
            (Some(e), Some(q))
        }
        None => (None, None),
    };
    let timer = match &mut config.cluster {
        Some(c) => {
            // Port 0 is resolved by now.
            let http = config
                .http
                .as_ref()
                .expect("validated: --cluster needs --http");
            let advertise = *c.advertise.get_or_insert(http.addr);
            log::info!(
                "cluster: node {} on {} (advertised as {advertise}, heartbeat TTL {} ms, key prefix {:?})",
                c.node_id,
                redact(&c.url),
                c.heartbeat_ttl_ms,
                c.key_prefix
            );
            Some(TimerRuntime::start().map_err(|e| ServeError::Settings(Box::new(e)))?)
        }
        None => None,
    };
    if let Some(v) = &admin {
        v.lock()
            .expect("admin view lock")
            .require_cluster(config.cluster.is_some());
    }
    Ok(Setup {
        listeners,
        stdio_end,
        stdout_pump,
        admin,
        admin_stop,
        audit_writer,
        audit_tx,
        otel,
        otel_queue,
        timer,
    })
}

/// A Redis URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Opens every shard's file under `--data-dir`, once, so a restarted shard
/// reuses its own.
fn open_store(config: &ServerConfig) -> Result<Option<Vec<Arc<redb::Database>>>, ServeError> {
    let Some(st) = &config.store else {
        log::info!("no --data-dir: sessions and SSE event stores are kept in memory only (lost on restart)");
        return Ok(None);
    };
    let dbs = store::open_all(st, config.shard_count())?;
    log::info!(
        "persistence: {} ({} file(s), fsync {:?}{}); legacy sessions and their SSE events survive restarts",
        st.dir.display(),
        dbs.len(),
        st.fsync,
        if st.fsync == FsyncPolicy::Interval {
            format!(" every {} ms", st.fsync_interval_ms)
        } else {
            String::new()
        }
    );
    Ok(Some(dbs))
}

/// The MCP layer's share of the public limits.
pub(crate) fn server_limits(l: &Limits) -> ServerLimits {
    ServerLimits {
        kv_max_keys_per_shard: l.kv_max_keys_per_shard,
        kv_max_key_bytes: l.kv_max_key_bytes,
        kv_max_value_bytes: l.kv_max_value_bytes,
        max_subscriptions_per_session: l.max_subscriptions_per_session,
        max_watchers_per_key: l.max_watchers_per_key,
        max_client_requests: l.max_client_requests,
        client_request_timeout_ms: l.client_request_timeout_ms,
        page_size: l.page_size,
        mrtr_state_ttl_ms: l.mrtr_state_ttl_ms,
        max_tasks_per_shard: l.max_tasks_per_shard,
        task_ttl_ms: l.task_ttl_ms,
        rate_limit_per_sec: l.rate_limit_per_sec,
        rate_limit_burst: l.rate_burst(),
        rate_limit_max_principals: l.rate_limit_max_principals,
        mesh_timeout_ms: l.mesh_timeout_ms,
    }
}

/// The transports' share of the public limits.
pub(crate) fn net_limits(l: &Limits, chaos_conn_panic_rate: f64) -> NetLimits {
    NetLimits {
        max_message_bytes: l.max_message_bytes,
        max_inflight_per_conn: l.max_inflight_per_conn,
        max_output_buffer_bytes: l.max_output_buffer_bytes,
        max_connections_per_shard: l.max_connections_per_shard,
        idle_timeout_ms: l.idle_timeout_ms,
        max_restarts: l.max_restarts,
        restart_period_ms: l.restart_period_ms,
        chaos_conn_panic_rate,
    }
}

/// Each layer's settings, from the public configuration.
fn plan(
    config: &ServerConfig,
    app: App,
    timer: Option<&TimerRuntime>,
    state_key: StateKey,
) -> Plan {
    let l = &config.limits;
    Plan {
        shard_count: config.shard_count(),
        server_limits: std::sync::Mutex::new(server_limits(l)),
        net_limits: net_limits(l, config.chaos.conn_panic_rate),
        mesh: MeshSettings {
            queue_depth: l.mesh_queue_depth,
            pending_max: l.mesh_pending_max,
            timeout_ms: l.mesh_timeout_ms,
        },
        faults: FaultRates {
            tool_panic: config.chaos.panic_rate,
            auth_panic: config.chaos.auth_panic_rate,
        },
        http: config.http.clone(),
        auth: std::sync::Mutex::new(config.auth.clone()),
        audit: config.audit.clone(),
        trace_sample_ratio: config.otel.as_ref().map(|o| o.sample_ratio),
        store: config.store.clone(),
        cluster: config.cluster.clone(),
        redis_timer: timer.map(TimerRuntime::handle),
        app: std::sync::Mutex::new(app),
        net_rules: std::sync::Mutex::new(config.net_rules.clone()),
        tls: std::sync::Mutex::new(config.tls.clone()),
        state_key,
        // Metrics go to the main thread for --stats-interval, or every
        // second for the admin endpoint.
        report_every: config
            .stats_interval
            .or(config.admin.map(|_| admin::ADMIN_REFRESH)),
        drain_timeout: l.drain_timeout(),
        epoch: Instant::now(),
    }
}

/// Says where the server listens, once every shard does.
fn announce(config: &ServerConfig) {
    let placement: Vec<String> = config
        .cores
        .iter()
        .enumerate()
        .map(|(shard, core)| format!("shard {shard}=core {core}"))
        .collect();
    let placement = placement.join(", ");
    let (tcp_tls, scheme) = match &config.tls {
        Some(t) if t.client_certs => (", TLS with client certificates", "https"),
        Some(_) => (", TLS", "https"),
        None => ("", "http"),
    };
    if let Some(addr) = config.tcp {
        log::info!("listening on tcp://{addr} ({placement}{tcp_tls})");
    }
    if let Some(h) = &config.http {
        log::info!("listening on {scheme}://{}{} ({placement})", h.addr, h.path);
    }
    if config.stdio {
        log::info!("serving MCP on stdio ({placement})");
    }
}
