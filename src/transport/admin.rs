//! The admin endpoint (`--admin ADDR`): `/metrics` (Prometheus text),
//! `/healthz` (the process is up) and `/readyz` (every shard accepts).
//!
//! It runs on its own plain thread with blocking std sockets, never on a
//! shard: scrapes are rare, and keeping them off the executors means a slow
//! scraper can never delay a request. The main thread publishes what it
//! knows (each shard's latest metrics snapshot, which shards are up) into an
//! [`AdminView`] behind a mutex that only the main thread and this thread
//! touch — nothing on the request path does.
//!
//! Its socket is one of the process's listeners (`transport::listeners`),
//! handed to the next process by a binary upgrade; then [`AdminStop`]
//! ends this thread's accepting.
//!
//! Peers the `--allow-cidr`/`--deny-cidr` rules refuse for the `admin`
//! listener are closed at accept, unread, and counted with the shards'
//! refusals.
//!
//! With `--admin-tls-cert` the endpoint speaks HTTPS (its own pair, a reload
//! replaces it); the handshake runs under the same I/O timeout, and is
//! counted with the shards' TLS handshakes.
//!
//! Bounds: one connection at a time (a scraper that stalls holds the
//! endpoint for at most `ADMIN_IO_TIMEOUT`), a request head of at most
//! `ADMIN_REQUEST_BYTES_MAX`, one request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::prometheus::{self, ShardState};
use crate::metrics::Snapshot;
use crate::transport::netrules::{Listener, NetRules};

/// How long one scrape may take to send its request or read the answer.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read; longer ones get 431.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How often shards send their metrics to the main thread while the admin
/// endpoint is on (and `--stats-interval` does not ask for more often).
pub const ADMIN_REFRESH: Duration = Duration::from_secs(1);

/// What the main thread knows, as of its latest update.
pub(crate) struct AdminView {
    started: Instant,
    /// Latest snapshot of each running shard (reset when one restarts).
    latest: Vec<Option<Snapshot>>,
    /// Final snapshots of executors that died, so counters stay monotonic.
    retired: Snapshot,
    shards: Vec<ShardState>,
    /// The server is draining: not ready any more.
    stopping: bool,
    /// `--cluster` is on.
    cluster: bool,
    /// `--allow-cidr`/`--deny-cidr` (the `admin` listener's share of them
    /// applies here); a reload replaces them.
    rules: NetRules,
    /// Peers this thread refused, counted like a shard counts its own
    /// (and its TLS handshakes).
    refused: Snapshot,
    /// `--admin-tls-cert`: HTTPS; a reload replaces it.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl AdminView {
    pub fn new(cores: &[usize], rules: NetRules, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            started: Instant::now(),
            latest: vec![None; cores.len()],
            retired: Snapshot::empty(),
            shards: cores
                .iter()
                .enumerate()
                .map(|(shard, &core)| ShardState {
                    shard,
                    core,
                    up: false,
                    restarts: 0,
                })
                .collect(),
            stopping: false,
            cluster: false,
            rules,
            refused: Snapshot::empty(),
            tls,
        }
    }

    pub fn set_rules(&mut self, rules: NetRules) {
        self.rules = rules;
    }

    /// Whether the endpoint speaks HTTPS.
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    /// Replaces the TLS pair for the next connections (a reload; never
    /// turns TLS on or off, which is refused before it gets here).
    pub fn set_tls(&mut self, tls: Option<Arc<rustls::ServerConfig>>) {
        assert_eq!(
            tls.is_some(),
            self.tls.is_some(),
            "admin TLS turned on or off by a reload"
        );
        self.tls = tls;
    }

    /// Whether the admin listener serves `peer`; a refusal is counted and
    /// logged at debug.
    fn admits(&mut self, peer: SocketAddr) -> bool {
        let Err(refusal) = self.rules.check(Listener::Admin, Some(peer.ip())) else {
            return true;
        };
        log::debug!("admin: peer {peer} refused ({})", refusal.label());
        self.refused.counters.connections_denied += 1;
        self.refused
            .denied
            .count(refusal.label(), Listener::Admin.index());
        false
    }

    pub fn shard_snapshot(&mut self, shard: usize, snapshot: Snapshot) {
        if let Some(slot) = self.latest.get_mut(shard) {
            *slot = Some(snapshot);
        }
    }

    pub fn shard_up(&mut self, shard: usize) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.up = true;
        }
    }

    /// A shard's executor died; `last` is what it had counted.
    pub fn shard_died(&mut self, shard: usize, last: Option<&Snapshot>) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.up = false;
            s.restarts += 1;
        }
        let previous = self.latest.get_mut(shard).and_then(Option::take);
        // The death report is newer than the last periodic snapshot.
        if let Some(snap) = last.or(previous.as_ref()) {
            let mut counted = snap.clone();
            counted.gauges = Default::default();
            self.retired.merge(&counted);
        }
    }

    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// With `--cluster`, ready also needs every shard's Redis connection
    /// up (as its latest report says).
    pub fn require_cluster(&mut self, on: bool) {
        self.cluster = on;
    }

    pub fn ready(&self) -> bool {
        !self.stopping
            && self.shards.iter().all(|s| s.up)
            && (!self.cluster
                || self.latest.iter().all(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.gauges.cluster_shards > 0
                            && s.gauges.cluster_shards_connected == s.gauges.cluster_shards
                    })
                }))
    }

    pub fn render(&self) -> String {
        let mut merged = self.retired.clone();
        merged.merge(&self.refused);
        for s in self.latest.iter().flatten() {
            merged.merge(s);
        }
        prometheus::render(&merged, &self.shards, self.started.elapsed())
    }
}

/// Why the admin endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the admin thread: {0}")]
    Thread(std::io::Error),
}

/// Binds `addr` (so a bad address fails startup).
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })
}

/// Tells the admin thread to stop accepting (the next process took its
/// socket over); the socket itself stays open for that process.
#[derive(Clone, Default)]
pub(crate) struct AdminStop(Arc<AtomicBool>);

impl AdminStop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How often the admin thread looks at its stop flag while idle.
const ADMIN_STOP_POLL: Duration = Duration::from_millis(100);

/// Serves `listener` from a new thread until `stop`; returns its address.
pub(crate) fn start(
    listener: TcpListener,
    view: Arc<Mutex<AdminView>>,
    stop: AdminStop,
) -> Result<SocketAddr, AdminError> {
    let addr = listener.local_addr().map_err(AdminError::Thread)?;
    // Non-blocking: the thread polls with a timeout so it sees `stop`, and
    // a connection another process accepted first is no error.
    listener.set_nonblocking(true).map_err(AdminError::Thread)?;
    std::thread::Builder::new()
        .name("tessera-admin".into())
        .spawn(move || accept_loop(listener, &view, &stop))
        .map_err(AdminError::Thread)?;
    Ok(addr)
}

fn accept_loop(listener: TcpListener, view: &Mutex<AdminView>, stop: &AdminStop) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let wait = PollTimeout::try_from(ADMIN_STOP_POLL.as_millis() as i32).expect("fits");
    while !stop.0.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, wait), Ok(n) if n > 0) {
            continue;
        }
        match listener.accept() {
            Ok((s, peer)) => {
                // Refused: closed unread (the view's lock is held only
                // for the check).
                if !view.lock().is_ok_and(|mut v| v.admits(peer)) {
                    continue;
                }
                let tls = view.lock().ok().and_then(|v| v.tls.clone());
                if let Err(e) = serve_connection(s, tls, view) {
                    log::debug!("admin: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("admin: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Serves one connection, over TLS when `tls` is set (the handshake under
/// the same timeouts as the request).
fn serve_connection(
    mut s: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    view: &Mutex<AdminView>,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let Some(config) = tls else {
        return serve_one(&mut s, view);
    };
    let mut conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut shook = Ok(());
    while conn.is_handshaking() && shook.is_ok() {
        shook = conn.complete_io(&mut s).map(|_| ());
    }
    if let Ok(mut v) = view.lock() {
        match &shook {
            Ok(()) => v.refused.counters.tls_handshakes += 1,
            Err(e) if is_timeout(e) => v.refused.counters.tls_handshake_timeouts += 1,
            Err(_) => v.refused.counters.tls_handshake_failures += 1,
        }
    }
    shook?;
    let mut stream = rustls::StreamOwned::new(conn, s);
    serve_one(&mut stream, view)?;
    stream.conn.send_close_notify();
    stream.flush()
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn serve_one<S: Read + Write>(s: &mut S, view: &Mutex<AdminView>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if buf.len() >= ADMIN_REQUEST_BYTES_MAX {
            break None;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Some(head_end) = head_end else {
        return respond(
            s,
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
            false,
        );
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            s,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
            head_only,
        );
    }
    match path {
        "/metrics" => {
            let body = view.lock().map(|v| v.render()).unwrap_or_default();
            respond(
                s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                head_only,
            )
        }
        "/healthz" => respond(s, "200 OK", "text/plain", "ok\n", head_only),
        "/readyz" => {
            let ready = view.lock().map(|v| v.ready()).unwrap_or(false);
            if ready {
                respond(s, "200 OK", "text/plain", "ready\n", head_only)
            } else {
                respond(
                    s,
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n",
                    head_only,
                )
            }
        }
        _ => respond(s, "404 Not Found", "text/plain", "not found\n", head_only),
    }
}

fn respond(
    s: &mut impl Write,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out)?;
    s.flush()
}
