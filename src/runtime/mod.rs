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

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServerConfig;
use crate::metrics::{self, Snapshot};
use crate::server::mrtr::StateKey;
use crate::server::registry::App;
use crate::transport::{conn, http, stdio, tcp};
use mesh::MeshBuilders;
use shard::Shard;

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
/// Commands queued to one shard; only shutdown exists.
const COMMAND_QUEUE_DEPTH: usize = 4;

/// Shard -> main thread.
pub enum ShardEvent {
    Ready {
        index: usize,
        shard: usize,
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
    Stopped {
        index: usize,
        core: usize,
        snapshot: Snapshot,
        unfinished_connections: usize,
    },
}

/// Main thread -> shard.
pub enum ShardCommand {
    Shutdown,
}

/// What one executor thread is given at start.
struct ShardStart {
    index: usize,
    core: usize,
    config: Arc<ServerConfig>,
    tcp: Option<SocketAddr>,
    stdio: Option<UnixStream>,
    mesh: Option<MeshBuilders>,
    app: App,
    state_key: StateKey,
    events: Sender<ShardEvent>,
    commands: Receiver<ShardCommand>,
    /// Signalled once this thread's executor exists (or failed to).
    made: Sender<()>,
}

struct ShardThread {
    core: usize,
    commands: Sender<ShardCommand>,
    join: Option<JoinHandle<()>>,
    stopped: bool,
}

/// Runs the server until SIGINT/SIGTERM (or, with stdio, until stdin closes),
/// then prints the merged latency summary. Errors are startup failures or a
/// shard that died.
pub fn serve(mut config: ServerConfig, app: App) -> Result<(), String> {
    let n = config.shard_count();
    process::ensure_memlock(n)?;
    process::block_stop_signals();

    let (tcp_addr, reservation) = match config.tcp {
        Some(addr) => {
            let (addr, hold) = process::reserve_listen_addr(addr)?;
            (Some(addr), Some(hold))
        }
        None => (None, None),
    };
    let mut bridge = if config.stdio {
        Some(stdio::start().map_err(|e| format!("starting stdio: {e}"))?)
    } else {
        None
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
    let state_key = StateKey::random();
    let config = Arc::new(config);
    let mesh = (n > 1).then(|| MeshBuilders::new(n, config.limits.mesh_queue_depth));
    let (event_tx, events) = bounded::<ShardEvent>(EVENT_QUEUE_DEPTH);
    let mut threads = Vec::with_capacity(n);
    let (made_tx, made_rx) = bounded::<()>(1);
    for (index, &core) in config.cores.iter().enumerate() {
        let (cmd_tx, cmd_rx) = bounded(COMMAND_QUEUE_DEPTH);
        let start = ShardStart {
            index,
            core,
            config: config.clone(),
            tcp: tcp_addr,
            stdio: if index == 0 {
                bridge.as_mut().and_then(|b| b.shard_end.try_clone().ok())
            } else {
                None
            },
            mesh: mesh.clone(),
            app: app.clone(),
            state_key: state_key.clone(),
            events: event_tx.clone(),
            commands: cmd_rx,
            made: made_tx.clone(),
        };
        let join = std::thread::Builder::new()
            .name(format!("tessera-shard-{index}"))
            .spawn(move || shard_thread(start))
            .map_err(|e| format!("spawning the thread for core {core}: {e}"))?;
        // Executors are created one at a time so glommio numbers them in
        // shard order; mesh peer ids follow that numbering, which makes
        // shard i the one pinned to cores[i].
        let _ = made_rx.recv_timeout(STARTUP_TIMEOUT);
        threads.push(ShardThread {
            core,
            commands: cmd_tx,
            join: Some(join),
            stopped: false,
        });
    }
    drop(event_tx);
    // The shard holds its own copy of the stdio socket now.
    let stdout_pump = bridge.take().map(|b| {
        drop(b.shard_end);
        b.stdout_pump
    });

    // Startup: every shard listening, or the first failure.
    let mut shard_of_core = vec![usize::MAX; n];
    let mut ready = 0;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while ready < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ShardEvent::Ready { index, shard, .. }) => {
                shard_of_core[index] = shard;
                ready += 1;
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
        .zip(&shard_of_core)
        .map(|(core, shard)| format!("shard {shard}=core {core}"))
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

    // Running: signals, stats, and watching for shards that die.
    let mut stats = StatsPrinter::new(n);
    let mut stop_reason: Option<String> = None;
    let mut failure: Option<String> = None;
    loop {
        if let Some(sig) = process::wait_stop_signal(Duration::from_millis(50)) {
            stop_reason = Some(format!("signal {sig}"));
        }
        loop {
            match events.try_recv() {
                Ok(ShardEvent::Stats {
                    shard,
                    core,
                    tick,
                    snapshot,
                }) => stats.add(shard, core, tick, snapshot, started),
                Ok(ShardEvent::StdioClosed) => stop_reason = Some("stdin closed".into()),
                Ok(ShardEvent::Stopped { index, .. }) => threads[index].stopped = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for t in &threads {
            if !t.stopped && t.join.as_ref().is_some_and(|j| j.is_finished()) {
                failure = Some(format!("the shard on core {} stopped unexpectedly", t.core));
            }
        }
        if failure.is_some() {
            stop_reason.get_or_insert_with(|| "a shard died".into());
        }
        if stop_reason.is_some() {
            break;
        }
    }
    let elapsed = started.elapsed();
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
    let mut total = Snapshot::empty();
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
    if let Some(pump) = stdout_pump {
        // Everything answered reaches stdout before the summary is printed.
        let until = Instant::now() + Duration::from_secs(2);
        while !pump.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprint!("{}", total.summary(elapsed));
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
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
    let _ = start.made.send(());
    let executor = match made {
        Ok(ex) => ex,
        Err(e) => {
            let _ = start.events.send(ShardEvent::Failed {
                core: start.core,
                error: format!("starting the executor: {e}"),
            });
            return;
        }
    };
    executor.run(shard_main(start));
}

async fn shard_main(start: ShardStart) {
    let ShardStart {
        index,
        core,
        config,
        tcp,
        stdio,
        mesh,
        app,
        state_key,
        events,
        commands,
        ..
    } = start;
    let fail = |error: String| {
        let _ = events.send(ShardEvent::Failed { core, error });
    };

    let (mesh, receivers) = match mesh {
        Some(builders) => match builders.join().await {
            Ok(j) => {
                let m = Rc::new(mesh::Mesh::new(
                    j.req_tx,
                    j.rep_tx,
                    config.limits.mesh_pending_max,
                    config.limits.mesh_timeout(),
                ));
                (Some(m), Some((j.req_rx, j.rep_rx)))
            }
            Err(e) => return fail(e),
        },
        None => (None, None),
    };
    let id = mesh.as_ref().map_or(0, |m| m.me());
    if id != index {
        log::warn!("shard on core {core} got mesh id {id}, expected {index}");
    }
    let shard = Rc::new(Shard::new(
        id,
        core,
        config.shard_count(),
        config.limits.clone(),
        match app.build() {
            Ok(r) => r,
            Err(e) => return fail(e),
        },
        state_key,
        mesh,
        config.http.clone(),
    ));
    if let Some((req_rx, rep_rx)) = receivers {
        shard::spawn_mesh_tasks(&shard, req_rx, rep_rx);
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
    if events
        .send(ShardEvent::Ready {
            index,
            shard: id,
            core,
        })
        .is_err()
    {
        return;
    }
    log::debug!("shard {id} running on core {core}");
    if let Some(listener) = listener {
        glommio::spawn_local(tcp::accept_loop(shard.clone(), listener)).detach();
    }
    if let Some(listener) = http_listener {
        glommio::spawn_local(http::accept_loop(shard.clone(), listener)).detach();
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
            if let Err(e) = conn::serve(stream, shard).await {
                log::warn!("stdio connection ended: {e}");
            }
            let _ = events.send(ShardEvent::StdioClosed);
        })
        .detach();
    }

    control_loop(&shard, &commands, &events, config.stats_interval).await;

    // Drain: no new connections or requests; in-flight requests finish.
    shard.shutdown.raise();
    shard.conns.wake_all();
    let deadline = Instant::now() + config.limits.drain_timeout();
    while shard.conns.live() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let snapshot = shard.metrics.borrow().snapshot(id);
    let _ = events.send(ShardEvent::Stopped {
        index,
        core,
        snapshot,
        unfinished_connections: shard.conns.live(),
    });
}

/// Waits for shutdown while sending stats every `stats_interval`.
async fn control_loop(
    shard: &Rc<Shard>,
    commands: &Receiver<ShardCommand>,
    events: &Sender<ShardEvent>,
    stats_interval: Option<Duration>,
) {
    let mut tick = 0u64;
    let mut next_stats = stats_interval.map(|d| Instant::now() + d);
    loop {
        glommio::timer::sleep(CONTROL_POLL).await;
        match commands.try_recv() {
            Ok(ShardCommand::Shutdown) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        if let (Some(at), Some(every)) = (next_stats, stats_interval) {
            let now = Instant::now();
            if now >= at {
                tick += 1;
                next_stats = Some(at + every);
                let snapshot = shard.metrics.borrow().snapshot(shard.id);
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
