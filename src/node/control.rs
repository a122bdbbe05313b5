//! The control plane between the main thread and the shards: bounded
//! crossbeam channels. Shards report readiness, periodic stats and their
//! final metrics; the main thread sends mesh plans, shutdown and (in chaos
//! mode) kills. crossbeam cannot wake a parked executor, so each shard polls
//! its command queue every [`CONTROL_POLL`]; that costs a timer wake-up,
//! never a request's latency. Request traffic never uses this path.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::shard::{NodeMsg, NodeReply, NodeShard};
use crate::metrics::{self, Snapshot};
use crate::runtime::mesh::Membership;
use crate::server::auth::AuthConfig;
use crate::server::registry::App;
use crate::server::session::Resume;
use crate::transport::listeners::Kind;
use crate::transport::netrules::{Listener, NetRules};

/// How often a shard checks its command queue.
pub(crate) const CONTROL_POLL: Duration = Duration::from_millis(20);
/// Events queued from shards to the main thread. Lifecycle events wait for
/// room; stats lines are skipped (and said so) when it is full.
pub(crate) const EVENT_QUEUE_DEPTH: usize = 1024;
/// Commands queued to one shard (shutdown, mesh plans, chaos kills).
pub(crate) const COMMAND_QUEUE_DEPTH: usize = 16;

/// A shard's ends of a freshly built mesh.
pub(crate) type MeshMembership = Membership<NodeMsg, NodeReply>;

/// Shard -> main thread.
pub(crate) enum ShardEvent {
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
    /// Shutting down: every connection of this shard is closed; it still
    /// answers its peers' cross-core messages until told to leave.
    Drained {
        index: usize,
    },
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
pub(crate) enum ShardCommand {
    Shutdown,
    /// Every shard has drained: leave the mesh and stop (a shard that left
    /// earlier would time out its peers' last cross-core requests).
    Leave,
    /// Join a freshly built mesh (this shard's ends of it). Sent at startup
    /// and whenever a shard was restarted.
    JoinMesh(MeshMembership),
    /// Chaos: let a panic escape the executor, as a bug would.
    Die,
    /// What a reload changes, in force from the next request on.
    /// `count`: this shard counts the reload (one shard does); `done` is
    /// told once it is applied.
    Reload {
        reloaded: Box<Reloaded>,
        count: bool,
        done: Sender<()>,
    },
    /// A reload failed (counted by the one shard that gets this).
    ReloadFailed,
    /// Serve a connection another process accepted (a binary upgrade).
    Adopt {
        kind: Kind,
        fd: OwnedFd,
    },
}

/// What a reload hands every shard.
#[derive(Clone)]
pub(crate) struct Reloaded {
    /// The `--auth` tables (None: `--auth` is off, as before).
    pub auth: Option<AuthConfig>,
    /// `--rate-limit-per-sec` and its burst.
    pub rate_limit: (u32, u32),
    /// Tools, prompts and resources (each shard builds its registry).
    pub app: App,
    /// `--allow-cidr`/`--deny-cidr`, for connections accepted from now on.
    pub net_rules: NetRules,
    /// `--tls-cert`, for handshakes from now on (on exactly when it was).
    pub tls: Option<crate::config::TlsConfig>,
    /// `--admin-tls-cert` (for the admin thread; shards ignore it).
    pub admin_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// The next mesh plan on the command queue; `None` at the deadline or on
/// shutdown.
pub(crate) async fn next_plan(
    commands: &Receiver<ShardCommand>,
    deadline: Instant,
) -> Option<MeshMembership> {
    loop {
        match commands.try_recv() {
            Ok(ShardCommand::JoinMesh(m)) => return Some(m),
            Ok(ShardCommand::Shutdown | ShardCommand::Leave) | Err(TryRecvError::Disconnected) => {
                return None
            }
            // The plan it builds from already holds a reload's tables.
            Ok(
                ShardCommand::Die
                | ShardCommand::Reload { .. }
                | ShardCommand::ReloadFailed
                | ShardCommand::Adopt { .. },
            )
            | Err(TryRecvError::Empty) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// After draining: waits (serving peers meanwhile) until the main thread
/// says every shard has drained, it is gone, or `limit` passed (then the
/// shard leaves anyway; a peer's request still in flight to it fails).
pub(crate) async fn await_leave(commands: &Receiver<ShardCommand>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match commands.try_recv() {
            Ok(ShardCommand::Leave) | Err(TryRecvError::Disconnected) => return,
            // Nothing else applies to a shard that is stopping; a handed
            // connection is closed (dropped) like any other at shutdown.
            Ok(_) | Err(TryRecvError::Empty) => {
                glommio::timer::sleep(CONTROL_POLL).await;
            }
        }
    }
    log::warn!("no word that every shard drained within {limit:?}; leaving the mesh anyway");
}

/// Serves a connection another process accepted, as if accepted here.
fn adopt(shard: &Rc<NodeShard>, kind: Kind, fd: OwnedFd) {
    // SAFETY: `into_raw_fd` gives up the only owner of `fd`, a connected
    // TCP socket the main thread received for this shard; the stream
    // takes it over.
    let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // Unserved so far, so this process's rules decide, as at an accept.
    let listener = match kind {
        Kind::Http => Listener::Http,
        _ => Listener::Tcp,
    };
    if !shard.net.admits(listener, &stream) {
        return;
    }
    match (kind, &shard.http) {
        (Kind::Http, Some(h)) => crate::transport::http::serve_accepted(h.clone(), stream),
        (Kind::Tcp, _) => crate::transport::tcp::serve_accepted(shard.net.clone(), stream),
        _ => return,
    }
    shard.core.metrics.borrow_mut().counters.connections_adopted += 1;
}

/// Joins a rebuilt mesh in the background (the shard's work goes on).
fn rejoin(shard: &Rc<NodeShard>, membership: MeshMembership) -> glommio::Task<()> {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let lost = shard.install_mesh(membership.join().await);
        let mut m = shard.core.metrics.borrow_mut();
        m.counters.mesh_rejoins += 1;
        m.counters.mesh_lost_in_rebuild += lost as u64;
        drop(m);
        log::info!(
            "shard {}: joined the rebuilt mesh ({lost} cross-core request(s) failed with the old one)",
            shard.id
        );
    })
}

/// Waits for shutdown while obeying commands and sending stats every
/// `stats_interval`.
pub(crate) async fn control_loop(
    shard: &Rc<NodeShard>,
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
                Ok(ShardCommand::Shutdown | ShardCommand::Leave)
                | Err(TryRecvError::Disconnected) => return,
                Ok(ShardCommand::JoinMesh(membership)) => {
                    drop(joining.replace(rejoin(shard, membership)));
                }
                Ok(ShardCommand::Adopt { kind, fd }) => adopt(shard, kind, fd),
                Ok(ShardCommand::Reload {
                    reloaded,
                    count,
                    done,
                }) => {
                    let Reloaded {
                        auth,
                        rate_limit,
                        app,
                        net_rules,
                        tls,
                        admin_tls: _,
                    } = *reloaded;
                    shard.net.set_rules(net_rules);
                    shard.net.tls.set(tls);
                    if let Some(a) = auth {
                        shard.core.set_auth(a);
                    }
                    shard.core.set_rate_limit(rate_limit.0, rate_limit.1);
                    match crate::server::registry::reload(&shard.core, &app) {
                        Ok(changed) if !changed.is_empty() => {
                            log::info!("shard {}: offered lists changed: {changed:?}", shard.id)
                        }
                        Ok(_) => {}
                        // Checked on the main thread first: only a bug gets here.
                        Err(e) => log::error!("shard {}: the reloaded registry: {e}", shard.id),
                    }
                    if count {
                        shard.core.metrics.borrow_mut().counters.config_reloads += 1;
                    }
                    log::info!("shard {}: reloaded", shard.id);
                    let _ = done.try_send(());
                }
                Ok(ShardCommand::ReloadFailed) => {
                    shard
                        .core
                        .metrics
                        .borrow_mut()
                        .counters
                        .config_reload_failures += 1;
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
        if let Some(t) = shard.core.tracer() {
            t.flush_samples();
            shard.core.metrics.borrow_mut().counters.trace_dropped = t.dropped();
        }
        let Some(every) = stats_interval else {
            continue;
        };
        let tick = tick_of(Instant::now(), every);
        if tick <= last_tick {
            continue;
        }
        last_tick = tick;
        let mut snapshot = shard.core.metrics.borrow().snapshot(shard.id);
        snapshot.gauges = shard.gauges();
        let ev = ShardEvent::Stats {
            shard: shard.id,
            core: shard.cpu,
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

/// Prints one line per stats tick once every shard has reported it.
pub(crate) struct StatsPrinter {
    shards: usize,
    /// Per tick: (shard, core, snapshot) received so far.
    pending: BTreeMap<u64, Vec<(usize, usize, Snapshot)>>,
    /// Each shard's snapshot at the last printed tick.
    previous: HashMap<usize, Snapshot>,
    last_printed: Option<Instant>,
}

impl StatsPrinter {
    pub fn new(shards: usize) -> Self {
        Self {
            shards,
            pending: Default::default(),
            previous: Default::default(),
            last_printed: None,
        }
    }

    /// The shard was restarted: its counters start again from zero.
    pub fn forget(&mut self, shard: usize) {
        self.previous.remove(&shard);
    }

    pub fn add(
        &mut self,
        shard: usize,
        core: usize,
        tick: u64,
        snapshot: Snapshot,
        started: Instant,
    ) {
        let entry = self.pending.entry(tick).or_default();
        entry.push((shard, core, snapshot));
        if entry.len() < self.shards {
            return;
        }
        let mut reports = self.pending.remove(&tick).expect("just filled");
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
