//! Validated server configuration: what the shards need to start, as plain
//! `Send + Clone` data copied into every executor thread.
//!
//! Every bound the server enforces lives in [`Limits`], each with its unit in
//! its name, its default, and what happens when it is hit.

use std::net::SocketAddr;
use std::time::Duration;

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
    /// Kill one shard's executor this often (round-robin), so the main
    /// thread restarts it.
    pub kill_shard_every_ms: Option<u64>,
}

impl Chaos {
    pub fn is_on(&self) -> bool {
        self.panic_rate > 0.0 || self.conn_panic_rate > 0.0 || self.kill_shard_every_ms.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("chaos-panic-rate", self.panic_rate),
            ("chaos-conn-panic-rate", self.conn_panic_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--{name} must be a fraction in [0, 1] (got {v})"));
            }
        }
        if self.kill_shard_every_ms == Some(0) {
            return Err("--chaos-kill-shard-every must be greater than zero".into());
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
    pub fn validate(&self) -> Result<(), String> {
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
                return Err(format!("--{name} must be at least {min} (got {value})"));
            }
        }
        for (name, v) in [
            ("mesh-timeout-ms", self.mesh_timeout_ms),
            ("client-request-timeout-ms", self.client_request_timeout_ms),
            ("mrtr-state-ttl-ms", self.mrtr_state_ttl_ms),
            ("task-ttl-ms", self.task_ttl_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("restart-period", self.restart_period_ms),
        ] {
            if v == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Streamable HTTP settings (`--http`). Every timeout and table has a bound;
/// see each field for what happens at it.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// The MCP endpoint; other paths get 404.
    pub path: String,
    /// Origins accepted besides loopback ones (`http(s)://localhost`,
    /// `127.0.0.1`, `[::1]`, any port); `*` accepts every origin. A request
    /// with any other `Origin` gets 403 (DNS-rebinding defence).
    pub allowed_origins: Vec<String>,
    /// `Host` names accepted besides loopback names and the bound address.
    pub allowed_hosts: Vec<String>,
    /// A request head not complete within this is answered 408 and closed.
    pub header_timeout_ms: u64,
    /// A request body not complete within this is answered 408.
    pub body_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed.
    pub idle_timeout_ms: u64,
    /// Legacy sessions one shard holds; `initialize` beyond it gets 503.
    pub max_sessions_per_shard: usize,
    /// A legacy session with no request and no open stream for this long is
    /// removed; its id then answers 404.
    pub session_idle_ttl_ms: u64,
    /// SSE events kept per legacy session for `Last-Event-ID` replay;
    /// older ones are dropped first.
    pub sse_store_max_events: usize,
    /// SSE events older than this are dropped from the replay store.
    pub sse_store_max_age_ms: u64,
    /// The `retry` (ms) sent with the priming event and before the server
    /// closes a stream's connection.
    pub sse_retry_ms: u64,
    /// An SSE comment is sent after this much silence on an open stream.
    pub sse_keepalive_ms: u64,
    /// The server closes a legacy SSE connection after this long (sending
    /// `retry` first); the client resumes with `Last-Event-ID` (SEP-1699
    /// polling). 0 keeps connections open.
    pub sse_max_connection_ms: u64,
    /// Events queued for one slow SSE reader. Past it a legacy stream's
    /// connection is closed (the client resumes from the replay store); a
    /// modern stream drops progress notifications, never the response.
    pub sse_queue_events: usize,
    /// `--auth token`: bearer tokens every request must carry (401 with
    /// `WWW-Authenticate` otherwise). Read-only, shared by every shard.
    pub auth: Option<std::sync::Arc<crate::server::auth::AuthConfig>>,
}

impl HttpConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            path: "/mcp".into(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            max_sessions_per_shard: 10_000,
            session_idle_ttl_ms: 1_800_000,
            sse_store_max_events: 1_024,
            sse_store_max_age_ms: 300_000,
            sse_retry_ms: 1_000,
            sse_keepalive_ms: 15_000,
            sse_max_connection_ms: 300_000,
            sse_queue_events: 256,
            auth: None,
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!(
                "--http-path must start with '/' (got {:?})",
                self.path
            ));
        }
        let positive: [(&str, u64); 8] = [
            ("http-header-timeout-ms", self.header_timeout_ms),
            ("http-body-timeout-ms", self.body_timeout_ms),
            ("http-idle-timeout-ms", self.idle_timeout_ms),
            ("session-idle-ttl-ms", self.session_idle_ttl_ms),
            ("sse-store-max-age-ms", self.sse_store_max_age_ms),
            ("sse-keepalive-ms", self.sse_keepalive_ms),
            ("max-sessions-per-shard", self.max_sessions_per_shard as u64),
            ("sse-queue-events", self.sse_queue_events as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("--{name} must be greater than zero"));
            }
        }
        Ok(())
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
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address.
    pub admin: Option<SocketAddr>,
    /// `--auth`: every transport's callers must present a valid token
    /// (`http.auth` is the same settings).
    pub auth: Option<std::sync::Arc<crate::server::auth::AuthConfig>>,
    /// `--audit-log`: one JSON line per request.
    pub audit: Option<crate::server::audit::AuditConfig>,
    /// `--data-dir`: sessions and SSE event stores survive restarts.
    pub store: Option<crate::runtime::store::StoreConfig>,
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
            admin: None,
            auth: None,
            audit: None,
            store: None,
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
}
