//! Server configuration, the public way to set tessera up: what the shards
//! need to start, as plain `Send + Clone` data copied into every executor
//! thread. The settings types of each layer (HTTP, auth, audit, store,
//! declared tools, directories and prompts) are re-exported here.
//!
//! Every bound the server enforces lives in [`Limits`], each with its unit in
//! its name, its default, and what happens when it is hit.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::adapters::audit::{AuditConfig, AuditError};
pub use crate::adapters::backup::{
    backup_offline, describe as describe_backup, restore, Manifest as BackupManifest,
};
pub use crate::adapters::cluster::membership::NodeInfo;
pub use crate::adapters::cluster::{
    generated_node_id, read_secret_file, status as cluster_status, ClusterConfig, ClusterError,
};
pub use crate::adapters::command::{CommandToolConfig, CommandToolError};
pub use crate::adapters::files::{FileDirConfig, FileDirError};
pub use crate::adapters::otel::{OtelConfig, OtelError};
pub use crate::adapters::prompt_files::{PromptArgConfig, PromptFileConfig, PromptFileError};
pub use crate::adapters::seal::{gen_key, StoreKeys};
pub use crate::adapters::secrets::{JwtSettings, SecretsError};
pub use crate::adapters::store::{rekey, FsyncPolicy, KeyRing, RekeyReport, StoreConfig};
pub use crate::adapters::tls::{TlsFileError, TlsPaths};
pub use crate::runtime::cores::{
    format_core_list, parse_core_list, select as select_cores, CoreError,
};
pub use crate::server::auth::{hash_line, AuthConfig, Role};
pub use crate::transport::http::{HttpConfig, HttpConfigError};
pub use crate::transport::netrules::{Action, Cidr, Listener, NetRules, Rule, RULES_MAX};

/// A setting that is out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

fn out_of_range(flag: &'static str, problem: String) -> ConfigError {
    ConfigError { flag, problem }
}

/// Bounds on every table, queue and buffer. Hitting one is counted in the
/// shard's metrics (`metrics::Counters`) and never silently drops work.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest accepted JSON-RPC message (one NDJSON line). Longer lines get a
    /// -32600 error; the rest of the line is read and discarded and the
    /// connection stays open.
    pub max_message_bytes: usize,
    /// Requests of one connection whose handlers are still running (async
    /// tools, cross-core hops). At the bound the connection stops reading its
    /// socket until one completes: TCP flow control pushes back on the client.
    pub max_inflight_per_conn: usize,
    /// Encoded responses waiting for a slow reader. Past the bound the
    /// connection stops reading requests until the client drains its socket.
    pub max_output_buffer_bytes: usize,
    /// Depth of each one-way queue between two shards. A full request queue
    /// answers the client with -31010 (server overloaded); nothing is queued
    /// beyond it.
    pub mesh_queue_depth: usize,
    /// Cross-core requests one shard may have outstanding at once. At the bound
    /// new hops are refused with -31010.
    pub mesh_pending_max: usize,
    /// How long a cross-core hop may take before the client gets -31011.
    pub mesh_timeout_ms: u64,
    /// Keys one shard may hold; `kv_set` of a new key beyond it is a tool
    /// error (`isError: true`), updates of existing keys still succeed.
    pub kv_max_keys_per_shard: usize,
    /// Longest key accepted by the kv tools (UTF-8 bytes).
    pub kv_max_key_bytes: usize,
    /// Largest value accepted by `kv_set`, measured as compact JSON.
    pub kv_max_value_bytes: usize,
    /// Resources one session may subscribe to; more is a -32600 error.
    pub max_subscriptions_per_session: usize,
    /// Subscribers one kv key may have at its owner; more is a -32600 error.
    pub max_watchers_per_key: usize,
    /// Server-to-client requests (sampling, elicitation, roots) one legacy
    /// session may have waiting for the client's answer; the next one fails
    /// at once with an error the handler sees.
    pub max_client_requests: usize,
    /// How long a server-to-client request waits for its answer before the
    /// handler gets a timeout error.
    pub client_request_timeout_ms: u64,
    /// Items per page of `tools/list`, `prompts/list`, `resources/list` and
    /// `resources/templates/list`; the rest is behind `nextCursor`.
    pub page_size: usize,
    /// How long a signed multi-round `requestState` stays valid; an older one
    /// is refused with -32602.
    pub mrtr_state_ttl_ms: u64,
    /// Tasks one shard holds (any status). Creating one more is refused with
    /// a JSON-RPC error; finished tasks past their TTL are removed first.
    pub max_tasks_per_shard: usize,
    /// A task's lifetime when the client asks for none (and the cap on what
    /// it may ask for); after it the task and its result are removed.
    pub task_ttl_ms: u64,
    /// On shutdown, how long connections get to finish requests already
    /// read before the shard stops anyway.
    pub drain_timeout_ms: u64,
    /// Binary upgrade: how long the running server waits for the new
    /// process to say it is prepared (then it keeps serving and logs why),
    /// and how long the new one waits for the old to release its store.
    pub upgrade_timeout_ms: u64,
    /// Connections (TCP, HTTP) one shard serves at once. One more is accepted
    /// and closed at once (HTTP: answered 503 with `Retry-After` first) and
    /// counted in `connections_refused`. stdio is never refused.
    pub max_connections_per_shard: usize,
    /// A TCP connection that completes no message for this long while
    /// nothing of it is in flight is closed (`connections_idle_closed`);
    /// a client trickling a line byte by byte (slowloris) counts as idle.
    /// stdio has no idle timeout.
    pub idle_timeout_ms: u64,
    /// Connection-handler restarts allowed within `restart_period_ms`; the
    /// next panic in that window closes the connection instead (OTP restart
    /// intensity), after answering what it had read.
    pub max_restarts: u32,
    /// The window `max_restarts` counts over.
    pub restart_period_ms: u64,
    /// Requests per second one principal may make (a TCP/stdio connection, a
    /// legacy HTTP session, or the peer address of a stateless HTTP
    /// request); 0 turns rate limiting off. Over it: JSON-RPC -31012 (HTTP
    /// 429 with `Retry-After`), counted in `rate_limited`.
    pub rate_limit_per_sec: u32,
    /// Requests a principal may make in a burst above the rate (the token
    /// bucket's size); 0 means one second's worth.
    pub rate_limit_burst: u32,
    /// Rate-limit buckets one shard keeps for HTTP principals. At the bound
    /// buckets that have refilled (they hold no state worth keeping) are
    /// dropped; if none has, the new principal is served unlimited and the
    /// miss counted in `rate_table_full`.
    pub rate_limit_max_principals: usize,
    /// Command-tool programs (`[[tool]]` in the config file) one shard runs
    /// at once; one more call is refused with -31010 before anything starts,
    /// counted in `commands_refused`.
    pub max_command_children_per_shard: usize,
}

impl Limits {
    /// Tokens a principal's bucket holds when full.
    pub fn rate_burst(&self) -> u32 {
        if self.rate_limit_burst == 0 {
            self.rate_limit_per_sec
        } else {
            self.rate_limit_burst
        }
    }
}

/// Fault injection for tests and demos. Everything is off by default and
/// the server logs a warning at startup when any of it is on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Chaos {
    /// Fraction of tool calls whose handler panics (caught by the
    /// supervisor: the call is answered -32603).
    pub panic_rate: f64,
    /// Fraction of NDJSON lines after which the connection handler itself
    /// panics (between messages) and HTTP requests whose handler panics
    /// before routing; exercises connection restarts.
    pub conn_panic_rate: f64,
    /// Fraction of TCP/stdio token checks (a token in `_meta.authorization`)
    /// that panic inside the check; proves a panic cannot widen access.
    pub auth_panic_rate: f64,
    /// Kill one shard's executor this often (round-robin), so the main
    /// thread restarts it.
    pub kill_shard_every_ms: Option<u64>,
}

impl Chaos {
    pub fn is_on(&self) -> bool {
        self.panic_rate > 0.0
            || self.conn_panic_rate > 0.0
            || self.auth_panic_rate > 0.0
            || self.kill_shard_every_ms.is_some()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("chaos-panic-rate", self.panic_rate),
            ("chaos-conn-panic-rate", self.conn_panic_rate),
            ("chaos-auth-panic-rate", self.auth_panic_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(out_of_range(
                    name,
                    format!("must be a fraction in [0, 1] (got {v})"),
                ));
            }
        }
        if self.kill_shard_every_ms == Some(0) {
            return Err(out_of_range(
                "chaos-kill-shard-every",
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_inflight_per_conn: 1024,
            max_output_buffer_bytes: 8 * 1024 * 1024,
            mesh_queue_depth: 1024,
            mesh_pending_max: 65_536,
            mesh_timeout_ms: 5_000,
            kv_max_keys_per_shard: 1_000_000,
            kv_max_key_bytes: 1024,
            kv_max_value_bytes: 64 * 1024,
            max_subscriptions_per_session: 1_000,
            max_watchers_per_key: 100_000,
            drain_timeout_ms: 5_000,
            upgrade_timeout_ms: 60_000,
            max_client_requests: 64,
            client_request_timeout_ms: 60_000,
            page_size: 100,
            mrtr_state_ttl_ms: 600_000,
            max_tasks_per_shard: 10_000,
            task_ttl_ms: 3_600_000,
            max_connections_per_shard: 65_536,
            idle_timeout_ms: 300_000,
            max_restarts: 5,
            restart_period_ms: 60_000,
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            rate_limit_max_principals: 65_536,
            max_command_children_per_shard: 16,
        }
    }
}

impl Limits {
    pub fn mesh_timeout(&self) -> Duration {
        Duration::from_millis(self.mesh_timeout_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn restart_period(&self) -> Duration {
        Duration::from_millis(self.restart_period_ms)
    }

    pub fn client_request_timeout(&self) -> Duration {
        Duration::from_millis(self.client_request_timeout_ms)
    }

    /// Rejects settings that would make the server unusable rather than
    /// merely strict.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, usize, usize); 15] = [
            (
                "max-command-children-per-shard",
                self.max_command_children_per_shard,
                1,
            ),
            (
                "max-connections-per-shard",
                self.max_connections_per_shard,
                1,
            ),
            (
                "rate-limit-max-principals",
                self.rate_limit_max_principals,
                1,
            ),
            ("max-client-requests", self.max_client_requests, 1),
            ("page-size", self.page_size, 1),
            ("max-tasks-per-shard", self.max_tasks_per_shard, 1),
            (
                "max-subscriptions-per-session",
                self.max_subscriptions_per_session,
                1,
            ),
            ("max-watchers-per-key", self.max_watchers_per_key, 1),
            ("max-message-bytes", self.max_message_bytes, 64),
            ("max-inflight-per-conn", self.max_inflight_per_conn, 1),
            (
                "max-output-buffer-bytes",
                self.max_output_buffer_bytes,
                4096,
            ),
            ("mesh-queue-depth", self.mesh_queue_depth, 1),
            ("mesh-pending-max", self.mesh_pending_max, 1),
            ("kv-max-key-bytes", self.kv_max_key_bytes, 1),
            ("kv-max-value-bytes", self.kv_max_value_bytes, 4),
        ];
        for (name, value, min) in checks {
            if value < min {
                return Err(out_of_range(
                    name,
                    format!("must be at least {min} (got {value})"),
                ));
            }
        }
        for (name, v) in [
            ("mesh-timeout-ms", self.mesh_timeout_ms),
            ("client-request-timeout-ms", self.client_request_timeout_ms),
            ("mrtr-state-ttl-ms", self.mrtr_state_ttl_ms),
            ("task-ttl-ms", self.task_ttl_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("restart-period", self.restart_period_ms),
            ("upgrade-timeout-ms", self.upgrade_timeout_ms),
        ] {
            if v == 0 {
                return Err(out_of_range(name, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// TLS on the HTTP and TCP listeners: the configurations built from the
/// certificate files, and the bounds on handshakes.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// The HTTP listener's (ALPN `http/1.1`).
    pub http: std::sync::Arc<rustls::ServerConfig>,
    /// The TCP listener's (no ALPN).
    pub tcp: std::sync::Arc<rustls::ServerConfig>,
    /// `--tls-client-ca` is set: every client presents a certificate that
    /// chains to it.
    pub client_certs: bool,
    /// A handshake not complete within this is abandoned and the
    /// connection closed (`tls_handshake_timeouts`).
    pub handshake_timeout_ms: u64,
    /// Handshakes one shard runs at once; a connection accepted beyond it is
    /// closed at once, unread (`tls_handshakes_refused`).
    pub max_handshakes_per_shard: usize,
}

impl TlsConfig {
    /// Reads the files of `paths` (errors name the file and the reason);
    /// default bounds: 10 s per handshake, 256 at once per shard.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsFileError> {
        let configs = crate::adapters::tls::load(paths)?;
        Ok(Self {
            http: configs.http,
            tcp: configs.plain,
            client_certs: paths.client_ca.is_some(),
            handshake_timeout_ms: 10_000,
            max_handshakes_per_shard: 256,
        })
    }

    /// The admin endpoint's configuration (no ALPN, no client
    /// certificates).
    pub fn load_admin(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsFileError> {
        let paths = TlsPaths {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        };
        Ok(crate::adapters::tls::load(&paths)?.plain)
    }
}

/// Everything `tessera serve` needs, after CLI parsing and validation.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// CPUs to run one shard each on, in shard order (shard i runs on cores[i]).
    pub cores: Vec<usize>,
    pub tcp: Option<SocketAddr>,
    pub http: Option<HttpConfig>,
    /// Serve one client on stdin/stdout (attached to shard 0).
    pub stdio: bool,
    /// Busy-poll this long before an idle executor sleeps in the kernel.
    pub spin_before_park: Option<Duration>,
    /// Print a stats line this often while running.
    pub stats_interval: Option<Duration>,
    /// `--log-level`: caps the log lines written (a reload changes it).
    pub log_level: Option<log::LevelFilter>,
    /// `--upgrade-socket`: the operator's control socket (`tessera reload`,
    /// and the binary upgrade's hand-over).
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// `--upgrade`: take the listening sockets (and then the store) over
    /// from the server on `upgrade_socket`.
    pub upgrade: bool,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address.
    pub admin: Option<SocketAddr>,
    /// `--allow-cidr` and `--deny-cidr`: which peers each listener serves
    /// (a reload replaces them).
    pub net_rules: NetRules,
    /// `--tls-cert`/`--tls-key`: TLS on the HTTP and TCP listeners (a reload
    /// replaces the pair for new handshakes).
    pub tls: Option<TlsConfig>,
    /// `--admin-tls-cert`/`--admin-tls-key`: TLS on the admin endpoint.
    pub admin_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// `--auth`: every transport's callers must present a valid token. Each
    /// shard gets its own copy.
    pub auth: Option<AuthConfig>,
    /// `--audit-log`: one JSON line per request.
    pub audit: Option<AuditConfig>,
    /// `--otlp-endpoint`: OpenTelemetry traces and metrics.
    pub otel: Option<OtelConfig>,
    /// `--data-dir`: sessions, SSE event stores and tasks survive restarts.
    pub store: Option<StoreConfig>,
    /// `--cluster`: membership (and, as it grows, shared state) on Redis.
    /// Needs `http`: other nodes reach this one there.
    pub cluster: Option<ClusterConfig>,
    pub limits: Limits,
    pub chaos: Chaos,
}

impl ServerConfig {
    /// One shard per CPU in `cores`, default limits, no transport yet.
    pub fn new(cores: Vec<usize>) -> Self {
        Self {
            cores,
            tcp: None,
            http: None,
            stdio: false,
            spin_before_park: None,
            stats_interval: None,
            log_level: None,
            upgrade_socket: None,
            upgrade: false,
            admin: None,
            net_rules: NetRules::default(),
            tls: None,
            admin_tls: None,
            auth: None,
            audit: None,
            otel: None,
            store: None,
            cluster: None,
            limits: Limits::default(),
            chaos: Chaos::default(),
        }
    }

    /// Newline-delimited JSON-RPC on `addr` (every shard binds it).
    pub fn with_tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }

    /// Streamable HTTP (both spec eras) on `addr`, default HTTP settings.
    pub fn with_http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(HttpConfig::new(addr));
        self
    }

    /// Serve one client on stdin/stdout (attached to shard 0).
    pub fn with_stdio(mut self) -> Self {
        self.stdio = true;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn shard_count(&self) -> usize {
        self.cores.len()
    }

    /// Checks the settings that do not depend on this machine.
    pub fn validate(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.cores.is_empty() {
            return Err(Box::new(out_of_range(
                "cores",
                "must name at least one CPU".into(),
            )));
        }
        self.limits.validate()?;
        self.chaos.validate()?;
        if self.upgrade && self.upgrade_socket.is_none() {
            return Err(Box::new(out_of_range(
                "upgrade",
                "needs --upgrade-socket PATH: the running server's socket".into(),
            )));
        }
        if self.upgrade && self.stdio {
            return Err(Box::new(out_of_range(
                "upgrade",
                "a stdio server cannot be upgraded in place (its client owns the pipes)".into(),
            )));
        }
        if let Some(h) = &self.http {
            h.validate()?;
        }
        if let Some(a) = &self.audit {
            a.validate()?;
        }
        if let Some(o) = &self.otel {
            o.validate()?;
            for (key, v) in [
                ("otlp_queue_max", o.queue_max as u64),
                ("otlp_export_interval_ms", o.export_interval_ms),
                ("otlp_timeout_ms", o.timeout_ms),
            ] {
                if v == 0 {
                    return Err(Box::new(out_of_range(key, "must be at least 1".into())));
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.check()?;
            if self.store.is_some() {
                return Err(Box::new(out_of_range(
                    "cluster",
                    "keeps sessions in Redis; leave out --data-dir".into(),
                )));
            }
            let Some(h) = &self.http else {
                return Err(Box::new(out_of_range(
                    "cluster",
                    "needs --http: other nodes reach this one there".into(),
                )));
            };
            let advertise = c.advertise.unwrap_or(h.addr);
            if advertise.ip().is_unspecified() || advertise.port() == 0 && c.advertise.is_some() {
                return Err(Box::new(out_of_range(
                    "cluster-advertise",
                    format!("{advertise}: give the address other nodes reach this one at (--http {} cannot be dialled)", h.addr),
                )));
            }
        }
        if matches!(self.stats_interval, Some(d) if d.is_zero()) {
            return Err(Box::new(out_of_range(
                "stats-interval",
                "must be greater than zero".into(),
            )));
        }
        Ok(())
    }
}

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 10s, 500ms, 2m (at most a year)")]
pub struct DurationError(pub String);

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us` or a bare number of seconds
/// (fractions allowed), as the command line and config file write durations.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let bad = || DurationError(s.to_owned());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn limits_name_the_flag_at_fault() {
        let l = Limits {
            page_size: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().flag, "page-size");
        assert!(Limits::default().validate().is_ok());
    }
}
