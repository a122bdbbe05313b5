//! The thread-per-core runtime: one pinned glommio executor per selected core,
//! each running a [`shard::Shard`], plus the main thread's control plane.
//!
//! Control plane (main thread <-> shards) uses bounded crossbeam channels:
//! shards report readiness, periodic stats and their final metrics; the main
//! thread sends shutdown. crossbeam cannot wake a parked executor, so each
//! shard polls its command queue every `CONTROL_POLL`; that costs a timer
//! wake-up, never a request's latency. Request traffic between shards never
//! uses this path: it goes over the mesh (`mesh`), which wakes executors.

pub mod cores;
pub mod local;
pub mod mesh;
pub mod process;
pub mod shard;
pub mod store;
pub mod supervisor;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServerConfig;
use crate::metrics::{self, Snapshot};
use crate::server::mrtr::StateKey;
use crate::server::registry::App;
use crate::server::Resume;
use crate::transport::admin::{self, AdminView};
use crate::transport::{conn, http, stdio, tcp};
use mesh::MeshBuilders;
use shard::Shard;
use supervisor::RestartIntensity;

/// How often a shard checks its command queue.
const CONTROL_POLL: Duration = Duration::from_millis(20);
/// How long the main thread waits for every shard to be listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// glommio's registered I/O memory is for file I/O, which tessera does not
/// do; the minimum keeps each executor's footprint small.
const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;
/// Events queued from shards to the main thread. Lifecycle events wait for
/// room; stats lines are skipped (and said so) when it is full.
const EVENT_QUEUE_DEPTH: usize = 1024;
/// Commands queued to one shard (shutdown, mesh plans, chaos kills).
const COMMAND_QUEUE_DEPTH: usize = 16;

/// Shard -> main thread.
pub enum ShardEvent {
    Ready {
        index: usize,
        core: usize,
    },
    Failed {
        core: usize,
        error: String,
    },
    Stats {
        shard: usize,
        core: usize,
        tick: u64,
        snapshot: Snapshot,
    },
    /// The stdio client closed its input and has been answered.
    StdioClosed,
    /// The stdio session's negotiated state changed; a restarted shard 0
    /// resumes from the latest.
    StdioSession(Resume),
    Stopped {
        index: usize,
        core: usize,
        snapshot: Snapshot,
        unfinished_connections: usize,
    },
    /// A panic escaped the shard's executor; the thread is ending. Carries
    /// what the shard held when it died and its metrics so far.
    Died {
        index: usize,
        core: usize,
        panic: String,
        lost: String,
        snapshot: Option<Snapshot>,
    },
}

/// Main thread -> shard.
pub enum ShardCommand {
    Shutdown,
    /// Join a freshly built mesh; `peers[shard]` is each shard's peer id in
    /// it. Sent at startup and whenever a shard was restarted.
    JoinMesh {
        builders: MeshBuilders,
        peers: Vec<usize>,
    },
    /// Chaos: let a panic escape the executor, as a bug would.
    Die,
}

/// What one executor thread is given at start.
struct ShardStart {
    index: usize,
    core: usize,
    config: Arc<ServerConfig>,
    tcp: Option<SocketAddr>,
    stdio: Option<UnixStream>,
    stdio_resume: Option<Resume>,
    app: App,
    state_key: StateKey,
    events: Sender<ShardEvent>,
    commands: Receiver<ShardCommand>,
    /// Signalled once this thread's executor exists, with its glommio
    /// executor id (which orders mesh peers), or `None` if it failed.
    made: Sender<Option<usize>>,
    /// Stats ticks count from here on every shard, restarted ones included.
    epoch: Instant,
    /// The audit writer's queue (`--audit-log`).
    audit: Option<Sender<Vec<u8>>>,
    /// This shard's file (`--data-dir`).
    db: Option<Arc<redb::Database>>,
}

struct ShardThread {
    core: usize,
    commands: Sender<ShardCommand>,
    join: Option<JoinHandle<()>>,
    stopped: bool,
    executor_id: usize,
    /// Set while a restart waits for the new executor to be serving.
    restarting_since: Option<Instant>,
    /// Crashes not caused by chaos, for the restart intensity.
    crashes: RestartIntensity,
}

/// Everything needed to start (or restart) a shard thread.
struct Launcher {
    config: Arc<ServerConfig>,
    tcp: Option<SocketAddr>,
    /// The shard end of the stdio bridge; kept so a restarted shard 0 can
    /// continue serving the same client.
    stdio: Option<UnixStream>,
    /// The stdio session as shard 0 last reported it.
    stdio_resume: RefCell<Option<Resume>>,
    app: App,
    state_key: StateKey,
    events: Sender<ShardEvent>,
    epoch: Instant,
    audit: Option<Sender<Vec<u8>>>,
    /// Every shard's file, opened once so a restarted shard reuses it.
    dbs: Option<Vec<Arc<redb::Database>>>,
}

impl Launcher {
    /// Starts the thread for shard `index` and waits for its executor.
    fn launch(&self, index: usize) -> Result<ShardThread, String> {
        let core = self.config.cores[index];
        let (cmd_tx, cmd_rx) = bounded(COMMAND_QUEUE_DEPTH);
        let (made_tx, made_rx) = bounded::<Option<usize>>(1);
        let start = ShardStart {
            index,
            core,
            config: self.config.clone(),
            tcp: self.tcp,
            stdio: if index == 0 {
                self.stdio.as_ref().and_then(|s| s.try_clone().ok())
            } else {
                None
            },
            stdio_resume: self.stdio_resume.borrow().clone(),
            app: self.app.clone(),
            state_key: self.state_key.clone(),
            events: self.events.clone(),
            commands: cmd_rx,
            made: made_tx,
            epoch: self.epoch,
            audit: self.audit.clone(),
            db: self.dbs.as_ref().map(|d| d[index].clone()),
        };
        let join = std::thread::Builder::new()
            .name(format!("tessera-shard-{index}"))
            .spawn(move || shard_thread(start))
            .map_err(|e| format!("spawning the thread for core {core}: {e}"))?;
        let executor_id = made_rx
            .recv_timeout(STARTUP_TIMEOUT)
            .ok()
            .flatten()
            .unwrap_or(usize::MAX);
        Ok(ShardThread {
            core,
            commands: cmd_tx,
            join: Some(join),
            stopped: false,
            executor_id,
            restarting_since: None,
            crashes: RestartIntensity::default(),
        })
    }
}

/// Builds a new mesh and tells every shard to join it. glommio numbers
/// peers by executor id, so the peer map is the rank of each shard's id.
fn rebuild_mesh(threads: &[ShardThread], queue_depth: usize) {
    let n = threads.len();
    if n < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| threads[i].executor_id);
    let mut peers = vec![0; n];
    for (peer, &shard) in order.iter().enumerate() {
        peers[shard] = peer;
    }
    let builders = MeshBuilders::new(n, queue_depth);
    for t in threads {
        let cmd = ShardCommand::JoinMesh {
            builders: builders.clone(),
            peers: peers.clone(),
        };
        if t.commands
            .send_timeout(cmd, Duration::from_secs(1))
            .is_err()
        {
            log::warn!("shard on core {}: could not send the mesh plan", t.core);
        }
    }
}

/// Runs the server until SIGINT/SIGTERM (or, with stdio, until stdin closes),
/// then prints the merged latency summary. Errors are startup failures or a
/// shard that kept dying.
pub fn serve(mut config: ServerConfig, app: App) -> Result<(), String> {
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

    let (tcp_addr, reservation) = match config.tcp {
        Some(addr) => {
            let (addr, hold) = process::reserve_listen_addr(addr)?;
            (Some(addr), Some(hold))
        }
        None => (None, None),
    };
    let (stdio_end, stdout_pump) = if config.stdio {
        let b = stdio::start().map_err(|e| format!("starting stdio: {e}"))?;
        (Some(b.shard_end), Some(b.stdout_pump))
    } else {
        (None, None)
    };

    let http_reservation = match config.http.as_mut() {
        Some(h) => {
            let (addr, hold) = process::reserve_listen_addr(h.addr)?;
            h.addr = addr;
            Some(hold)
        }
        None => None,
    };
    // Built once here so a definition error stops startup before any thread runs.
    app.build()?;
    if config.chaos.is_on() {
        log::warn!(
            "CHAOS MODE ON: {:?} -- this server injects faults on purpose; never run it in production",
            config.chaos
        );
    }
    let admin = match config.admin {
        Some(addr) => {
            let view = Arc::new(Mutex::new(AdminView::new(&config.cores)));
            let bound = admin::start(addr, view.clone())?;
            log::info!("admin endpoint on http://{bound} (/metrics, /healthz, /readyz)");
            Some(view)
        }
        None => None,
    };
    // Publishes to the admin endpoint's view; the lock is shared only with
    // the admin thread.
    let publish = |f: &dyn Fn(&mut AdminView)| {
        if let Some(v) = &admin {
            if let Ok(mut v) = v.lock() {
                f(&mut v);
            }
        }
    };
    let (audit_writer, audit_tx) = match &config.audit {
        Some(a) => {
            let (w, tx) = crate::server::audit::AuditWriter::start(a, n)?;
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
    let dbs = match &config.store {
        Some(st) => {
            let dbs = store::open_all(st, n)?;
            log::info!(
                "persistence: {} ({n} file(s), fsync {:?}{}); legacy sessions and their SSE events survive restarts",
                st.dir.display(),
                st.fsync,
                if st.fsync == store::FsyncPolicy::Interval {
                    format!(" every {} ms", st.fsync_interval_ms)
                } else {
                    String::new()
                }
            );
            Some(dbs)
        }
        None => {
            log::info!("no --data-dir: sessions and SSE event stores are kept in memory only (lost on restart)");
            None
        }
    };
    let config = Arc::new(config);
    let (event_tx, events) = bounded::<ShardEvent>(EVENT_QUEUE_DEPTH);
    let launcher = Launcher {
        config: config.clone(),
        tcp: tcp_addr,
        stdio: stdio_end,
        stdio_resume: RefCell::new(None),
        app,
        state_key: StateKey::random(),
        events: event_tx,
        epoch: Instant::now(),
        audit: audit_tx,
        dbs,
    };
    let mut threads = Vec::with_capacity(n);
    for index in 0..n {
        threads.push(launcher.launch(index)?);
    }
    rebuild_mesh(&threads, config.limits.mesh_queue_depth);

    // Startup: every shard listening, or the first failure.
    let mut ready = 0;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while ready < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ShardEvent::Ready { index, .. }) => {
                ready += 1;
                publish(&|v| v.shard_up(index));
            }
            Ok(ShardEvent::Failed { core, error }) => {
                return Err(format!("shard on core {core}: {error}"))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "only {ready} of {n} shards started within {STARTUP_TIMEOUT:?}"
                ))
            }
        }
    }
    drop(reservation);
    drop(http_reservation);
    let started = Instant::now();
    let placement: Vec<String> = config
        .cores
        .iter()
        .enumerate()
        .map(|(shard, core)| format!("shard {shard}=core {core}"))
        .collect();
    if let Some(addr) = tcp_addr {
        log::info!("listening on tcp://{addr} ({})", placement.join(", "));
    }
    if let Some(h) = &config.http {
        log::info!(
            "listening on http://{}{} ({})",
            h.addr,
            h.path,
            placement.join(", ")
        );
    }
    if config.stdio {
        log::info!("serving MCP on stdio ({})", placement.join(", "));
    }

    // Running: signals, stats, and supervising the shard threads.
    let mut stats = StatsPrinter::new(n);
    let mut total = Snapshot::empty();
    let mut stop_reason: Option<String> = None;
    let mut failure: Option<String> = None;
    let kill_every = config.chaos.kill_shard_every_ms.map(Duration::from_millis);
    let mut next_kill = kill_every.map(|d| Instant::now() + d);
    let mut kills = 0usize;
    let mut killed_at: Vec<Option<Instant>> = vec![None; n];
    loop {
        if let Some(sig) = process::wait_stop_signal(Duration::from_millis(10)) {
            stop_reason = Some(format!("signal {sig}"));
        }
        let mut dead: Vec<usize> = Vec::new();
        loop {
            match events.try_recv() {
                Ok(ShardEvent::Stats {
                    shard,
                    core,
                    tick,
                    snapshot,
                }) => {
                    if admin.is_some() {
                        let snap = snapshot.clone();
                        publish(&|v| v.shard_snapshot(shard, snap.clone()));
                    }
                    if config.stats_interval.is_some() {
                        stats.add(shard, core, tick, snapshot, started);
                    }
                }
                Ok(ShardEvent::StdioClosed) => stop_reason = Some("stdin closed".into()),
                Ok(ShardEvent::StdioSession(r)) => *launcher.stdio_resume.borrow_mut() = Some(r),
                Ok(ShardEvent::Stopped { index, .. }) => threads[index].stopped = true,
                Ok(ShardEvent::Died {
                    index,
                    core,
                    panic,
                    lost,
                    snapshot,
                }) => {
                    log::error!(
                        "shard {index} on core {core} died ({panic}); lost with it: {lost}"
                    );
                    publish(&|v| v.shard_died(index, snapshot.as_ref()));
                    if let Some(s) = snapshot {
                        total.merge(&s);
                    }
                    dead.push(index);
                }
                Ok(ShardEvent::Ready { index, core }) => {
                    publish(&|v| v.shard_up(index));
                    if let Some(since) = threads[index].restarting_since.take() {
                        let noticed = since.elapsed();
                        let from_kill = killed_at[index].take().map(|k| k.elapsed());
                        log::warn!(
                            "shard {index} restarted on core {core}: serving again {:.1} ms after its death was noticed{}",
                            noticed.as_secs_f64() * 1e3,
                            from_kill.map_or(String::new(), |d| format!(
                                " ({:.1} ms after the chaos kill)",
                                d.as_secs_f64() * 1e3
                            ))
                        );
                    }
                }
                Ok(ShardEvent::Failed { core, error }) => {
                    failure.get_or_insert_with(|| {
                        format!("restarting the shard on core {core}: {error}")
                    });
                }
                Err(_) => break,
            }
        }
        for (i, t) in threads.iter().enumerate() {
            if !t.stopped && !dead.contains(&i) && t.join.as_ref().is_some_and(|j| j.is_finished())
            {
                log::error!("shard {i} on core {} ended without a report", t.core);
                dead.push(i);
            }
        }
        if stop_reason.is_none() && failure.is_none() && !dead.is_empty() {
            for &index in &dead {
                let chaos = killed_at[index].is_some();
                if let Err(e) = restart(&mut threads, &launcher, &mut stats, index, chaos) {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_none() {
                // One new mesh for every shard, restarted ones included.
                rebuild_mesh(&threads, config.limits.mesh_queue_depth);
            }
        }
        if let (Some(at), Some(every)) = (next_kill, kill_every) {
            if Instant::now() >= at && stop_reason.is_none() {
                let victim = kills % n;
                kills += 1;
                next_kill = Some(at + every);
                if threads[victim].restarting_since.is_none() {
                    log::warn!("chaos: killing shard {victim}");
                    killed_at[victim] = Some(Instant::now());
                    let _ = threads[victim].commands.try_send(ShardCommand::Die);
                }
            }
        }
        if failure.is_some() {
            stop_reason.get_or_insert_with(|| "a shard could not be kept running".into());
        }
        if stop_reason.is_some() {
            break;
        }
    }
    let elapsed = started.elapsed();
    publish(&|v| v.stopping());
    log::info!(
        "stopping ({}): draining for up to {} ms",
        stop_reason.as_deref().unwrap_or("?"),
        config.limits.drain_timeout_ms
    );

    // Shutdown: every shard drains and reports its final metrics.
    for t in &threads {
        if let Err(TrySendError::Full(_)) = t.commands.try_send(ShardCommand::Shutdown) {
            log::warn!("shard on core {}: command queue full", t.core);
        }
    }
    let deadline = Instant::now() + config.limits.drain_timeout() + Duration::from_secs(2);
    let mut stopped = threads.iter().filter(|t| t.stopped).count();
    while stopped < n {
        if process::wait_stop_signal(Duration::ZERO).is_some() {
            eprintln!("tessera: second stop signal, exiting without draining");
            std::process::exit(130);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("{} shard(s) did not stop in time", n - stopped);
            break;
        }
        match events.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(ShardEvent::Stopped {
                index,
                core,
                snapshot,
                unfinished_connections,
            }) => {
                if unfinished_connections > 0 {
                    log::warn!("shard on core {core}: closed {unfinished_connections} connection(s) still busy after the drain timeout");
                }
                threads[index].stopped = true;
                total.merge(&snapshot);
                stopped += 1;
            }
            Ok(ShardEvent::Died {
                index, snapshot, ..
            }) => {
                if let Some(s) = snapshot {
                    total.merge(&s);
                }
                threads[index].stopped = true;
                stopped += 1;
            }
            Ok(_) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                for t in threads.iter().filter(|t| !t.stopped) {
                    if t.join.as_ref().is_some_and(|j| j.is_finished()) {
                        failure.get_or_insert_with(|| {
                            format!("the shard on core {} stopped unexpectedly", t.core)
                        });
                    }
                }
            }
        }
    }
    for t in &mut threads {
        if let Some(j) = t.join.take() {
            if j.is_finished() {
                if let Err(panic) = j.join() {
                    let msg = panic_message(&panic);
                    failure.get_or_insert_with(|| {
                        format!("the shard on core {} panicked: {msg}", t.core)
                    });
                }
            }
        }
    }
    // Our copy of the stdio socket would keep the stdout pump waiting.
    drop(launcher);
    if let Some(pump) = stdout_pump {
        // Everything answered reaches stdout before the summary is printed.
        let until = Instant::now() + Duration::from_secs(2);
        while !pump.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(w) = audit_writer {
        // Shards that ended flushed their lines; one that did not end
        // still holds the queue open, so this waits only so long.
        w.finish_within(Duration::from_secs(2));
    }
    eprint!("{}", total.summary(elapsed));
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Replaces the dead shard `index` with a new thread on the same core. A
/// shard that crashes (not chaos-killed) more than `max_restarts` times in
/// `restart_period_ms` is not restarted again: the server stops.
fn restart(
    threads: &mut [ShardThread],
    launcher: &Launcher,
    stats: &mut StatsPrinter,
    index: usize,
    chaos_kill: bool,
) -> Result<(), String> {
    let limits = &launcher.config.limits;
    let core = threads[index].core;
    if !chaos_kill
        && !threads[index].crashes.allow(
            Instant::now(),
            limits.max_restarts,
            limits.restart_period(),
        )
    {
        return Err(format!(
            "the shard on core {core} died more than {} times within {} ms",
            limits.max_restarts, limits.restart_period_ms
        ));
    }
    let noticed = Instant::now();
    if let Some(j) = threads[index].join.take() {
        let _ = j.join();
    }
    stats.forget(index);
    let crashes = std::mem::take(&mut threads[index].crashes);
    let mut t = launcher.launch(index)?;
    t.crashes = crashes;
    t.restarting_since = Some(noticed);
    threads[index] = t;
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}

fn shard_thread(start: ShardStart) {
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(start.core))
        .name(&format!("tessera-shard-{}", start.index))
        .io_memory(EXECUTOR_IO_MEMORY_BYTES);
    if let Some(spin) = start.config.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    let made = builder.make();
    let executor = match made {
        Ok(ex) => ex,
        Err(e) => {
            let _ = start.made.send(None);
            let _ = start.events.send(ShardEvent::Failed {
                core: start.core,
                error: format!("starting the executor: {e}"),
            });
            return;
        }
    };
    let _ = start.made.send(Some(executor.id()));
    let (index, core, events) = (start.index, start.core, start.events.clone());
    // The shard outlives a panic through this slot, so the thread can still
    // say what died with it and hand over its metrics.
    let slot: Rc<std::cell::RefCell<Option<Rc<Shard>>>> = Rc::default();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        executor.run(shard_main(start, slot.clone()))
    }));
    if let Err(panic) = run {
        let shard = slot.borrow_mut().take();
        let (lost, snapshot) = match &shard {
            Some(s) => {
                let lost = describe_lost(s);
                s.shutdown_sockets();
                (lost, Some(s.metrics.borrow().snapshot(s.id)))
            }
            None => ("nothing (it had not started serving)".into(), None),
        };
        let _ = events.send(ShardEvent::Died {
            index,
            core,
            panic: panic_message(&panic),
            lost,
            snapshot,
        });
        // After the report, so freeing a large key space does not delay the
        // restart.
        if let Some(s) = &shard {
            s.release_state();
        }
    }
}

/// What a dead shard held that is gone with it.
fn describe_lost(s: &Shard) -> String {
    format!(
        "{} connection(s), {} legacy HTTP session(s), {} kv key(s), {} task(s), {} cross-core request(s) in flight",
        s.conns.live(),
        s.sessions.borrow().len(),
        s.kv.borrow().len(),
        s.tasks.borrow().len(),
        s.mesh().map_or(0, |m| m.pending()),
    )
}

async fn shard_main(start: ShardStart, slot: Rc<std::cell::RefCell<Option<Rc<Shard>>>>) {
    let ShardStart {
        index,
        core,
        config,
        tcp,
        stdio,
        stdio_resume,
        app,
        state_key,
        events,
        commands,
        epoch,
        audit,
        db,
        ..
    } = start;
    let fail = |error: String| {
        let _ = events.send(ShardEvent::Failed { core, error });
    };

    let registry = match app.build() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let shard = Rc::new(Shard::new(
        index,
        core,
        config.shard_count(),
        config.limits.clone(),
        registry,
        state_key,
        None,
        config.http.clone(),
        config.auth.clone(),
    ));
    shard.chaos.set(config.chaos);
    *slot.borrow_mut() = Some(shard.clone());
    if config.shard_count() > 1 {
        // The mesh comes before anything is served: the shard's keys, tasks
        // and sessions are reachable only once it has joined. A newer plan
        // (another shard died meanwhile) replaces a join that cannot finish.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let Some(mut plan) = next_plan(&commands, deadline).await else {
            return fail("no mesh plan from the main thread".into());
        };
        loop {
            let (builders, peers) = plan;
            let joined = futures_lite::future::or(async { Ok(builders.join().await) }, async {
                Err(next_plan(&commands, deadline).await)
            })
            .await;
            match joined {
                Ok(Ok(j)) => {
                    shard.install_mesh(j, peers);
                    break;
                }
                Ok(Err(e)) => return fail(e),
                Err(Some(newer)) => plan = newer,
                Err(None) => return fail("the mesh could not be joined in time".into()),
            }
        }
    }

    if let (Some(db), Some(st)) = (db, &config.store) {
        // Before any listener: a client continuing its session must find it.
        let mut loaded = match store::load(&db) {
            Ok(l) => l,
            Err(e) => {
                return fail(format!(
                    "reading {}: {e}",
                    store::file_of(&st.dir, index).display()
                ))
            }
        };
        match store::ShardStore::start(st, db, index) {
            Ok(s) => *shard.store.borrow_mut() = Some(s),
            Err(e) => return fail(e),
        }
        let (sessions, events, tasks) = (
            loaded.sessions.len(),
            loaded.events.len(),
            loaded.tasks.len(),
        );
        shard.tasks.borrow_mut().track_changes();
        let task_records = std::mem::take(&mut loaded.tasks);
        let restored_tasks = crate::server::tasks::restore(&shard, task_records);
        let restored = http::session::restore(&shard, loaded);
        if sessions + tasks > 0 {
            log::info!(
                "restored {restored} of {sessions} stored session(s), {events} SSE event(s), {restored_tasks} of {tasks} task(s)"
            );
        }
        let s = shard.clone();
        glommio::spawn_local(async move {
            let flush = |s: &Shard| {
                crate::server::tasks::flush_store(s);
                http::session::flush_store(s);
            };
            while !s
                .sleep_unless_shutdown(Duration::from_millis(store::FLUSH_MS))
                .await
            {
                flush(&s);
            }
            flush(&s);
        })
        .detach();
    }
    let http_listener = match config.http.as_ref().map(|h| (h.addr, http::bind(h.addr))) {
        Some((addr, Err(e))) => return fail(format!("binding {addr}: {e}")),
        Some((_, Ok(l))) => Some(l),
        None => None,
    };
    let listener = match tcp.map(tcp::bind) {
        Some(Err(e)) => return fail(format!("binding {}: {e}", tcp.expect("tcp address"))),
        Some(Ok(l)) => Some(l),
        None => None,
    };
    if events.send(ShardEvent::Ready { index, core }).is_err() {
        return;
    }
    log::debug!("shard {index} running on core {core}");
    if let (Some(tx), Some(a)) = (audit, &config.audit) {
        *shard.audit.borrow_mut() = Some(crate::server::audit::AuditBuffer::new(
            tx,
            a.buffer_bytes,
            index,
        ));
        glommio::spawn_local(crate::server::audit::flush_loop(shard.clone())).detach();
    }
    if let Some(listener) = listener {
        glommio::spawn_local(tcp::accept_loop(shard.clone(), listener)).detach();
        glommio::spawn_local(conn::idle_sweep(shard.clone())).detach();
    }
    if let Some(listener) = http_listener {
        glommio::spawn_local(http::accept_loop(shard.clone(), listener)).detach();
    }
    if shard.registry.file_dirs.iter().any(|d| d.watched()) {
        glommio::spawn_local(crate::server::files::watch_loop(shard.clone())).detach();
    }
    if let Some(sock) = stdio {
        let shard = shard.clone();
        let events = events.clone();
        glommio::spawn_local(async move {
            // SAFETY: the descriptor comes from a live socket we own and hand over.
            let stream = unsafe {
                <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(
                    sock.into_raw_fd(),
                )
            };
            let report_to = events.clone();
            let report = Box::new(move |r| {
                // Never block the executor: a full event queue only means
                // a restart would resume an older state.
                if report_to.try_send(ShardEvent::StdioSession(r)).is_err() {
                    log::warn!("stdio session state not recorded: event queue full");
                }
            });
            if let Err(e) = conn::serve_stdio(stream, shard, stdio_resume, report).await {
                log::warn!("stdio connection ended: {e}");
            }
            let _ = events.send(ShardEvent::StdioClosed);
        })
        .detach();
    }

    // Metrics go to the main thread for --stats-interval, or every second
    // for the admin endpoint.
    let report_every = config
        .stats_interval
        .or(config.admin.map(|_| admin::ADMIN_REFRESH));
    control_loop(&shard, &commands, &events, report_every, epoch).await;

    // Drain: no new connections or requests; in-flight requests finish.
    shard.shutdown.raise();
    shard.conns.wake_all();
    let deadline = Instant::now() + config.limits.drain_timeout();
    while shard.conns.live() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let snapshot = shard.metrics.borrow().snapshot(index);
    let _ = events.send(ShardEvent::Stopped {
        index,
        core,
        snapshot,
        unfinished_connections: shard.conns.live(),
    });
}

/// The next mesh plan on the command queue; `None` at the deadline or on
/// shutdown.
async fn next_plan(
    commands: &Receiver<ShardCommand>,
    deadline: Instant,
) -> Option<(MeshBuilders, Vec<usize>)> {
    loop {
        match commands.try_recv() {
            Ok(ShardCommand::JoinMesh { builders, peers }) => return Some((builders, peers)),
            Ok(ShardCommand::Shutdown) | Err(TryRecvError::Disconnected) => return None,
            Ok(ShardCommand::Die) | Err(TryRecvError::Empty) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits for shutdown while sending stats every `stats_interval`.
async fn control_loop(
    shard: &Rc<Shard>,
    commands: &Receiver<ShardCommand>,
    events: &Sender<ShardEvent>,
    stats_interval: Option<Duration>,
    epoch: Instant,
) {
    // Ticks count intervals since the process-wide epoch, so a restarted
    // shard's reports line up with its peers'.
    let tick_of = |now: Instant, every: Duration| {
        (now.saturating_duration_since(epoch).as_nanos() / every.as_nanos().max(1)) as u64
    };
    let mut last_tick = stats_interval.map_or(0, |every| tick_of(Instant::now(), every));
    // A mesh join in progress; a newer plan replaces (cancels) it.
    let mut joining: Option<glommio::Task<()>> = None;
    loop {
        glommio::timer::sleep(CONTROL_POLL).await;
        loop {
            match commands.try_recv() {
                Ok(ShardCommand::Shutdown) | Err(TryRecvError::Disconnected) => return,
                Ok(ShardCommand::JoinMesh { builders, peers }) => {
                    let shard = shard.clone();
                    let task = glommio::spawn_local(async move {
                        match builders.join().await {
                            Ok(j) => {
                                let lost = shard.install_mesh(j, peers);
                                let mut m = shard.metrics.borrow_mut();
                                m.counters.mesh_rejoins += 1;
                                m.counters.mesh_lost_in_rebuild += lost as u64;
                                drop(m);
                                log::info!(
                                    "shard {}: joined the rebuilt mesh ({lost} cross-core request(s) failed with the old one)",
                                    shard.id
                                );
                            }
                            Err(e) => log::error!("shard {}: {e}", shard.id),
                        }
                    });
                    drop(joining.replace(task));
                }
                Ok(ShardCommand::Die) => {
                    // Escapes every catch: ends this executor like a real bug.
                    glommio::spawn_local(async {
                        panic!("chaos: shard killed on purpose (--chaos-kill-shard-every)")
                    })
                    .detach();
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Some(every) = stats_interval {
            let tick = tick_of(Instant::now(), every);
            if tick > last_tick {
                last_tick = tick;
                let mut snapshot = shard.metrics.borrow().snapshot(shard.id);
                snapshot.gauges = shard.gauges();
                let ev = ShardEvent::Stats {
                    shard: shard.id,
                    core: shard.core,
                    tick,
                    snapshot,
                };
                if let Err(TrySendError::Full(_)) = events.try_send(ev) {
                    log::debug!(
                        "shard {}: stats tick {tick} skipped, event queue full",
                        shard.id
                    );
                }
            }
        }
    }
}

/// Prints one line per stats tick once every shard has reported it.
struct StatsPrinter {
    shards: usize,
    /// Per tick: (shard, core, snapshot) received so far.
    pending: std::collections::BTreeMap<u64, Vec<(usize, usize, Snapshot)>>,
    /// Each shard's snapshot at the last printed tick.
    previous: std::collections::HashMap<usize, Snapshot>,
    last_printed: Option<Instant>,
}

impl StatsPrinter {
    fn new(shards: usize) -> Self {
        Self {
            shards,
            pending: Default::default(),
            previous: Default::default(),
            last_printed: None,
        }
    }

    /// The shard was restarted: its counters start again from zero.
    fn forget(&mut self, shard: usize) {
        self.previous.remove(&shard);
    }

    fn add(&mut self, shard: usize, core: usize, tick: u64, snapshot: Snapshot, started: Instant) {
        let entry = self.pending.entry(tick).or_default();
        entry.push((shard, core, snapshot));
        if entry.len() < self.shards {
            return;
        }
        let mut reports = self.pending.remove(&tick).unwrap_or_default();
        // Older incomplete ticks will never complete (a report was skipped).
        self.pending.retain(|t, _| *t > tick);
        reports.sort_by_key(|r| r.1);
        let now = Instant::now();
        let interval = self
            .last_printed
            .map_or_else(|| started.elapsed(), |t| now - t);
        self.last_printed = Some(now);
        let mut rows = Vec::with_capacity(reports.len());
        for (shard, core, snap) in reports {
            let delta = match self.previous.get(&shard) {
                Some(prev) => snap.since(prev),
                None => snap.clone(),
            };
            self.previous.insert(shard, snap);
            rows.push((core, delta));
        }
        eprintln!(
            "{}",
            metrics::interval_line(started.elapsed(), interval, &rows)
        );
    }
}
