//! Command-line interface of the `tessera` binary: the flag definitions and
//! their translation into the library's [`ServerConfig`]. Reading the
//! `--auth` files happens here, before any shard starts, through the
//! library's own loaders.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tessera::config::{
    generated_node_id, parse_duration, read_secret_file, select_cores, Action, AuditConfig,
    AuthConfig, Chaos, ClusterConfig, FsyncPolicy, HttpConfig, JwtSettings, KeyRing, Limits,
    NetRules, OtelConfig, Rule, ServerConfig, StoreConfig, StoreKeys, TlsConfig, TlsPaths,
};

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "Thread-per-core MCP server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: one pinned executor per selected core.
    Serve(Box<ServeArgs>),
    /// Check a config file (syntax, keys, values, and the resulting
    /// configuration on this machine) without starting: exit 0 if it is
    /// good, 2 with every problem listed by line and key if not.
    CheckConfig {
        /// The TOML file, as for `serve --config`.
        file: PathBuf,
    },
    /// Ask a running server to reload its configuration (as SIGHUP does)
    /// through its `--upgrade-socket`; prints the outcome, exit 1 if the
    /// reload was refused.
    Reload {
        #[arg(long, value_name = "PATH")]
        upgrade_socket: PathBuf,
    },
    /// Cluster operations (`--cluster`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print a new random key for `--store-key-file` (64 hex characters).
    GenKey,
    /// Back up a --data-dir (sessions, SSE events, tasks; compressed, with a
    /// manifest of digests) into a new `backup-<unix ms>` directory under
    /// --to. A running server does it itself, consistently, when asked
    /// through its --upgrade-socket; --data-dir reads a stopped server's
    /// files.
    Backup {
        /// Where backups go (created if missing).
        #[arg(long, value_name = "DEST")]
        to: PathBuf,
        /// Keep only this many backups under --to (the oldest go).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// A running server's control socket.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with = "data_dir",
            required_unless_present = "data_dir"
        )]
        upgrade_socket: Option<PathBuf>,
        /// A stopped server's --data-dir.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Restore a backup into an empty --data-dir after checking its manifest
    /// and digests.
    Restore {
        /// The backup directory (`backup-<unix ms>`).
        #[arg(long, value_name = "BACKUP")]
        from: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The shard count the restored server will run; a backup of another
        /// count is refused.
        #[arg(long, value_name = "N")]
        shards: Option<usize>,
    },
    /// Operations on a `--data-dir`.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Read a bearer token from stdin and print its line for the
    /// `--auth-tokens` file (only the SHA-256 of the token is stored).
    HashToken {
        /// Who the token identifies (audit, session binding, rate limits).
        #[arg(long)]
        principal: String,
        /// Roles granted to the token, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Rewrite every record of every shard file under the first key of
    /// --store-key-file (records sealed with another listed key, and plain
    /// ones written before a key was set). Records no listed key opens are
    /// left as they are and counted. A running server does it itself when
    /// asked through its --upgrade-socket (it reads its own
    /// --store-key-file again, which must still list the key in use);
    /// --data-dir with --store-key-file rewrites a stopped server's files.
    Rekey {
        /// A running server's control socket.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with_all = ["data_dir", "store_key_file"],
            required_unless_present = "data_dir"
        )]
        upgrade_socket: Option<PathBuf>,
        #[arg(long, value_name = "DIR", requires = "store_key_file")]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        store_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// List the cluster's nodes (live and recently dead), their advertised
    /// addresses, shards and sessions, from the membership keys in Redis.
    Status {
        /// The cluster's Redis, as for `serve --cluster`.
        #[arg(long, value_name = "URL")]
        cluster: String,
        #[arg(long, value_name = "FILE")]
        cluster_password_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        cluster_tls_ca_file: Option<PathBuf>,
        #[arg(long, default_value = "tessera")]
        cluster_key_prefix: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `--cluster` and its settings.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Join a cluster of tessera nodes whose shared state lives in this
    /// Redis/Valkey: `redis://[user@]HOST:PORT[/DB]`, or a Redis Cluster
    /// seed list `redis-cluster://HOST:PORT?node=HOST:PORT`; `rediss://`
    /// and `rediss-cluster://` for TLS. Needs --http and
    /// --cluster-secret-file.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// The Redis password, read from this file.
    #[arg(long, value_name = "FILE")]
    pub cluster_password_file: Option<PathBuf>,
    /// With a TLS URL (`rediss://`, `rediss-cluster://`): trust these PEM
    /// certificates for the Redis server instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub cluster_tls_ca_file: Option<PathBuf>,
    /// This node's name in the cluster (default: generated and logged).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Where other nodes reach this node's HTTP listener (default: the
    /// --http address).
    #[arg(long, value_name = "HOST:PORT")]
    pub cluster_advertise: Option<SocketAddr>,
    /// A file holding the secret (at least 16 bytes) that node-to-node
    /// requests carry proof of; required with --cluster.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Prefix of every key tessera writes, so several clusters can share one
    /// Redis.
    #[arg(long, default_value = "tessera")]
    pub cluster_key_prefix: String,
    /// A node is dead once its heartbeat is this old; shards beat every
    /// third of it.
    #[arg(long, default_value_t = 3000)]
    pub cluster_heartbeat_ttl_ms: u64,
    /// Deadline of every Redis call; past it the call fails (-31010 / 503
    /// where a client waits for it).
    #[arg(long, default_value_t = 1000)]
    pub cluster_command_timeout_ms: u64,
    /// Longest wait between reconnect attempts (backoff from 50 ms).
    #[arg(long, default_value_t = 2000)]
    pub cluster_reconnect_max_ms: u64,
    /// Commands a shard's Redis client buffers while reconnecting.
    #[arg(long, default_value_t = 10_000)]
    pub cluster_command_queue_max: usize,
    /// Where --rate-limit-per-sec counts sessionless HTTP requests: `node`
    /// (each node its own buckets) or `cluster` (one bucket per principal
    /// across every node, in Redis: one script per request; needs --cluster).
    #[arg(long, value_enum, default_value = "node")]
    pub rate_limit_scope: RateScope,
    /// Write-through for legacy sessions' SSE events: each is sent to its
    /// client only after Redis acknowledged it (adds one flush interval and
    /// a Redis round trip to every event; while Redis is down, events wait).
    /// Without it events are written behind, and a crash loses the last
    /// <= 10 ms of them.
    #[arg(long)]
    pub cluster_sync_events: bool,
}

/// `--rate-limit-scope`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    Node,
    Cluster,
}

impl ClusterArgs {
    fn to_config(&self) -> Result<Option<ClusterConfig>, String> {
        let Some(url) = &self.cluster else {
            if self.rate_limit_scope == RateScope::Cluster {
                return Err("--rate-limit-scope cluster needs --cluster".into());
            }
            if self.cluster_sync_events {
                return Err("--cluster-sync-events needs --cluster".into());
            }
            return Ok(None);
        };
        let Some(secret_file) = &self.cluster_secret_file else {
            return Err("--cluster needs --cluster-secret-file: node-to-node requests must prove they come from the cluster".into());
        };
        let secret = read_secret_file(secret_file).map_err(|e| e.to_string())?;
        let node_id = self.node_id.clone().unwrap_or_else(|| {
            let id = generated_node_id();
            log::info!("no --node-id: this node is {id}");
            id
        });
        let mut c = ClusterConfig::new(url.clone(), node_id, secret);
        c.password = match &self.cluster_password_file {
            Some(f) => Some(
                String::from_utf8(read_secret_file(f).map_err(|e| e.to_string())?)
                    .map_err(|_| format!("{}: not UTF-8", f.display()))?,
            ),
            None => None,
        };
        c.advertise = self.cluster_advertise;
        c.key_prefix = self.cluster_key_prefix.clone();
        c.heartbeat_ttl_ms = self.cluster_heartbeat_ttl_ms;
        c.command_timeout_ms = self.cluster_command_timeout_ms;
        c.reconnect_max_ms = self.cluster_reconnect_max_ms;
        c.command_queue_max = self.cluster_command_queue_max;
        c.rate_limit_cluster = self.rate_limit_scope == RateScope::Cluster;
        c.sync_events = self.cluster_sync_events;
        c.tls_ca_pem = match &self.cluster_tls_ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?),
            None => None,
        };
        Ok(Some(c))
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Read settings from this TOML file: one key per flag, in snake_case
    /// (`max_connections_per_shard = 1000`); flags on the command line
    /// override it. See tessera.example.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen for newline-delimited JSON-RPC on this TCP address. Every shard
    /// binds it (SO_REUSEPORT); port 0 picks one free port for all shards.
    /// Defaults to 127.0.0.1:7070 unless --stdio or --http is given.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<SocketAddr>,

    /// Serve MCP Streamable HTTP (both spec eras) on this address
    /// (`--http` alone: 127.0.0.1:8080); every shard binds it (SO_REUSEPORT);
    /// port 0 picks one free port for all shards.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_HTTP_ADDR)]
    pub http: Option<SocketAddr>,

    #[command(flatten)]
    pub http_opts: HttpArgs,

    /// Serve one MCP client on stdin/stdout; logs go to stderr. The server
    /// exits when stdin closes.
    #[arg(long)]
    pub stdio: bool,

    /// CPUs to run shards on, e.g. `0-3`, `0,2,4-5`. Default: every CPU this
    /// process may use (the first one only with --stdio).
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,

    /// Microseconds an idle executor busy-polls before sleeping; trades CPU
    /// for wake-up latency.
    #[arg(long, value_name = "MICROSECONDS")]
    pub spin_before_park: Option<u64>,

    /// Print per-core msg/s, p50 and p99 at this interval (e.g. `1s`, `500ms`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stats_interval: Option<Duration>,

    /// The most detailed log lines written: off, error, warn, info, debug or
    /// trace (default: info, or what RUST_LOG allows). A reload (SIGHUP)
    /// applies a new value.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,

    /// A Unix socket (created mode 0600) on which `tessera reload
    /// --upgrade-socket PATH` asks this server to reload its configuration,
    /// as SIGHUP does, and hears the outcome; and on which a new process
    /// started with `--upgrade` takes its listening sockets over.
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,

    /// Binary upgrade: take every listening socket (and then the store)
    /// over from the server running on --upgrade-socket; it drains and
    /// exits once this process is prepared. Same or new binary, same or
    /// changed configuration (README, "Upgrade without downtime").
    #[arg(long, requires = "upgrade_socket")]
    pub upgrade: bool,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` over plain HTTP
    /// on this address (keep it private: no authentication). Port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Serve --http and --tcp over TLS (1.3 and 1.2) with this certificate
    /// chain: PEM, the server's certificate first, then intermediates.
    /// SIGHUP (or `tessera reload`) reads the pair again: new handshakes use
    /// the new one, live connections keep theirs, and a pair that does not
    /// load is refused with the file and the reason, the old one staying.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every TLS client to present a certificate that chains to a
    /// CA in this PEM file (mTLS); with --auth cert its subject common name
    /// is the caller's principal.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// A TLS handshake not finished within this is abandoned and the
    /// connection closed (tls_handshake_timeouts).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_ms: u64,
    /// TLS handshakes one shard runs at once; a connection accepted beyond
    /// it is closed unread (tls_handshakes_refused).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_max_handshakes_per_shard: u64,
    /// Serve --admin over TLS with this certificate chain (PEM; its own
    /// pair, reloaded like --tls-cert).
    #[arg(long, value_name = "FILE", requires_all = ["admin_tls_key", "admin"])]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,

    /// Serve only peers in this address block (repeatable): `CIDR` for every
    /// listener or `LISTENER=CIDR` for one (`http`, `tcp`, `admin`), IPv4 or
    /// IPv6. A listener with allow rules refuses every other peer at accept,
    /// before reading a byte (`tessera_connections_denied_by_rule_total`).
    /// Reloaded by SIGHUP.
    #[arg(long, value_name = "[LISTENER=]CIDR", value_parser = parse_allow_rule)]
    pub allow_cidr: Vec<String>,

    /// Refuse peers in this address block at accept (repeatable, the same
    /// form as --allow-cidr); a deny rule wins over every allow rule.
    #[arg(long, value_name = "[LISTENER=]CIDR", value_parser = parse_deny_rule)]
    pub deny_cidr: Vec<String>,

    /// Append one JSON line per request (time, shard, principal, session,
    /// method, name, outcome, code, latency_us) to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log when it would grow past this many bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub audit_log_max_bytes: u64,
    /// Rotated audit logs kept (FILE.1 is the newest).
    #[arg(long, default_value_t = 5)]
    pub audit_log_keep: u32,
    /// Audit lines a shard holds while the writer is behind; past it lines
    /// are dropped and counted (audit_dropped).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub audit_buffer_bytes: usize,

    /// Send OpenTelemetry traces and the mcp.server.operation.duration metric
    /// to this collector (its base URL, http://HOST:PORT; OTLP/HTTP
    /// protobuf to /v1/traces and /v1/metrics). Absent: tracing is off.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Requests without a sampled W3C traceparent are traced with this
    /// probability (0 to 1); a sampled parent is always followed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,
    /// Spans and duration batches queued for the OTLP exporter; past it they
    /// are dropped and counted (trace_dropped).
    #[arg(long, default_value_t = 65_536)]
    pub otlp_queue_max: usize,
    /// Spans and metrics are exported at least this often.
    #[arg(long, default_value_t = 1000)]
    pub otlp_export_interval_ms: u64,
    /// One OTLP export request may take this long.
    #[arg(long, default_value_t = 5000)]
    pub otlp_timeout_ms: u64,

    /// Keep legacy HTTP sessions and their SSE event stores in one file per
    /// shard under this directory, so they survive restarts (even kill -9).
    /// Absent: memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When the store's writes are durable: `always` (every batch before the
    /// next), `interval` (everything at least every --fsync-interval-ms: a
    /// crash loses at most that) or `never` (redb's Eventual durability).
    #[arg(long, value_enum, default_value = "interval")]
    pub fsync: FsyncArg,
    #[arg(long, default_value_t = 1000)]
    pub fsync_interval_ms: u64,
    /// Store operations a shard buffers while its writer is behind; past it
    /// they are dropped and counted (store_dropped).
    #[arg(long, default_value_t = 100_000)]
    pub store_pending_ops_max: usize,
    /// Seal every stored session, SSE event and task with XChaCha20-Poly1305
    /// under the first key of this file (one 64-hex-character key per line,
    /// `tessera gen-key`); every key listed opens. In --data-dir and in Redis
    /// (--cluster): every node of a cluster needs the same file.
    #[arg(long, value_name = "FILE")]
    pub store_key_file: Option<PathBuf>,

    /// Serve a fixture set instead of the built-in tools: `conformance` is
    /// what the official MCP conformance suite exercises.
    #[arg(long, value_enum, value_name = "SET")]
    pub fixtures: Option<FixtureSet>,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub chaos: ChaosArgs,
}

/// `--fsync`, as [`FsyncPolicy`] documents it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncArg {
    /// Every batch is durable before the next one.
    Always,
    /// Durable at least every --fsync-interval-ms.
    Interval,
    /// redb's Eventual durability.
    Never,
}

impl From<FsyncArg> for FsyncPolicy {
    fn from(a: FsyncArg) -> Self {
        match a {
            FsyncArg::Always => FsyncPolicy::Always,
            FsyncArg::Interval => FsyncPolicy::Interval,
            FsyncArg::Never => FsyncPolicy::Never,
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixtureSet {
    /// The tools, resources, prompts, tasks and skills the MCP conformance
    /// suite (`@modelcontextprotocol/conformance`) calls.
    Conformance,
}

fn http_defaults() -> HttpConfig {
    HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Streamable HTTP flags; see [`HttpConfig`] for what each bound does.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// The MCP endpoint path.
    #[arg(long, default_value = "/mcp")]
    pub http_path: String,
    /// Accept this Origin too (repeatable; `*` for any). Loopback origins are
    /// always accepted.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Accept this Host name too (repeatable). Loopback names and the bound
    /// address are always accepted.
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,
    #[arg(long, default_value_t = http_defaults().header_timeout_ms)]
    pub http_header_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; more is
    /// answered 431.
    #[arg(long, default_value_t = http_defaults().max_head_bytes)]
    pub http_max_head_bytes: usize,
    /// Most headers one request may carry; more is answered 431.
    #[arg(long, default_value_t = http_defaults().max_headers)]
    pub http_max_headers: usize,
    /// Longest request target (path and query) in bytes; longer is
    /// answered 414.
    #[arg(long, default_value_t = http_defaults().max_uri_bytes)]
    pub http_max_uri_bytes: usize,
    #[arg(long, default_value_t = http_defaults().body_timeout_ms)]
    pub http_body_timeout_ms: u64,
    #[arg(long, default_value_t = http_defaults().idle_timeout_ms)]
    pub http_idle_timeout_ms: u64,
    #[arg(long, default_value_t = http_defaults().max_sessions_per_shard)]
    pub max_sessions_per_shard: usize,
    #[arg(long, default_value_t = http_defaults().session_idle_ttl_ms)]
    pub session_idle_ttl_ms: u64,
    #[arg(long, default_value_t = http_defaults().sse_store_max_events)]
    pub sse_store_max_events: usize,
    #[arg(long, default_value_t = http_defaults().sse_store_max_age_ms)]
    pub sse_store_max_age_ms: u64,
    #[arg(long, default_value_t = http_defaults().sse_retry_ms)]
    pub sse_retry_ms: u64,
    #[arg(long, default_value_t = http_defaults().sse_keepalive_ms)]
    pub sse_keepalive_ms: u64,
    /// 0 keeps SSE connections open until the stream ends.
    #[arg(long, default_value_t = http_defaults().sse_max_connection_ms)]
    pub sse_max_connection_ms: u64,
    #[arg(long, default_value_t = http_defaults().sse_queue_events)]
    pub sse_queue_events: usize,
    /// Who may call: `none`, `token` (bearer tokens from --auth-tokens),
    /// `jwt` (signed JWTs; keys and claim checks below) or `cert` (the TLS
    /// client certificate's subject common name, listed in
    /// --auth-cert-principals; needs --tls-client-ca). HTTP carries a token in
    /// `Authorization: Bearer`; TCP and stdio in `params._meta.authorization`
    /// ("Bearer <token>") of `initialize` or of a modern request.
    #[arg(long, value_enum, default_value = "none")]
    pub auth: AuthMode,
    /// The tokens file for `--auth token`: one `sha256:<hex> <principal>
    /// [role,role]` per line (`tessera hash-token` prints one).
    #[arg(long, value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
    /// The principals file for `--auth cert`: one `<name> [role,role]` per
    /// line (`"<name with spaces>"` quoted), where name is a client
    /// certificate's subject common name. A certificate whose name is not
    /// listed is refused (401, or -31014 on TCP).
    #[arg(long, value_name = "FILE")]
    pub auth_cert_principals: Option<PathBuf>,
    /// This server's resource URI for OAuth protected-resource metadata
    /// (RFC 9728), e.g. https://mcp.example.com/mcp. Default: from the
    /// request's Host. With --auth jwt it is also the audience every token
    /// must name (`aud`).
    #[arg(long, value_name = "URL")]
    pub auth_resource: Option<String>,
    /// An authorization server that issues tokens for this resource
    /// (repeatable), listed in the protected-resource metadata.
    #[arg(long, value_name = "URL")]
    pub auth_server: Vec<String>,
    /// --auth jwt: a file holding the HS256 secret (at least 32 bytes).
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// --auth jwt: an RS256 (RSA) or ES256 (P-256) public key in PEM
    /// (repeatable).
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Vec<PathBuf>,
    /// --auth jwt: a JWKS file (RS256, ES256 and HS256 keys; chosen by `kid`).
    #[arg(long, value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,
    /// --auth jwt: an accepted `iss` (repeatable); given, every token must
    /// carry one of them.
    #[arg(long, value_name = "URL")]
    pub jwt_issuer: Vec<String>,
    /// --auth jwt: the `aud` tokens must name. Default: --auth-resource.
    #[arg(long, value_name = "URI")]
    pub jwt_audience: Option<String>,
    /// --auth jwt: clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, default_value_t = 30)]
    pub jwt_leeway_s: u64,
    /// --auth jwt: the claim naming the principal.
    #[arg(long, default_value = "sub")]
    pub jwt_principal_claim: String,
    /// --auth jwt: the claim listing the principal's roles (an array, or a
    /// space-separated string such as `scope`).
    #[arg(long, default_value = "roles")]
    pub jwt_roles_claim: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication.
    None,
    /// Bearer tokens from --auth-tokens.
    Token,
    /// Signed JWTs checked with --jwt-secret-file, --jwt-public-key or
    /// --jwt-jwks.
    Jwt,
    /// TLS client certificates (--tls-client-ca) named in
    /// --auth-cert-principals.
    Cert,
}

impl HttpArgs {
    /// The `--auth` settings, shared by every transport (the files are
    /// read here, once).
    fn auth_config(&self) -> Result<Option<AuthConfig>, String> {
        let jwt_given = self.jwt_secret_file.is_some()
            || !self.jwt_public_key.is_empty()
            || self.jwt_jwks.is_some();
        if self.auth != AuthMode::Token && self.auth_tokens.is_some() {
            return Err("--auth-tokens needs --auth token".into());
        }
        if self.auth != AuthMode::Cert && self.auth_cert_principals.is_some() {
            return Err("--auth-cert-principals needs --auth cert".into());
        }
        if self.auth != AuthMode::Jwt && jwt_given {
            return Err(
                "--jwt-secret-file, --jwt-public-key and --jwt-jwks need --auth jwt".into(),
            );
        }
        let mut config = match self.auth {
            AuthMode::None => return Ok(None),
            AuthMode::Token => {
                let Some(path) = &self.auth_tokens else {
                    return Err("--auth token needs --auth-tokens FILE".into());
                };
                AuthConfig::from_tokens_file(path).map_err(|e| format!("--auth-tokens: {e}"))?
            }
            AuthMode::Cert => {
                let Some(path) = &self.auth_cert_principals else {
                    return Err("--auth cert needs --auth-cert-principals FILE".into());
                };
                AuthConfig::from_principals_file(path)
                    .map_err(|e| format!("--auth-cert-principals: {e}"))?
            }
            AuthMode::Jwt => AuthConfig::from_jwt_settings(&JwtSettings {
                secret_file: self.jwt_secret_file.clone(),
                public_keys: self.jwt_public_key.clone(),
                jwks_file: self.jwt_jwks.clone(),
                issuers: self.jwt_issuer.clone(),
                audience: self
                    .jwt_audience
                    .clone()
                    .or_else(|| self.auth_resource.clone())
                    .unwrap_or_default(),
                leeway_s: self.jwt_leeway_s,
                principal_claim: self.jwt_principal_claim.clone(),
                roles_claim: self.jwt_roles_claim.clone(),
            })
            .map_err(|e| e.to_string())?,
        };
        config.resource = self.auth_resource.clone();
        config.authorization_servers = self.auth_server.clone();
        Ok(Some(config))
    }

    fn to_config(&self, addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            path: self.http_path.clone(),
            allowed_origins: self.allow_origin.clone(),
            allowed_hosts: self.allow_host.clone(),
            header_timeout_ms: self.http_header_timeout_ms,
            max_head_bytes: self.http_max_head_bytes,
            max_headers: self.http_max_headers,
            max_uri_bytes: self.http_max_uri_bytes,
            body_timeout_ms: self.http_body_timeout_ms,
            idle_timeout_ms: self.http_idle_timeout_ms,
            max_sessions_per_shard: self.max_sessions_per_shard,
            session_idle_ttl_ms: self.session_idle_ttl_ms,
            sse_store_max_events: self.sse_store_max_events,
            sse_store_max_age_ms: self.sse_store_max_age_ms,
            sse_retry_ms: self.sse_retry_ms,
            sse_keepalive_ms: self.sse_keepalive_ms,
            sse_max_connection_ms: self.sse_max_connection_ms,
            sse_queue_events: self.sse_queue_events,
        }
    }
}

/// One flag per entry of [`Limits`]; see there for what each bound does.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Longest JSON-RPC message in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Async requests a connection may have running before it stops reading.
    #[arg(long, default_value_t = Limits::default().max_inflight_per_conn)]
    pub max_inflight_per_conn: usize,
    /// Unsent response bytes per connection before it stops reading.
    #[arg(long, default_value_t = Limits::default().max_output_buffer_bytes)]
    pub max_output_buffer_bytes: usize,
    /// Depth of each one-way queue between two shards.
    #[arg(long, default_value_t = Limits::default().mesh_queue_depth)]
    pub mesh_queue_depth: usize,
    /// Cross-core requests a shard may have outstanding.
    #[arg(long, default_value_t = Limits::default().mesh_pending_max)]
    pub mesh_pending_max: usize,
    /// Milliseconds before an unanswered cross-core hop fails.
    #[arg(long, default_value_t = Limits::default().mesh_timeout_ms)]
    pub mesh_timeout_ms: u64,
    /// Keys each shard's part of the kv store may hold.
    #[arg(long, default_value_t = Limits::default().kv_max_keys_per_shard)]
    pub kv_max_keys_per_shard: usize,
    /// Longest kv key in bytes.
    #[arg(long, default_value_t = Limits::default().kv_max_key_bytes)]
    pub kv_max_key_bytes: usize,
    /// Largest kv value in bytes of compact JSON.
    #[arg(long, default_value_t = Limits::default().kv_max_value_bytes)]
    pub kv_max_value_bytes: usize,
    /// Resources one session may subscribe to.
    #[arg(long, default_value_t = Limits::default().max_subscriptions_per_session)]
    pub max_subscriptions_per_session: usize,
    /// Subscribers one kv key may have.
    #[arg(long, default_value_t = Limits::default().max_watchers_per_key)]
    pub max_watchers_per_key: usize,
    /// Milliseconds connections get to finish in-flight requests at shutdown.
    #[arg(long, default_value_t = Limits::default().drain_timeout_ms)]
    pub drain_timeout_ms: u64,
    /// Binary upgrade: milliseconds the running server waits for the new
    /// process to be prepared (then it keeps serving), and the new one for
    /// the old to release its store.
    #[arg(long, default_value_t = Limits::default().upgrade_timeout_ms)]
    pub upgrade_timeout_ms: u64,
    /// Server-to-client requests (sampling, elicitation, roots) a session
    /// may have awaiting the client's answer.
    #[arg(long, default_value_t = Limits::default().max_client_requests)]
    pub max_client_requests: usize,
    /// Milliseconds a server-to-client request waits for its answer.
    #[arg(long, default_value_t = Limits::default().client_request_timeout_ms)]
    pub client_request_timeout_ms: u64,
    /// Items per page of the list methods.
    #[arg(long, default_value_t = Limits::default().page_size)]
    pub page_size: usize,
    /// Milliseconds a signed multi-round requestState stays valid.
    #[arg(long, default_value_t = Limits::default().mrtr_state_ttl_ms)]
    pub mrtr_state_ttl_ms: u64,
    /// Tasks one shard may hold.
    #[arg(long, default_value_t = Limits::default().max_tasks_per_shard)]
    pub max_tasks_per_shard: usize,
    /// Default and maximum task lifetime in milliseconds.
    #[arg(long, default_value_t = Limits::default().task_ttl_ms)]
    pub task_ttl_ms: u64,
    /// Connections one shard serves at once; more are accepted and closed
    /// (HTTP: 503 first).
    #[arg(long, default_value_t = Limits::default().max_connections_per_shard)]
    pub max_connections_per_shard: usize,
    /// Close a TCP connection that completes no message for this many
    /// milliseconds while nothing of it is in flight.
    #[arg(long, default_value_t = Limits::default().idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    /// Connection-handler restarts allowed per connection within
    /// --restart-period; one more closes the connection.
    #[arg(long, default_value_t = Limits::default().max_restarts)]
    pub max_restarts: u32,
    /// The window --max-restarts counts over (e.g. 60s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub restart_period: Duration,
    /// Requests per second per principal (connection, session or peer
    /// address); 0 = unlimited. Over it: -31012 / HTTP 429.
    #[arg(long, default_value_t = Limits::default().rate_limit_per_sec)]
    pub rate_limit_per_sec: u32,
    /// Token-bucket size above the rate; 0 = one second's worth.
    #[arg(long, default_value_t = Limits::default().rate_limit_burst)]
    pub rate_limit_burst: u32,
    /// Rate-limit buckets one shard keeps for HTTP principals.
    #[arg(long, default_value_t = Limits::default().rate_limit_max_principals)]
    pub rate_limit_max_principals: usize,
    /// Command-tool programs one shard runs at once; more calls get -31010.
    #[arg(long, default_value_t = Limits::default().max_command_children_per_shard)]
    pub max_command_children_per_shard: usize,
    /// Shutdown drain as a duration (e.g. 10s); overrides --drain-timeout-ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
}

/// Fault injection (off unless given; logged loudly when on).
#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Fraction of tool calls that panic (answered -32603 by the supervisor).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub chaos_panic_rate: f64,
    /// Fraction of NDJSON messages after which the connection handler panics,
    /// and of HTTP requests whose handler panics before routing.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub chaos_conn_panic_rate: f64,
    /// Fraction of TCP/stdio token checks that panic inside the check (the
    /// request is answered -32603; access is never widened).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub chaos_auth_panic_rate: f64,
    /// Kill one shard's executor this often (round-robin); the main thread
    /// restarts it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub chaos_kill_shard_every: Option<Duration>,
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Self {
        Limits {
            max_message_bytes: a.max_message_bytes,
            max_inflight_per_conn: a.max_inflight_per_conn,
            max_output_buffer_bytes: a.max_output_buffer_bytes,
            mesh_queue_depth: a.mesh_queue_depth,
            mesh_pending_max: a.mesh_pending_max,
            mesh_timeout_ms: a.mesh_timeout_ms,
            kv_max_keys_per_shard: a.kv_max_keys_per_shard,
            kv_max_key_bytes: a.kv_max_key_bytes,
            kv_max_value_bytes: a.kv_max_value_bytes,
            max_subscriptions_per_session: a.max_subscriptions_per_session,
            max_watchers_per_key: a.max_watchers_per_key,
            drain_timeout_ms: a
                .drain_timeout
                .map_or(a.drain_timeout_ms, |d| d.as_millis() as u64),
            upgrade_timeout_ms: a.upgrade_timeout_ms,
            max_client_requests: a.max_client_requests,
            client_request_timeout_ms: a.client_request_timeout_ms,
            page_size: a.page_size,
            mrtr_state_ttl_ms: a.mrtr_state_ttl_ms,
            max_tasks_per_shard: a.max_tasks_per_shard,
            task_ttl_ms: a.task_ttl_ms,
            max_connections_per_shard: a.max_connections_per_shard,
            idle_timeout_ms: a.idle_timeout_ms,
            max_restarts: a.max_restarts,
            restart_period_ms: a.restart_period.as_millis() as u64,
            rate_limit_per_sec: a.rate_limit_per_sec,
            rate_limit_burst: a.rate_limit_burst,
            rate_limit_max_principals: a.rate_limit_max_principals,
            max_command_children_per_shard: a.max_command_children_per_shard,
        }
    }
}

pub const DEFAULT_TCP_ADDR: &str = "127.0.0.1:7070";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

impl ServeArgs {
    /// `serve` with these arguments (what would follow `tessera serve`).
    ///
    /// # Panics
    /// If they do not parse; for callers holding known-good arguments.
    pub fn parse_from_serve(args: &[&str]) -> Self {
        let argv = ["tessera", "serve"].iter().chain(args);
        match Cli::parse_from(argv).command {
            Command::Serve(a) => *a,
            _ => unreachable!("parsed serve"),
        }
    }

    /// `--store-key-file`, read; it needs somewhere to store: `--data-dir`,
    /// `--cluster` (Redis) or both.
    fn store_keys(&self) -> Result<Option<StoreKeys>, String> {
        let Some(path) = &self.store_key_file else {
            return Ok(None);
        };
        if self.data_dir.is_none() && self.cluster.cluster.is_none() {
            return Err("--store-key-file needs --data-dir or --cluster".into());
        }
        StoreKeys::from_file(path)
            .map(Some)
            .map_err(|e| format!("--store-key-file {e}"))
    }

    /// `--tls-cert` and friends, read; `--auth cert` needs client
    /// certificates to name anyone.
    fn tls_config(&self) -> Result<Option<TlsConfig>, String> {
        if self.http_opts.auth == AuthMode::Cert && self.tls_client_ca.is_none() {
            return Err("--auth cert needs --tls-client-ca (and --tls-cert)".into());
        }
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        if self.cluster.cluster.is_some() {
            return Err(
                "--tls-cert with --cluster: nodes relay requests to each other's HTTP listener in plain HTTP, not yet over TLS, so it is refused"
                    .into(),
            );
        }
        let paths = TlsPaths {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        let mut c = TlsConfig::load(&paths).map_err(|e| format!("TLS: {e}"))?;
        c.handshake_timeout_ms = self.tls_handshake_timeout_ms;
        c.max_handshakes_per_shard = self.tls_max_handshakes_per_shard as usize;
        Ok(Some(c))
    }

    /// Resolves defaults and checks the selection against this machine.
    pub fn to_config(&self) -> Result<ServerConfig, String> {
        let mut cores = select_cores(self.cores.as_deref()).map_err(|e| e.to_string())?;
        if self.cores.is_none() && self.stdio {
            // One client needs one core.
            cores.truncate(1);
        }
        let tcp = match (self.tcp, self.stdio || self.http.is_some()) {
            (Some(a), _) => Some(a),
            (None, false) => Some(DEFAULT_TCP_ADDR.parse().expect("valid default address")),
            (None, true) => None,
        };
        let keys = self.store_keys()?;
        let config = ServerConfig {
            cores,
            tcp,
            http: self.http.map(|addr| self.http_opts.to_config(addr)),
            stdio: self.stdio,
            spin_before_park: self.spin_before_park.map(Duration::from_micros),
            stats_interval: self.stats_interval,
            log_level: self.log_level,
            upgrade_socket: self.upgrade_socket.clone(),
            upgrade: self.upgrade,
            admin: self.admin,
            net_rules: NetRules::parse(&self.allow_cidr, &self.deny_cidr)?,
            tls: self.tls_config()?,
            admin_tls: match (&self.admin_tls_cert, &self.admin_tls_key) {
                (Some(cert), Some(key)) => Some(
                    TlsConfig::load_admin(cert, key)
                        .map_err(|e| format!("--admin-tls-cert: {e}"))?,
                ),
                _ => None,
            },
            auth: self.http_opts.auth_config()?,
            audit: self.audit_log.as_ref().map(|path| AuditConfig {
                path: path.clone(),
                max_bytes: self.audit_log_max_bytes,
                keep: self.audit_log_keep,
                buffer_bytes: self.audit_buffer_bytes,
            }),
            otel: self.otlp_endpoint.as_ref().map(|endpoint| OtelConfig {
                endpoint: endpoint.clone(),
                sample_ratio: self.trace_sample_ratio,
                queue_max: self.otlp_queue_max,
                export_interval_ms: self.otlp_export_interval_ms,
                timeout_ms: self.otlp_timeout_ms,
            }),
            store: self.data_dir.as_ref().map(|dir| StoreConfig {
                keys: keys.clone(),
                key_file: self.store_key_file.clone(),
                ring: KeyRing::new(keys.clone()),
                dir: dir.clone(),
                fsync: self.fsync.into(),
                fsync_interval_ms: self.fsync_interval_ms,
                pending_ops_max: self.store_pending_ops_max,
            }),
            cluster: self.cluster.to_config()?.map(|mut c| {
                c.keys = keys.clone();
                c
            }),
            limits: Limits::from(&self.limits),
            chaos: Chaos {
                panic_rate: self.chaos.chaos_panic_rate,
                conn_panic_rate: self.chaos.chaos_conn_panic_rate,
                auth_panic_rate: self.chaos.chaos_auth_panic_rate,
                kill_shard_every_ms: self
                    .chaos
                    .chaos_kill_shard_every
                    .map(|d| d.as_millis() as u64),
            },
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// One `--allow-cidr` (checked here so a config file's error names its
/// line).
fn parse_allow_rule(s: &str) -> Result<String, String> {
    Rule::parse(Action::Allow, s).map(|_| s.to_string())
}

/// One `--deny-cidr`.
fn parse_deny_rule(s: &str) -> Result<String, String> {
    Rule::parse(Action::Deny, s).map(|_| s.to_string())
}

/// A probability: a number from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
}
