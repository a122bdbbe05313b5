//! `--cluster`: the Redis/Valkey adapter. Every shard owns its own client
//! (fred on its glommio runtime: one connection per shard, commands from
//! the shard's tasks auto-pipelined on it), so nothing is shared between
//! cores; this module is the only place that speaks to Redis.
//!
//! Deadlines: fred's own timeouts are all zero (fred 10 enforces a non-zero
//! one with `tokio::time`, which has no driver on a glommio thread); every
//! call here runs under a glommio timer of `command_timeout_ms` instead. The
//! one timeout fred hard-codes (5 s around closing a connection) runs on the
//! small process-wide [`TimerRuntime`] that each shard thread enters.
//!
//! Failure semantics: while a shard's connection is down a call is refused at
//! once (`ClusterError::Down`, counted as `redis_refused`) instead of queuing
//! behind the reconnect; fred reconnects with exponential backoff up to
//! `reconnect_max_ms`; a call that gets no answer within `command_timeout_ms`
//! fails (`redis_timeouts`). Commands fred buffers while reconnecting are
//! bounded by `command_queue_max`.

pub(crate) mod membership;
pub(crate) mod sessions;
pub(crate) mod shared;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use fred::prelude::{ClientLike, EventInterface, ReconnectPolicy};

use crate::metrics::Counters;
use crate::server::core::Core;

/// Largest `--cluster-secret-file` / `--cluster-password-file` read.
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Fewest bytes of cluster secret accepted (128 bits).
pub const SECRET_BYTES_MIN: usize = 16;

/// `--cluster` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[user@]HOST:PORT[/DB]`, or a Redis Cluster seed list
    /// `redis-cluster://HOST:PORT?node=HOST:PORT&node=...`.
    pub url: String,
    /// The Redis password (`--cluster-password-file`), if any.
    pub password: Option<String>,
    /// This node's name in the cluster (`--node-id`).
    pub node_id: String,
    /// Where other nodes reach this node's HTTP listener.
    pub advertise: Option<SocketAddr>,
    /// Node-to-node requests carry proof of this (`--cluster-secret-file`).
    pub secret: Vec<u8>,
    /// Prefix of every key tessera writes, so clusters can share a Redis.
    pub key_prefix: String,
    /// A node is dead when its heartbeat key is older than this; each shard
    /// refreshes it every third of it.
    pub heartbeat_ttl_ms: u64,
    /// Deadline of every Redis call.
    pub command_timeout_ms: u64,
    /// Longest wait between reconnect attempts (exponential backoff from
    /// 50 ms up to this).
    pub reconnect_max_ms: u64,
    /// Commands one shard's client buffers while its connection is being
    /// re-established; past it fred fails them (counted as errors).
    pub command_queue_max: usize,
    /// `--rate-limit-scope cluster`: sessionless HTTP requests are limited
    /// per principal across every node (one Redis script per request).
    pub rate_limit_cluster: bool,
    /// `--cluster-sync-events`: a legacy session's SSE event reaches its
    /// client only once Redis has it (write-through), so a takeover replays
    /// every event a client may have seen.
    pub sync_events: bool,
    /// `--cluster-tls-ca-file`: PEM certificates the TLS connection to Redis
    /// (`rediss://`) trusts; without it, the system's roots.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// `--store-key-file`: session records, SSE events and tasks are sealed
    /// before they are sent to Redis, and opened when read back
    /// (`sessions`).
    pub keys: Option<crate::adapters::seal::StoreKeys>,
}

impl ClusterConfig {
    /// Defaults for everything but the address, the node id and the secret.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>, secret: Vec<u8>) -> Self {
        Self {
            url: url.into(),
            password: None,
            node_id: node_id.into(),
            advertise: None,
            secret,
            key_prefix: "tessera".into(),
            heartbeat_ttl_ms: 3000,
            command_timeout_ms: 1000,
            reconnect_max_ms: 2000,
            command_queue_max: 10_000,
            rate_limit_cluster: false,
            sync_events: false,
            tls_ca_pem: None,
            keys: None,
        }
    }

    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), ClusterError> {
        let bad = |problem: String| Err(ClusterError::Config(problem));
        let (url, tls) = without_tls(&self.url);
        if let Err(e) = fred::prelude::Config::from_url(&url) {
            return bad(format!("{}: {e}", self.url));
        }
        if self.tls_ca_pem.is_some() && !tls {
            return bad(format!(
                "--cluster-tls-ca-file is for a TLS URL (rediss://, rediss-cluster://), not {}",
                self.url
            ));
        }
        if tls {
            self.tls_config()?;
        }
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad(format!(
                "--node-id {:?}: 1 to 64 of [A-Za-z0-9._-]",
                self.node_id
            ));
        }
        if self.secret.len() < SECRET_BYTES_MIN {
            return bad(format!(
                "the cluster secret has {} bytes; at least {SECRET_BYTES_MIN} are needed",
                self.secret.len()
            ));
        }
        if self.heartbeat_ttl_ms < 300 {
            return bad("--cluster-heartbeat-ttl-ms must be at least 300".into());
        }
        if self.command_timeout_ms == 0 || self.command_timeout_ms >= self.heartbeat_ttl_ms {
            return bad(format!(
                "--cluster-command-timeout-ms must be between 1 and the heartbeat TTL ({} ms)",
                self.heartbeat_ttl_ms
            ));
        }
        if self.reconnect_max_ms < 50 || self.command_queue_max == 0 {
            return bad("--cluster-reconnect-max-ms must be at least 50 and --cluster-command-queue-max at least 1".into());
        }
        Ok(())
    }

    fn fred_config(&self) -> Result<fred::prelude::Config, ClusterError> {
        let (url, tls) = without_tls(&self.url);
        let mut c = fred::prelude::Config::from_url(&url)
            .map_err(|e| ClusterError::Config(format!("{}: {e}", self.url)))?;
        if tls {
            c.tls = Some(self.tls_config()?);
        }
        if let Some(p) = &self.password {
            c.password = Some(p.clone());
        }
        // Not failing fast: a first connection that fails is retried under
        // the reconnect policy, so a node may start before its Redis. Calls
        // while disconnected are refused here (`Redis::call`), not queued.
        c.fail_fast = false;
        Ok(c)
    }

    fn tls_config(&self) -> Result<fred::types::config::TlsConfig, ClusterError> {
        tls_config(self.tls_ca_pem.as_deref())
    }

    /// A client for the calling executor thread, not yet connected.
    pub(crate) fn client(&self) -> Result<fred::prelude::Client, ClusterError> {
        let cap = u32::try_from(self.reconnect_max_ms).unwrap_or(u32::MAX);
        fred::prelude::Builder::from_config(self.fred_config()?)
            .with_connection_config(|c| {
                // Zero: fred would enforce these with tokio's timer; ours
                // are glommio timers around each call.
                c.connection_timeout = Duration::ZERO;
                c.internal_command_timeout = Duration::ZERO;
                c.max_command_attempts = 1;
                c.max_command_buffer_len = self.command_queue_max;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::ZERO)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, cap, 2))
            .build()
            .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// The TLS settings of a `rediss://` URL: the roots of
/// `--cluster-tls-ca-file`, or the system's. The server name checked is the
/// URL's host (a name or an IP address).
fn tls_config(pem: Option<&[u8]>) -> Result<fred::types::config::TlsConfig, ClusterError> {
    use fred::types::config::TlsConnector;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |why: String| ClusterError::Config(why);
    let Some(pem) = pem else {
        return TlsConnector::default_rustls()
            .map(Into::into)
            .map_err(|e| bad(format!("the system's TLS roots: {e}")));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("--cluster-tls-ca-file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("--cluster-tls-ca-file: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("--cluster-tls-ca-file holds no certificate".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(config).into())
}

/// A Redis URL with its TLS scheme made plain (fred would otherwise set up
/// TLS with its own defaults), and whether it asked for TLS.
fn without_tls(url: &str) -> (String, bool) {
    for (tls, plain) in [
        ("rediss://", "redis://"),
        ("rediss-cluster://", "redis-cluster://"),
        ("valkeys://", "redis://"),
        ("valkeys-cluster://", "redis-cluster://"),
    ] {
        if let Some(rest) = url.strip_prefix(tls) {
            return (format!("{plain}{rest}"), true);
        }
    }
    (url.to_owned(), false)
}

/// A fresh node id, for a node started without `--node-id`.
pub fn generated_node_id() -> String {
    format!("node-{}", crate::runtime::random::hex::<4>())
}

/// `tessera cluster status`: every node the cluster's keys know of, read on
/// a short-lived executor of its own. Fails when Redis cannot be reached
/// within the command deadline.
pub fn status(cfg: &ClusterConfig) -> Result<Vec<membership::NodeInfo>, ClusterError> {
    crate::runtime::process::ensure_memlock(1).map_err(|e| ClusterError::Config(e.to_string()))?;
    let timer = TimerRuntime::start().map_err(|e| ClusterError::Config(e.to_string()))?;
    let handle = timer.handle();
    let cfg = cfg.clone();
    let joined = glommio::LocalExecutorBuilder::default()
        .name("tessera-cluster-status")
        .spawn(move || async move {
            let _tokio = handle.enter();
            let redis = Redis::new(&cfg, None)?;
            let deadline = Duration::from_millis(cfg.command_timeout_ms);
            let connect = redis.client.connect();
            let waited = glommio::timer::timeout(deadline, async {
                Ok(redis.client.wait_for_connect().await)
            })
            .await;
            let listed = match waited {
                Ok(Ok(())) => membership::list(&redis, Purpose::Request).await,
                Ok(Err(e)) => Err(ClusterError::Redis(e.to_string())),
                Err(_) => Err(ClusterError::TimedOut(cfg.command_timeout_ms)),
            };
            redis.close().await;
            connect.abort();
            listed
        })
        .map_err(|e| ClusterError::Config(e.to_string()))?
        .join();
    drop(timer);
    joined.map_err(|e| ClusterError::Config(format!("status executor: {e}")))?
}

/// A secret or password file: its bytes with surrounding whitespace trimmed.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, ClusterError> {
    let err = |problem: String| ClusterError::Config(format!("{}: {problem}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(err(format!("larger than {SECRET_FILE_BYTES_MAX} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    Ok(bytes.trim_ascii().to_vec())
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("--cluster: {0}")]
    Config(String),
    /// The shard's Redis connection is down (reconnecting).
    #[error("cluster state unavailable: Redis is unreachable")]
    Down,
    #[error("cluster state unavailable: Redis did not answer within {0} ms")]
    TimedOut(u64),
    #[error("cluster state unavailable: Redis: {0}")]
    Redis(String),
}

/// What a Redis command was for, as counted in the shard's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Membership upkeep: the heartbeat and the live-node list.
    Heartbeat,
    /// Work a client request waits for.
    Request,
    /// Work off the request path (write-behind of sessions).
    Background,
}

/// The process-wide driver of the one tokio timer fred still arms (closing
/// a connection). One small thread; shards enter its handle.
pub(crate) struct TimerRuntime(tokio::runtime::Runtime);

impl TimerRuntime {
    pub fn start() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tessera-redis-timer")
            .enable_time()
            .build()
            .map(Self)
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0.handle().clone()
    }
}

/// One shard's Redis connection.
pub(crate) struct Redis {
    client: fred::prelude::Client,
    /// Where calls are counted (absent for the `cluster status` command).
    core: Option<Rc<Core>>,
    timeout: Duration,
    connected: Rc<Cell<bool>>,
    pub cfg: ClusterConfig,
}

impl Redis {
    /// A client for this executor thread; [`Redis::start`] connects it.
    pub fn new(cfg: &ClusterConfig, core: Option<Rc<Core>>) -> Result<Rc<Self>, ClusterError> {
        Ok(Rc::new(Self {
            client: cfg.client()?,
            core,
            timeout: Duration::from_millis(cfg.command_timeout_ms),
            connected: Rc::new(Cell::new(false)),
            cfg: cfg.clone(),
        }))
    }

    /// Connects in the background (retrying with backoff for ever) and
    /// tracks the connection's state; `on_up` runs after every (re)connect.
    pub fn start(self: &Rc<Self>, on_up: impl Fn() + 'static) {
        let up = self.clone();
        let first = Cell::new(true);
        self.client.on_reconnect(move |_server| {
            up.connected.set(true);
            if first.replace(false) {
                log::info!("shard {}: connected to Redis", up.shard());
            } else {
                up.count(|c| c.redis_reconnects += 1);
                log::info!("shard {}: reconnected to Redis", up.shard());
            }
            on_up();
            async { Ok(()) }
        });
        let down = self.clone();
        // While down, each new reason is logged once (a reconnect loop that
        // fails the same way every attempt writes one line).
        let reason = RefCell::new(String::new());
        self.client.on_error(move |(error, _server)| {
            let why = error.to_string();
            if down.connected.replace(false) {
                log::warn!("shard {}: lost Redis: {why}", down.shard());
            } else if *reason.borrow() != why {
                log::warn!("shard {}: cannot reach Redis: {why}", down.shard());
            }
            *reason.borrow_mut() = why;
            async { Ok(()) }
        });
        // Detached: the client reconnects on its own until the shard ends.
        drop(self.client.connect());
    }

    /// Connected now (fred's state; the flag only keeps the logs to one
    /// line per transition).
    pub fn connected(&self) -> bool {
        self.client.is_connected()
    }

    pub fn client(&self) -> &fred::prelude::Client {
        &self.client
    }

    /// Runs `commands` Redis commands (one call, or a pipeline of them)
    /// under the deadline, counting them under `purpose`.
    pub async fn call<R, F>(&self, purpose: Purpose, commands: u64, f: F) -> Result<R, ClusterError>
    where
        F: Future<Output = Result<R, fred::error::Error>>,
    {
        if !self.connected() {
            self.count(|c| c.redis_refused += 1);
            log::debug!(
                "shard {}: Redis call refused, client state {:?}",
                self.shard(),
                self.client.state()
            );
            return Err(ClusterError::Down);
        }
        self.count(|c| match purpose {
            Purpose::Heartbeat => c.redis_commands_heartbeat += commands,
            Purpose::Request => c.redis_commands_request += commands,
            Purpose::Background => c.redis_commands_background += commands,
        });
        match glommio::timer::timeout(self.timeout, async { Ok(f.await) }).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.count(|c| c.redis_errors += 1);
                Err(ClusterError::Redis(e.to_string()))
            }
            Err(_) => {
                self.count(|c| c.redis_timeouts += 1);
                Err(ClusterError::TimedOut(self.timeout.as_millis() as u64))
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        if let Some(core) = &self.core {
            f(&mut core.metrics.borrow_mut().counters);
        }
    }

    fn shard(&self) -> usize {
        self.core.as_ref().map_or(0, |c| c.id)
    }

    /// Closes the connection (at shard stop), within the deadline.
    pub async fn close(&self) {
        let _ = glommio::timer::timeout(self.timeout, async {
            let _ = self.client.quit().await;
            Ok(())
        })
        .await;
    }
}
