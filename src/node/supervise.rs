//! The main thread's side: starting the shard threads, restarting one that
//! dies (with OTP's restart intensity), rebuilding the mesh around it,
//! relaying stats to the admin endpoint and the stats lines, chaos kills,
//! and the orderly shutdown with the merged summary.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use super::control::{
    Reloaded, ShardCommand, ShardEvent, StatsPrinter, COMMAND_QUEUE_DEPTH, EVENT_QUEUE_DEPTH,
};
use super::shard::{NodeMsg, NodeReply, NodeShard};
use super::start::{self, Plan, ShardStart, STARTUP_TIMEOUT};
use super::upgrade::Orphans;
use super::{ServeError, EXECUTOR_IO_MEMORY_BYTES};
use crate::adapters::audit::AuditWriter;
use crate::adapters::backup;
use crate::adapters::otel;
use crate::adapters::store;
use crate::config::{Limits, ServerConfig};
use crate::metrics::Snapshot;
use crate::runtime::executor::{self, ExecutorSpec};
use crate::runtime::mesh;
use crate::runtime::process;
use crate::runtime::supervisor::RestartIntensity;
use crate::server::registry::App;
use crate::server::session::Resume;
use crate::transport::admin::{AdminStop, AdminView};
use crate::transport::control_socket::ControlSocket;
use crate::transport::handover;
use crate::transport::listeners::{Kind, Listeners};

/// How often the main thread looks for signals and events.
const MAIN_POLL: Duration = Duration::from_millis(10);
/// How long the shutdown waits for every shard thread to end (its store
/// writer commits what it was given and closes the file).
const JOIN_WAIT: Duration = Duration::from_secs(6);
/// How long a reload waits for every shard to apply it before answering.
const RELOAD_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's thread, as the main thread tracks it.
struct ShardThread {
    core: usize,
    commands: Sender<ShardCommand>,
    join: Option<JoinHandle<()>>,
    stopped: bool,
    /// Shutting down: its connections are closed (it still serves peers).
    drained: bool,
    /// Set while a restart waits for the new executor to be serving.
    restarting_since: Option<Instant>,
    /// When chaos killed it, for the restart log line.
    killed_at: Option<Instant>,
    /// Crashes not caused by chaos, for the restart intensity.
    crashes: RestartIntensity,
}

/// Everything needed to start (or restart) a shard thread.
pub(super) struct Launcher {
    plan: Arc<Plan>,
    cores: Vec<usize>,
    spin_before_park: Option<Duration>,
    limits: Limits,
    /// The shard end of the stdio bridge; kept so a restarted shard 0 can
    /// continue serving the same client.
    stdio: Option<UnixStream>,
    /// The stdio session as shard 0 last reported it.
    stdio_resume: RefCell<Option<Resume>>,
    events_tx: Sender<ShardEvent>,
    events: Receiver<ShardEvent>,
    audit: Option<Sender<Vec<u8>>>,
    /// `--otlp-endpoint`: the exporter's queue.
    otel: Option<otel::Queue>,
    /// Every shard's file, opened once so a restarted shard reuses it.
    dbs: Option<Vec<Arc<redb::Database>>>,
    /// Every listening socket (the originals; shards get duplicates).
    pub(super) listeners: RefCell<Listeners>,
}

impl Launcher {
    pub fn new(
        config: &ServerConfig,
        plan: Arc<Plan>,
        stdio: Option<UnixStream>,
        audit: Option<Sender<Vec<u8>>>,
        otel: Option<otel::Queue>,
        dbs: Option<Vec<Arc<redb::Database>>>,
        listeners: Listeners,
    ) -> Self {
        let (events_tx, events) = bounded(EVENT_QUEUE_DEPTH);
        Self {
            plan,
            cores: config.cores.clone(),
            spin_before_park: config.spin_before_park,
            limits: config.limits.clone(),
            stdio,
            stdio_resume: RefCell::new(None),
            events_tx,
            events,
            audit,
            otel,
            dbs,
            listeners: RefCell::new(listeners),
        }
    }

    /// The control socket's `backup <keep> <dest>` (`keep` a number or
    /// `-`): a backup of every shard's store on a thread of its own, so
    /// supervision goes on; the thread answers the request.
    fn start_backup(&self, args: &str, reply: Sender<Result<String, String>>) {
        let parsed = args.split_once(' ').and_then(|(keep, dest)| {
            let keep = match keep {
                "-" => None,
                n => Some(n.parse::<usize>().ok()?),
            };
            Some((keep, PathBuf::from(dest)))
        });
        let Some((keep, dest)) = parsed else {
            let _ = reply.send(Err(format!("backup: cannot read {args:?}")));
            return;
        };
        let Some(dbs) = self.dbs.clone() else {
            let _ = reply.send(Err("backup: this server has no --data-dir".into()));
            return;
        };
        let sealed = self.plan.store.as_ref().is_some_and(|s| s.keys.is_some());
        let spawned = std::thread::Builder::new()
            .name("tessera-backup".into())
            .spawn(move || {
                let answer = backup::backup(&dbs, &dest, keep, sealed).map(|(dir, m)| {
                    let done = backup::describe(&dir, &m);
                    log::info!("{done}");
                    done
                });
                if let Err(e) = &answer {
                    log::error!("backup failed: {e}");
                }
                let _ = reply.send(answer);
            });
        if let Err(e) = spawned {
            log::error!("backup: starting its thread: {e}");
        }
    }

    /// The control socket's `store-rekey`: reads `--store-key-file` again
    /// and, on a thread of its own, makes its first key the one every shard
    /// seals with and rewrites every stored record under it
    /// (`store::rekey_live`). The new file must still list the key in use,
    /// so nothing written so far stops opening before it is rewritten.
    fn start_rekey(&self, reply: Sender<Result<String, String>>) {
        if self.plan.cluster.is_some() {
            // Its shards seal what they send to Redis with the keys they
            // started with, and nothing of Redis is rewritten here.
            let _ = reply.send(Err(
                "store rekey: not while serving with --cluster; put the new key first and restart or upgrade each node (Redis records are resealed as they are written, the rest expire within one session TTL)"
                    .into(),
            ));
            return;
        }
        let (Some(dbs), Some(cfg)) = (self.dbs.clone(), self.plan.store.as_ref()) else {
            let _ = reply.send(Err("store rekey: this server has no --data-dir".into()));
            return;
        };
        let (Some(path), Some(now)) = (cfg.key_file.clone(), cfg.ring.current()) else {
            let _ = reply.send(Err(
                "store rekey: this server has no --store-key-file (restart it with one, then rekey)"
                    .into(),
            ));
            return;
        };
        let keys = match crate::adapters::seal::StoreKeys::from_file(&path) {
            Ok(k) => k,
            Err(e) => {
                let _ = reply.send(Err(format!("store rekey: --store-key-file {e}")));
                return;
            }
        };
        if !keys.opens_sealed_by(&now) {
            let _ = reply.send(Err(format!(
                "store rekey: {} no longer lists key {} that records are sealed with now; list it after the new first key",
                path.display(),
                now.sealing_id()
            )));
            return;
        }
        let ring = cfg.ring.clone();
        let spawned = std::thread::Builder::new()
            .name("tessera-rekey".into())
            .spawn(move || {
                let id = keys.sealing_id();
                let answer = store::rekey_live(&dbs, &ring, keys)
                    .map(|r| {
                        let done = format!(
                            "rekeyed {} shard file(s) while serving, under key {id}: {} record(s) rewritten, {} already current, {} unreadable (left; never served)",
                            r.files, r.resealed, r.current, r.unreadable
                        );
                        log::warn!("{done}");
                        done
                    })
                    .map_err(|e| format!("store rekey: {e}"));
                if let Err(e) = &answer {
                    log::error!("{e}");
                }
                let _ = reply.send(answer);
            });
        if let Err(e) = spawned {
            log::error!("store rekey: starting its thread: {e}");
        }
    }

    fn shard_sockets(&self, kind: Kind, index: usize) -> Result<Vec<OwnedFd>, ServeError> {
        self.listeners
            .borrow()
            .for_shard(kind, index)
            .map_err(|e| ServeError::Failed(format!("duplicating a listening socket: {e}")))
    }

    /// Starts the thread for shard `index` and waits for its executor.
    fn launch(&self, index: usize) -> Result<ShardThread, ServeError> {
        let cpu = self.cores[index];
        let (cmd_tx, cmd_rx) = bounded(COMMAND_QUEUE_DEPTH);
        let start = ShardStart {
            index,
            cpu,
            plan: self.plan.clone(),
            stdio: match (&self.stdio, index) {
                (Some(s), 0) => Some(s.try_clone().map_err(ServeError::Stdio)?),
                _ => None,
            },
            stdio_resume: self.stdio_resume.borrow().clone(),
            events: self.events_tx.clone(),
            commands: cmd_rx,
            audit: self.audit.clone(),
            otel: self.otel.clone(),
            db: self.dbs.as_ref().map(|d| d[index].clone()),
            tcp_listeners: self.shard_sockets(Kind::Tcp, index)?,
            http_listeners: self.shard_sockets(Kind::Http, index)?,
        };
        let events = self.events_tx.clone();
        let spec = ExecutorSpec {
            name: format!("tessera-shard-{index}"),
            cpu,
            io_memory_bytes: EXECUTOR_IO_MEMORY_BYTES,
            spin_before_park: self.spin_before_park,
        };
        let launched = executor::launch(
            spec,
            STARTUP_TIMEOUT,
            move |ex, slot| start::run(start, ex, slot),
            |writer| {
                if let Some(w) = writer {
                    w.finish(Duration::from_secs(5));
                }
            },
            move |shard: Option<std::rc::Rc<NodeShard>>, panic| {
                post_mortem(index, cpu, shard, panic, &events)
            },
        )?;
        Ok(ShardThread {
            core: cpu,
            commands: cmd_tx,
            join: Some(launched.join),
            stopped: false,
            drained: false,
            restarting_since: None,
            killed_at: None,
            crashes: RestartIntensity::default(),
        })
    }
}

/// A panic escaped shard `index`'s executor: report what died with it and
/// its metrics, shut its sockets (glommio leaks a dead executor's tasks, so
/// its listener would keep taking connections nobody accepts), and free
/// the plain data its leaked tasks would keep alive.
fn post_mortem(
    index: usize,
    core: usize,
    shard: Option<std::rc::Rc<NodeShard>>,
    panic: String,
    events: &Sender<ShardEvent>,
) {
    let (lost, snapshot) = match &shard {
        Some(s) => {
            let lost = s.describe_lost();
            s.abandon_mesh();
            s.net.shutdown_sockets();
            (lost, Some(s.core.metrics.borrow().snapshot(s.id)))
        }
        None => ("nothing (it had not started serving)".into(), None),
    };
    let _ = events.send(ShardEvent::Died {
        index,
        core,
        panic,
        lost,
        snapshot,
    });
    // After the report, so freeing a large key space does not delay the
    // restart.
    if let Some(s) = &shard {
        s.core.release_state();
        s.net.release_buffers();
    }
}

/// Why the server stops.
pub(super) struct Outcome {
    reason: String,
    failure: Option<String>,
    /// A binary upgrade: the new process, told `released` once the store
    /// is closed.
    pub handover: Option<UnixStream>,
}

/// The main thread's view of the shards.
pub(super) struct Supervisor {
    threads: Vec<ShardThread>,
    launcher: Launcher,
    admin: Option<Arc<Mutex<AdminView>>>,
    stats: StatsPrinter,
    total: Snapshot,
    started: Instant,
}

impl Supervisor {
    /// Starts every shard, builds the first mesh, and waits until every one
    /// is listening (or the first failure).
    pub fn start(
        n: usize,
        launcher: Launcher,
        admin: Option<Arc<Mutex<AdminView>>>,
    ) -> Result<Self, ServeError> {
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            threads.push(launcher.launch(index)?);
        }
        let sup = Self {
            threads,
            launcher,
            admin,
            stats: StatsPrinter::new(n),
            total: Snapshot::empty(),
            started: Instant::now(),
        };
        sup.rebuild_mesh();
        let mut ready = 0;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while ready < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match sup.launcher.events.recv_timeout(left) {
                Ok(ShardEvent::Ready { index, .. }) => {
                    ready += 1;
                    sup.publish(|v| v.shard_up(index));
                }
                Ok(ShardEvent::Failed { core, error }) => {
                    return Err(ServeError::Shard { core, error })
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(ServeError::Startup {
                        ready,
                        shards: n,
                        timeout: STARTUP_TIMEOUT,
                    })
                }
            }
        }
        Ok(Self {
            started: Instant::now(),
            ..sup
        })
    }

    /// Publishes to the admin endpoint's view; the lock is shared only with
    /// the admin thread.
    fn publish(&self, f: impl Fn(&mut AdminView)) {
        if let Some(v) = &self.admin {
            if let Ok(mut v) = v.lock() {
                f(&mut v);
            }
        }
    }

    /// Builds a new mesh and tells every shard to join it.
    fn rebuild_mesh(&self) {
        let n = self.threads.len();
        if n < 2 {
            return;
        }
        let depth = self.launcher.plan.mesh.queue_depth;
        let (req, rep) = mesh::slot_bytes::<NodeMsg, NodeReply>();
        log::info!(
            "mesh: {n} shards, {} queues of {depth} slots ({req} B per request slot, {rep} B per reply slot): {:.1} MiB preallocated",
            2 * n * (n - 1),
            mesh::queue_bytes::<NodeMsg, NodeReply>(n, depth) as f64 / (1024.0 * 1024.0)
        );
        let memberships = mesh::build(n, depth);
        for (t, m) in self.threads.iter().zip(memberships) {
            if t.commands
                .send_timeout(ShardCommand::JoinMesh(m), Duration::from_secs(1))
                .is_err()
            {
                log::warn!("shard on core {}: could not send the mesh plan", t.core);
            }
        }
    }

    /// Serves until a stop signal, stdin's end (stdio), or a shard that
    /// cannot be kept running; restarts dead shards and kills one every
    /// `kill_every` (chaos).
    pub fn run(
        &mut self,
        kill_every: Option<Duration>,
        reload: Option<&dyn Fn() -> Result<(ServerConfig, App), String>>,
        control: Option<&ControlSocket>,
        admin_stop: &AdminStop,
        release: Option<&crossbeam_channel::Receiver<Orphans>>,
    ) -> Outcome {
        let mut next_kill = kill_every.map(|d| Instant::now() + d);
        let mut kills = 0usize;
        loop {
            let mut reason = match process::wait_stop_signal(MAIN_POLL) {
                Some(libc::SIGHUP) => {
                    let _ = self.reload(reload);
                    None
                }
                sig => sig.map(|sig| format!("signal {sig}")),
            };
            while let Some(req) = control.and_then(|c| c.requests.try_recv().ok()) {
                if let Some(args) = req.command.strip_prefix("backup ") {
                    self.launcher.start_backup(args, req.reply);
                    continue;
                }
                if req.command == "store-rekey" {
                    self.launcher.start_rekey(req.reply);
                    continue;
                }
                let answer = match (req.command.as_str(), req.conn) {
                    ("reload", _) => self.reload(reload),
                    ("upgrade", Some(conn)) => match self.offer_upgrade(&conn) {
                        Ok(()) => {
                            admin_stop.stop();
                            let _ = req.reply.send(Ok("upgraded".into()));
                            return Outcome {
                                reason: "upgrade: the new process took the sockets over".into(),
                                failure: None,
                                handover: Some(conn),
                            };
                        }
                        Err(why) => {
                            log::error!("upgrade failed; still serving as before: {why}");
                            let _ = handover::send_line(&conn, &format!("error: {why}"));
                            Err(why)
                        }
                    },
                    (other, _) => Err(format!(
                        "unknown command {other:?} (known: reload, backup, store-rekey)"
                    )),
                };
                let _ = req.reply.send(answer);
            }
            if let Some(orphans) = release.and_then(|r| r.try_recv().ok()) {
                self.adopt(orphans);
            }
            let (dead, stdin_closed, failure) = self.take_events();
            if stdin_closed {
                reason = Some("stdin closed".into());
            }
            let mut failure = failure;
            if reason.is_none() && failure.is_none() && !dead.is_empty() {
                failure = self.restart_all(&dead).err();
            }
            if let (Some(at), Some(every)) = (next_kill, kill_every) {
                if Instant::now() >= at && reason.is_none() {
                    next_kill = Some(at + every);
                    self.chaos_kill(kills % self.threads.len());
                    kills += 1;
                }
            }
            if failure.is_some() {
                reason.get_or_insert_with(|| "a shard could not be kept running".into());
            }
            if let Some(reason) = reason {
                return Outcome {
                    reason,
                    failure,
                    handover: None,
                };
            }
        }
    }

    /// Serves connections another process accepted (a binary upgrade's
    /// old process, as its shards stopped), spread over the shards.
    pub fn adopt(&self, orphans: Orphans) {
        for (i, (kind, fd)) in orphans.into_iter().enumerate() {
            let t = &self.threads[i % self.threads.len()];
            if t.commands
                .send_timeout(ShardCommand::Adopt { kind, fd }, Duration::from_secs(1))
                .is_err()
            {
                log::warn!("shard on core {}: could not hand it a connection", t.core);
            }
        }
    }

    /// A binary upgrade, the old side: hands every listening socket to the
    /// new process on `conn` and waits (still supervising) until it is
    /// prepared. Any failure changes nothing here: the caller keeps serving.
    fn offer_upgrade(&mut self, conn: &UnixStream) -> Result<(), String> {
        if self.launcher.stdio.is_some() {
            return Err("a stdio server cannot be upgraded in place".into());
        }
        let count = {
            let listeners = self.launcher.listeners.borrow();
            handover::offer(conn, self.launcher.plan.state_key.bytes(), listeners.all())
                .map_err(|e| format!("sending the listening sockets: {e}"))?;
            log::debug!("upgrade: offered {}", listeners.describe());
            listeners.len()
        };
        log::info!("upgrade: sent {count} listening socket(s); waiting for the new process");
        let limit = Duration::from_millis(self.launcher.limits.upgrade_timeout_ms);
        let deadline = Instant::now() + limit;
        while !handover::readable(conn, MAIN_POLL) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the new process was not prepared within {} ms",
                    limit.as_millis()
                ));
            }
            // Keep supervising while the new process sets itself up.
            let (dead, _, _) = self.take_events();
            if !dead.is_empty() {
                self.restart_all(&dead)?;
            }
        }
        conn.set_read_timeout(Some(handover::LINE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        match handover::read_line(conn) {
            Ok(Some(l)) if l == "prepared" => Ok(()),
            Ok(Some(l)) => Err(match l.strip_prefix("error: ") {
                Some(why) => format!("the new process failed: {why}"),
                None => format!("unexpected {l:?} from the new process"),
            }),
            Ok(None) => Err("the new process ended before it was prepared".into()),
            Err(e) => Err(format!("reading from the new process: {e}")),
        }
    }

    /// SIGHUP: reads the configuration again and hands what a reload
    /// changes to every shard; a configuration with errors changes
    /// nothing (the errors are already reported) and is counted.
    /// Returns what was done, or why nothing was.
    fn reload(
        &mut self,
        reload: Option<&dyn Fn() -> Result<(ServerConfig, App), String>>,
    ) -> Result<String, String> {
        let Some(reload) = reload else {
            let why = "this server has nothing to reload from (embedded without a reload)";
            log::warn!("reload: {why}");
            return Err(why.into());
        };
        log::info!("reload: reading the configuration again");
        let refused = match reload() {
            Err(why) => why,
            Ok((new, _)) if new.auth.is_some() != self.auth_on() => {
                "turning --auth on or off needs a restart".to_string()
            }
            Ok((new, _)) if new.tls.is_some() != self.tls_on() => {
                "turning TLS (--tls-cert) on or off needs a restart".to_string()
            }
            Ok((new, _)) if new.admin_tls.is_some() != self.admin_tls_on() => {
                "turning the admin endpoint's TLS (--admin-tls-cert) on or off needs a restart"
                    .to_string()
            }
            Ok((new, app)) => match app.validate() {
                Err(e) => format!("the tools, prompts and resources: {e}"),
                Ok(()) => {
                    if let Some(level) = new.log_level {
                        log::set_max_level(level);
                        log::warn!("log level now {level}");
                    }
                    return Ok(self.hand_out(Reloaded {
                        auth: new.auth,
                        rate_limit: (new.limits.rate_limit_per_sec, new.limits.rate_burst()),
                        app,
                        net_rules: new.net_rules,
                        tls: new.tls,
                        admin_tls: new.admin_tls,
                    }));
                }
            },
        };
        log::error!("reload refused, the running configuration stays: {refused}");
        if let Some(t) = self.threads.first() {
            let _ = t
                .commands
                .send_timeout(ShardCommand::ReloadFailed, Duration::from_secs(1));
        }
        Err(format!(
            "reload refused, the running configuration stays: {refused}"
        ))
    }

    fn tls_on(&self) -> bool {
        self.launcher
            .plan
            .tls
            .lock()
            .expect("the TLS configuration's lock is never held across a panic")
            .is_some()
    }

    fn admin_tls_on(&self) -> bool {
        self.admin
            .as_ref()
            .is_some_and(|v| v.lock().is_ok_and(|v| v.tls_on()))
    }

    fn auth_on(&self) -> bool {
        self.launcher
            .plan
            .auth
            .lock()
            .expect("the auth tables' lock is never held across a panic")
            .is_some()
    }

    /// A reload to every shard, and to the plan that restarted shards start
    /// from.
    fn hand_out(&mut self, r: Reloaded) -> String {
        let plan = &self.launcher.plan;
        *plan
            .auth
            .lock()
            .expect("the auth tables' lock is never held across a panic") = r.auth.clone();
        {
            let mut l = plan
                .server_limits
                .lock()
                .expect("the limits' lock is never held across a panic");
            (l.rate_limit_per_sec, l.rate_limit_burst) = r.rate_limit;
        }
        *plan
            .app
            .lock()
            .expect("the app's lock is never held across a panic") = r.app.clone();
        *plan
            .net_rules
            .lock()
            .expect("the network rules' lock is never held across a panic") = r.net_rules.clone();
        *plan
            .tls
            .lock()
            .expect("the TLS configuration's lock is never held across a panic") = r.tls.clone();
        if let Some(view) = &self.admin {
            if let Ok(mut v) = view.lock() {
                v.set_rules(r.net_rules.clone());
                v.set_tls(r.admin_tls.clone());
            }
        }
        let n = self.threads.len();
        let (applied_tx, applied) = bounded(n);
        for (i, t) in self.threads.iter().enumerate() {
            let cmd = ShardCommand::Reload {
                reloaded: Box::new(r.clone()),
                count: i == 0,
                done: applied_tx.clone(),
            };
            if t.commands
                .send_timeout(cmd, Duration::from_secs(1))
                .is_err()
            {
                log::warn!("shard on core {}: could not send the reload", t.core);
            }
        }
        // Answered once every shard applied it (a shard restarting
        // meanwhile starts from the updated plan instead).
        let deadline = Instant::now() + RELOAD_APPLY_TIMEOUT;
        let mut count = 0;
        while count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if applied.recv_timeout(left).is_err() {
                break;
            }
            count += 1;
        }
        let on = if count == n {
            "every shard".to_string()
        } else {
            format!(
                "{count} of {n} shards (the others did not answer within {} ms)",
                RELOAD_APPLY_TIMEOUT.as_millis()
            )
        };
        let done = format!(
            "reloaded on {on}: tools, prompts, resources, --auth tables (tokens, keys, roles), rate limit {}/s burst {}, {} network rule(s){}{}",
            r.rate_limit.0,
            r.rate_limit.1,
            r.net_rules.rules().len(),
            if r.tls.is_some() { ", the TLS certificate and key" } else { "" },
            if r.admin_tls.is_some() { ", the admin TLS certificate and key" } else { "" },
        );
        log::info!("{done}");
        done
    }

    /// Reads every queued event; returns the shards that died, whether
    /// stdin closed, and a restart that failed.
    fn take_events(&mut self) -> (Vec<usize>, bool, Option<String>) {
        let mut dead = Vec::new();
        let mut stdin_closed = false;
        let mut failure = None;
        loop {
            match self.launcher.events.try_recv() {
                Ok(ShardEvent::Stats {
                    shard,
                    core,
                    tick,
                    snapshot,
                }) => {
                    if self.admin.is_some() {
                        self.publish(|v| v.shard_snapshot(shard, snapshot.clone()));
                    }
                    if self.launcher.plan.report_every.is_some() {
                        self.stats.add(shard, core, tick, snapshot, self.started);
                    }
                }
                Ok(ShardEvent::StdioClosed) => stdin_closed = true,
                Ok(ShardEvent::StdioSession(r)) => {
                    *self.launcher.stdio_resume.borrow_mut() = Some(r)
                }
                Ok(ShardEvent::Stopped { index, .. }) => self.threads[index].stopped = true,
                Ok(ShardEvent::Drained { index }) => self.threads[index].drained = true,
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
                    self.publish(|v| v.shard_died(index, snapshot.as_ref()));
                    if let Some(s) = snapshot {
                        self.total.merge(&s);
                    }
                    dead.push(index);
                }
                Ok(ShardEvent::Ready { index, core }) => self.back_up(index, core),
                Ok(ShardEvent::Failed { core, error }) => {
                    failure.get_or_insert_with(|| {
                        format!("restarting the shard on core {core}: {error}")
                    });
                }
                Err(_) => break,
            }
        }
        for (i, t) in self.threads.iter().enumerate() {
            if !t.stopped && !dead.contains(&i) && t.join.as_ref().is_some_and(|j| j.is_finished())
            {
                log::error!("shard {i} on core {} ended without a report", t.core);
                dead.push(i);
            }
        }
        (dead, stdin_closed, failure)
    }

    /// A restarted shard is serving again.
    fn back_up(&mut self, index: usize, core: usize) {
        self.publish(|v| v.shard_up(index));
        let t = &mut self.threads[index];
        let Some(since) = t.restarting_since.take() else {
            return;
        };
        let from_kill = t.killed_at.take().map(|k| k.elapsed());
        log::warn!(
            "shard {index} restarted on core {core}: serving again {:.1} ms after its death was noticed{}",
            since.elapsed().as_secs_f64() * 1e3,
            from_kill.map_or(String::new(), |d| format!(
                " ({:.1} ms after the chaos kill)",
                d.as_secs_f64() * 1e3
            ))
        );
    }

    /// Restarts every dead shard, then gives every shard one new mesh.
    fn restart_all(&mut self, dead: &[usize]) -> Result<(), String> {
        for &index in dead {
            self.restart(index)?;
        }
        self.rebuild_mesh();
        Ok(())
    }

    /// Replaces the dead shard `index` with a new thread on the same core. A
    /// shard that crashes (not chaos-killed) more than `max_restarts` times
    /// in `restart_period_ms` is not restarted again: the server stops.
    fn restart(&mut self, index: usize) -> Result<(), String> {
        let limits = &self.launcher.limits;
        let t = &mut self.threads[index];
        let chaos = t.killed_at.is_some();
        if !chaos
            && !t
                .crashes
                .allow(Instant::now(), limits.max_restarts, limits.restart_period())
        {
            return Err(format!(
                "the shard on core {} died more than {} times within {} ms",
                t.core, limits.max_restarts, limits.restart_period_ms
            ));
        }
        let noticed = Instant::now();
        if let Some(j) = t.join.take() {
            let _ = j.join();
        }
        self.stats.forget(index);
        let crashes = std::mem::take(&mut self.threads[index].crashes);
        let killed_at = self.threads[index].killed_at;
        // Its sockets were shut down with it.
        self.launcher
            .listeners
            .borrow_mut()
            .rebind(index)
            .map_err(|e| format!("listening again for shard {index}: {e}"))?;
        let mut fresh = self.launcher.launch(index).map_err(|e| e.to_string())?;
        fresh.crashes = crashes;
        fresh.killed_at = killed_at;
        fresh.restarting_since = Some(noticed);
        self.threads[index] = fresh;
        Ok(())
    }

    /// Chaos: lets a panic escape shard `victim`'s executor.
    fn chaos_kill(&mut self, victim: usize) {
        let t = &mut self.threads[victim];
        if t.restarting_since.is_some() {
            return;
        }
        log::warn!("chaos: killing shard {victim}");
        t.killed_at = Some(Instant::now());
        let _ = t.commands.try_send(ShardCommand::Die);
    }

    /// Every shard drains and reports its final metrics; the merged summary
    /// goes to stderr.
    pub fn shutdown(
        mut self,
        outcome: Outcome,
        stdout_pump: Option<JoinHandle<()>>,
        audit: Option<AuditWriter>,
        otel: Option<otel::Exporter>,
    ) -> Result<(), ServeError> {
        let elapsed = self.started.elapsed();
        self.publish(|v| v.stopping());
        let drain = self.launcher.limits.drain_timeout();
        log::info!(
            "stopping ({}): draining for up to {} ms",
            outcome.reason,
            drain.as_millis()
        );
        for t in &self.threads {
            if let Err(TrySendError::Full(_)) = t.commands.try_send(ShardCommand::Shutdown) {
                log::warn!("shard on core {}: command queue full", t.core);
            }
        }
        let mut failure = outcome.failure;
        self.wait_stopped(drain + Duration::from_secs(2), &mut failure);
        self.join_threads(&mut failure);
        // Our copy of the stdio socket would keep the stdout pump waiting.
        drop(self.launcher.stdio.take());
        if let Some(pump) = stdout_pump {
            // Everything answered reaches stdout before the summary is printed.
            let until = Instant::now() + Duration::from_secs(2);
            while !pump.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Shards that ended flushed their lines; one that did not end still
        // holds the queue open, so this waits only so long.
        drop(self.launcher.audit.take());
        if let Some(w) = audit {
            w.finish_within(Duration::from_secs(2));
        }
        // Likewise: the last spans and the metrics go out before the exit.
        drop(self.launcher.otel.take());
        if let Some(e) = otel {
            e.finish();
        }
        eprint!("{}", self.total.summary(elapsed));
        match failure {
            Some(f) => Err(ServeError::Failed(f)),
            None => Ok(()),
        }
    }

    /// Collects every shard's final report, within `limit`.
    fn wait_stopped(&mut self, limit: Duration, failure: &mut Option<String>) {
        let deadline = Instant::now() + limit;
        let n = self.threads.len();
        let mut stopped = self.threads.iter().filter(|t| t.stopped).count();
        let mut told_to_leave = false;
        while stopped < n {
            if !told_to_leave && self.threads.iter().all(|t| t.drained || t.stopped) {
                // Shards leave the mesh together, once none has a client
                // left whose request could still cross to a peer.
                for t in self.threads.iter().filter(|t| !t.stopped) {
                    let _ = t.commands.try_send(ShardCommand::Leave);
                }
                told_to_leave = true;
            }
            if process::wait_stop_signal(Duration::ZERO).is_some_and(|s| s != libc::SIGHUP) {
                eprintln!("tessera: second stop signal, exiting without draining");
                std::process::exit(130);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("{} shard(s) did not stop in time", n - stopped);
                return;
            }
            match self
                .launcher
                .events
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok(ShardEvent::Stopped {
                    index,
                    core,
                    snapshot,
                    unfinished_connections,
                }) => {
                    if unfinished_connections > 0 {
                        log::warn!("shard on core {core}: closed {unfinished_connections} connection(s) still busy after the drain timeout");
                    }
                    self.threads[index].stopped = true;
                    self.total.merge(&snapshot);
                    stopped += 1;
                }
                Ok(ShardEvent::Drained { index }) => self.threads[index].drained = true,
                Ok(ShardEvent::Died {
                    index, snapshot, ..
                }) => {
                    if let Some(s) = snapshot {
                        self.total.merge(&s);
                    }
                    self.threads[index].stopped = true;
                    stopped += 1;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    for t in self.threads.iter().filter(|t| !t.stopped) {
                        if t.join.as_ref().is_some_and(|j| j.is_finished()) {
                            failure.get_or_insert_with(|| {
                                format!("the shard on core {} stopped unexpectedly", t.core)
                            });
                        }
                    }
                }
            }
        }
    }

    /// Joins the threads (each gets [`JOIN_WAIT`] to finish closing its
    /// store); a panic that escaped one is a failure. One still running
    /// after that is left behind and logged.
    fn join_threads(&mut self, failure: &mut Option<String>) {
        let deadline = Instant::now() + JOIN_WAIT;
        for t in &mut self.threads {
            let Some(j) = t.join.take() else { continue };
            // A shard that never reported stopping is wedged: not waited for.
            while t.stopped && !j.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if !j.is_finished() {
                log::warn!("the shard thread on core {} did not end in time", t.core);
                continue;
            }
            if let Err(panic) = j.join() {
                let msg = executor::panic_message(panic.as_ref());
                failure
                    .get_or_insert_with(|| format!("the shard on core {} panicked: {msg}", t.core));
            }
        }
    }
}
