//! Latency histograms and counters.
//!
//! Every shard records into its own histograms and counters (plain integers,
//! no atomics: only the owning core touches them). The main thread receives
//! periodic copies over the control plane and merges them; it never reads a
//! shard's live state. Service time is measured in microseconds with three
//! significant digits, from the moment a message is parsed to the moment its
//! response is encoded (or the async handler completes).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

pub mod prometheus;

/// What a message was, for accounting. Requests are split by MCP method;
/// everything else shares a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum MethodKind {
    Initialize = 0,
    Ping,
    Discover,
    ToolsList,
    ToolsCall,
    /// resources/list, resources/templates/list, resources/read.
    Resources,
    /// resources/subscribe, resources/unsubscribe.
    Subscribe,
    /// prompts/list, prompts/get.
    Prompts,
    /// tasks/get, tasks/result, tasks/list, tasks/cancel.
    Tasks,
    /// Any other request (answered with an error by this build).
    OtherRequest,
    Notification,
    /// Unparseable or not JSON-RPC; answered with an error.
    Invalid,
}

impl MethodKind {
    pub const COUNT: usize = 12;
    pub const ALL: [MethodKind; Self::COUNT] = [
        MethodKind::Initialize,
        MethodKind::Ping,
        MethodKind::Discover,
        MethodKind::ToolsList,
        MethodKind::ToolsCall,
        MethodKind::Resources,
        MethodKind::Subscribe,
        MethodKind::Prompts,
        MethodKind::Tasks,
        MethodKind::OtherRequest,
        MethodKind::Notification,
        MethodKind::Invalid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Initialize => "initialize",
            MethodKind::Ping => "ping",
            MethodKind::Discover => "server/discover",
            MethodKind::ToolsList => "tools/list",
            MethodKind::ToolsCall => "tools/call",
            MethodKind::Resources => "resources/*",
            MethodKind::Subscribe => "(un)subscribe",
            MethodKind::Prompts => "prompts/*",
            MethodKind::Tasks => "tasks/*",
            MethodKind::OtherRequest => "(other request)",
            MethodKind::Notification => "(notification)",
            MethodKind::Invalid => "(invalid)",
        }
    }
}

/// Highest service time the histograms resolve; longer ones saturate here.
pub const HISTOGRAM_MAX_US: u64 = 60 * 60 * 1_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Declares the counter set once: the struct, merging, and the named rows
/// every report prints.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Counters a shard keeps besides latency. Each is the number of
        /// times the event happened since the shard started.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            fn add(&mut self, o: &Counters) {
                $( self.$name += o.$name; )*
            }

            /// Every counter with its name, in declaration order.
            pub fn rows(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
        }
    };
}

counters! {
    connections_opened,
    connections_closed,
    /// JSON-RPC error responses sent (any code).
    error_responses,
    /// Lines or bodies longer than `max_message_bytes`.
    oversize_messages,
    /// Requests this shard sent to another shard's key space.
    mesh_requests_sent,
    /// Requests this shard served for another shard.
    mesh_requests_served,
    /// Hops refused because the mesh queue or the pending table was full.
    mesh_overloaded,
    /// Hops that got no answer within `mesh_timeout_ms`.
    mesh_timeouts,
    /// One-way mesh messages (notifications, unsubscribes) dropped because
    /// the queue was full.
    mesh_dropped,
    /// `kv_set` or `resources/subscribe` refused at a per-shard or per-key bound.
    kv_full,
    /// `resources/subscribe` refused at `max_subscriptions_per_session`.
    subscription_limit,
    /// Server-initiated notifications handed to a session.
    notifications_sent,
    /// Notifications dropped because the client was not reading and its
    /// output passed `max_output_buffer_bytes` (responses are never dropped).
    notifications_dropped,
    /// Legacy HTTP sessions created by `initialize`.
    sessions_created,
    /// Sessions removed after `session_idle_ttl_ms` without use.
    sessions_expired,
    /// `initialize` refused (503) at `max_sessions_per_shard`.
    sessions_rejected,
    /// SSE connections closed because the reader fell `sse_queue_events`
    /// behind (legacy streams resume from the store).
    sse_streams_cut,
    /// HTTP requests refused before reaching MCP (4xx: origin, host, media
    /// types, size, headers).
    http_rejected,
    /// HTTP request heads refused at `--http-max-head-bytes` or
    /// `--http-max-headers` (431, connection closed) or targets over
    /// `--http-max-uri-bytes` (414).
    http_heads_refused,
    /// HTTP connections handed from the lean path to hyper, at a request of
    /// an unusual shape (HTTP/1.0, a chunked or large body, `Expect`, ...).
    http_hyper_handovers,
    /// Handler panics caught by the supervisor (each cost one request).
    handler_panics,
    /// Requests refused for want of a valid token: HTTP 401, TCP/stdio
    /// -31014.
    auth_failures,
    /// Requests for a session with another principal's token (404).
    auth_session_mismatch,
    /// Calls, gets and reads refused -31013 because no role grants them.
    auth_denied,
    /// `resources/read` of a file refused: outside its root (traversal,
    /// symlink out, dotfile), missing, or over `max_file_bytes`.
    file_reads_refused,
    /// Persistence operations dropped because the shard's buffer was full
    /// (the disk fell behind `store_pending_ops_max`).
    store_dropped,
    /// Audit lines dropped because the shard's buffer was full (the writer
    /// fell behind).
    audit_dropped,
    /// Spans and duration batches dropped because the OTLP exporter's queue
    /// was full (`--otlp-queue-max`; the collector or the exporter fell
    /// behind).
    trace_dropped,
    /// Command-tool programs started.
    commands_started,
    /// Command-tool calls that failed: non-zero exit, killed, timed out, or
    /// the program could not be started.
    commands_failed,
    /// Command-tool programs killed at their `timeout_ms`.
    commands_timed_out,
    /// Command-tool calls refused at `max_command_children_per_shard`.
    commands_refused,
    /// Reads paused because a connection hit `max_inflight_per_conn` or its
    /// output buffer passed `max_output_buffer_bytes`.
    backpressure_pauses,
    /// Requests stopped by `notifications/cancelled` (or `tasks/cancel`).
    requests_cancelled,
    /// `subscriptions/listen` streams opened.
    listen_streams,
    /// Server-to-client requests that failed: refused at
    /// `max_client_requests`, unanswered within `client_request_timeout_ms`,
    /// or answered with an error.
    client_requests_failed,
    /// Tasks created (task-augmented requests).
    tasks_created,
    /// Task creations refused at `max_tasks_per_shard`.
    tasks_rejected,
    /// Tasks removed after their TTL.
    tasks_expired,
    /// Connections accepted and closed at once at `max_connections_per_shard`.
    connections_refused,
    /// Stored records skipped at startup because they did not open under
    /// `--store-key-file` (another key, altered, or plain); never served.
    store_records_unreadable,
    /// Connections accepted and closed at once, unread, because an
    /// `--allow-cidr`/`--deny-cidr` rule refused the peer (by rule:
    /// [`Denied`]).
    connections_denied,
    /// TLS handshakes completed (`--tls-cert`).
    tls_handshakes,
    /// TLS handshakes that failed (bad certificate, no shared version or
    /// ALPN protocol, not TLS at all); the connection was closed.
    tls_handshake_failures,
    /// TLS handshakes not done within `--tls-handshake-timeout-ms`; the
    /// connection was closed.
    tls_handshake_timeouts,
    /// Connections closed unread because `--tls-max-handshakes-per-shard`
    /// handshakes were already running on the shard.
    tls_handshakes_refused,
    /// Connections a binary upgrade's old process accepted as its shards
    /// stopped and handed over unserved (served here instead).
    connections_adopted,
    /// `accept` failures, such as `EMFILE` at `RLIMIT_NOFILE`; the listener
    /// pauses 20 ms after each and the connection waits in the backlog.
    accept_errors,
    /// TCP connections closed after `idle_timeout_ms` without a message.
    connections_idle_closed,
    /// Connection handlers restarted by their supervisor after a panic.
    connection_restarts,
    /// Connections closed because they panicked more than `max_restarts`
    /// times within `restart_period_ms`.
    connections_given_up,
    /// Requests refused by the rate limiter (-31012 / HTTP 429).
    rate_limited,
    /// HTTP principals served unlimited because the bucket table was full.
    rate_table_full,
    /// Mesh rebuilds this shard took part in (a peer shard was restarted).
    mesh_rejoins,
    /// Cross-core requests failed because the mesh was rebuilt under them.
    mesh_lost_in_rebuild,
    /// `--cluster`: Redis commands sent for membership (heartbeats and the
    /// live-node list), off every request path.
    redis_commands_heartbeat,
    /// Redis commands a client request waited for (only requests for a
    /// session this node does not hold).
    redis_commands_request,
    /// Redis commands sent off the request path (session write-behind,
    /// expiry refreshes).
    redis_commands_background,
    /// Redis calls answered with an error.
    redis_errors,
    /// Redis calls unanswered within `--cluster-command-timeout-ms`.
    redis_timeouts,
    /// Redis calls refused at once because the shard's connection was down.
    redis_refused,
    /// Times a shard's Redis connection came back after being lost.
    redis_reconnects,
    /// Legacy requests relayed to the node that holds their session.
    cluster_relays,
    /// Node-to-node requests refused: no valid proof of the cluster secret.
    cluster_relays_refused,
    /// Sessions taken over from a dead node (or reloaded after a restart).
    cluster_takeovers,
    /// Sessions dropped because another node took them over (a write of
    /// theirs was fenced by the owner epoch).
    cluster_sessions_fenced,
    /// Tasks taken over from a dead node (modern ones on request, legacy
    /// ones with their session).
    cluster_tasks_adopted,
    /// Tasks dropped because another node took them over.
    cluster_tasks_fenced,
    /// Reloads applied (SIGHUP; counted once, on shard 0).
    config_reloads,
    /// Reloads refused because the configuration had errors (nothing
    /// changed; counted once, on shard 0).
    config_reload_failures,
    /// TCP/stdio connections unbound from their principal: the token that
    /// proved it was revoked by a reload, or expired (JWT `exp`).
    auth_revoked,
    /// `--cluster-sync-events`: SSE events that left a session's event
    /// store before Redis acknowledged them (Redis out of reach for longer
    /// than the store keeps events); their readers never get them.
    sse_events_unacked_dropped,
}

/// What the mesh reports, as counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshCounts {
    Sent,
    Served,
    Overloaded,
    Dropped,
    TimedOut,
    StreamCut,
}

impl Counters {
    /// Counts one mesh event.
    pub fn count_mesh(&mut self, e: MeshCounts) {
        match e {
            MeshCounts::Sent => self.mesh_requests_sent += 1,
            MeshCounts::Served => self.mesh_requests_served += 1,
            MeshCounts::Overloaded => self.mesh_overloaded += 1,
            MeshCounts::Dropped => self.mesh_dropped += 1,
            MeshCounts::TimedOut => self.mesh_timeouts += 1,
            MeshCounts::StreamCut => self.sse_streams_cut += 1,
        }
    }
}

/// Rule labels [`Denied`] keeps counts for; refusals under labels past it
/// are counted only in `connections_denied`. Reloads may bring new labels,
/// so this is a multiple of the rules one configuration may have.
pub const DENIED_LABELS_MAX: usize = 4 * 1024;

/// The listeners [`Denied`] counts by, in the order of its counts (the
/// transports' `netrules::Listener`, by name).
pub const DENIED_LISTENERS: [&str; 3] = ["http", "tcp", "admin"];

/// Connections refused by `--allow-cidr`/`--deny-cidr`, by rule label (or
/// "not allowed"), each by listener (`http`, `tcp`, `admin`, in that
/// order). A rule removed by a reload keeps its counts, so they never go
/// backwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Denied(std::collections::BTreeMap<String, [u64; 3]>);

impl Denied {
    /// Counts one refusal; false when the label table is full (the refusal
    /// is then counted only in the total).
    pub fn count(&mut self, label: &str, listener: usize) -> bool {
        debug_assert!(listener < 3);
        if let Some(c) = self.0.get_mut(label) {
            c[listener] += 1;
            return true;
        }
        if self.0.len() >= DENIED_LABELS_MAX {
            return false;
        }
        let mut c = [0; 3];
        c[listener] = 1;
        self.0.insert(label.to_string(), c);
        true
    }

    fn add(&mut self, o: &Denied) {
        for (label, counts) in &o.0 {
            let mine = self.0.entry(label.clone()).or_default();
            for (a, b) in mine.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }

    /// (rule label, listener index, count) for every nonzero count.
    pub fn rows(&self) -> impl Iterator<Item = (&str, usize, u64)> + '_ {
        self.0.iter().flat_map(|(label, counts)| {
            counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(move |(i, &n)| (label.as_str(), i, n))
        })
    }
}

/// One shard's live metrics. Not `Send`: it lives inside the shard.
pub struct ShardMetrics {
    hist: Vec<Histogram<u64>>,
    /// Error responses by method kind.
    errors: [u64; MethodKind::COUNT],
    pub counters: Counters,
    pub denied: Denied,
}

/// Levels a shard reports with its metrics (not counts since start): what it
/// holds at the moment of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Connections open (TCP, HTTP and stdio).
    pub connections: u64,
    /// Legacy HTTP sessions held (a TCP or stdio connection is its own
    /// session and is counted in `connections`).
    pub http_sessions: u64,
    /// Tasks held.
    pub tasks: u64,
    /// Keys held in this shard's part of the kv store.
    pub kv_keys: u64,
    /// Cross-core requests awaiting a reply: (from shard, to shard, count).
    pub mesh_pending: Vec<(usize, usize, u64)>,
    /// `--cluster`: shards that run a Redis client (1 per shard).
    pub cluster_shards: u64,
    /// Of those, shards whose Redis connection is up.
    pub cluster_shards_connected: u64,
    /// Live nodes in the cluster, as the shard last read them (merged: the
    /// largest).
    pub cluster_nodes_live: u64,
}

impl Gauges {
    fn add(&mut self, o: &Gauges) {
        self.connections += o.connections;
        self.http_sessions += o.http_sessions;
        self.tasks += o.tasks;
        self.kv_keys += o.kv_keys;
        self.mesh_pending.extend_from_slice(&o.mesh_pending);
        self.cluster_shards += o.cluster_shards;
        self.cluster_shards_connected += o.cluster_shards_connected;
        self.cluster_nodes_live = self.cluster_nodes_live.max(o.cluster_nodes_live);
    }
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardMetrics {
    pub fn new() -> Self {
        Self {
            hist: (0..MethodKind::COUNT).map(|_| new_histogram()).collect(),
            errors: [0; MethodKind::COUNT],
            counters: Counters::default(),
            denied: Denied::default(),
        }
    }

    /// Counts an error response to a message of `kind`.
    #[inline]
    pub fn record_error(&mut self, kind: MethodKind) {
        self.errors[kind as usize] += 1;
        self.counters.error_responses += 1;
    }

    #[inline]
    pub fn record(&mut self, kind: MethodKind, elapsed: Duration) {
        let us = elapsed.as_micros().min(HISTOGRAM_MAX_US as u128) as u64;
        self.hist[kind as usize].saturating_record(us);
    }

    pub fn snapshot(&self, shard: usize) -> Snapshot {
        Snapshot {
            shards: vec![shard],
            hist: self.hist.clone(),
            errors: self.errors,
            counters: self.counters.clone(),
            denied: self.denied.clone(),
            gauges: Gauges::default(),
        }
    }
}

/// A copy of one or more shards' metrics, sent to and merged on the main
/// thread.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub shards: Vec<usize>,
    pub hist: Vec<Histogram<u64>>,
    /// Error responses by method kind (indexed like `hist`).
    pub errors: [u64; MethodKind::COUNT],
    pub counters: Counters,
    pub denied: Denied,
    /// Filled in by the shard when it sends the snapshot.
    pub gauges: Gauges,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self {
            shards: Vec::new(),
            hist: (0..MethodKind::COUNT).map(|_| new_histogram()).collect(),
            errors: [0; MethodKind::COUNT],
            counters: Counters::default(),
            denied: Denied::default(),
            gauges: Gauges::default(),
        }
    }

    pub fn merge(&mut self, other: &Snapshot) {
        self.shards.extend_from_slice(&other.shards);
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            // Same bounds on both sides, so adding cannot fail.
            a.add(b).expect("histograms share bounds");
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        self.counters.add(&other.counters);
        self.denied.add(&other.denied);
        self.gauges.add(&other.gauges);
    }

    /// Messages recorded across all kinds.
    pub fn messages(&self) -> u64 {
        self.hist.iter().map(|h| h.len()).sum()
    }

    /// The activity between `earlier` and `self` (both from the same shard).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = self.clone();
        for (a, b) in d.hist.iter_mut().zip(&earlier.hist) {
            // `earlier` is a prefix of `self`, so every count is >= its own.
            if a.subtract(b).is_err() {
                a.reset();
            }
        }
        d
    }

    /// All kinds merged into one histogram.
    pub fn all_methods(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for x in &self.hist {
            h.add(x).expect("histograms share bounds");
        }
        h
    }

    /// The multi-line report printed when the server stops.
    pub fn summary(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tessera summary: {} messages in {:.1} s on {} shard(s) ({:.0} msg/s); service time in µs",
            self.messages(),
            secs,
            self.shards.len(),
            self.messages() as f64 / secs
        );
        let _ = writeln!(
            s,
            "  {:<16} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "method", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        for kind in MethodKind::ALL {
            let h = &self.hist[kind as usize];
            if h.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "  {:<16} {:>12} {:>8.1} {:>8} {:>8} {:>8} {:>9} {:>9}",
                kind.name(),
                h.len(),
                h.mean(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        let nonzero: Vec<String> = self
            .counters
            .rows()
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !nonzero.is_empty() {
            let _ = writeln!(s, "  counters: {}", nonzero.join(" "));
        }
        s
    }
}

/// One `--stats-interval` line: per-shard and total throughput and latency
/// over the last interval.
pub fn interval_line(
    uptime: Duration,
    interval: Duration,
    per_shard: &[(usize, Snapshot)],
) -> String {
    let secs = interval.as_secs_f64().max(1e-9);
    let mut total = Snapshot::empty();
    let mut s = format!("stats t={:.0}s", uptime.as_secs_f64());
    let mut column = |label: String, h: Histogram<u64>| {
        let _ = write!(
            s,
            " | {label}: {:.0} msg/s p50={}us p99={}us",
            h.len() as f64 / secs,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99)
        );
    };
    for (core, d) in per_shard {
        column(format!("core {core}"), d.all_methods());
        total.merge(d);
    }
    column("total".into(), total.all_methods());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_kept_by_label_and_listener_up_to_the_bound_and_merge() {
        let mut d = Denied::default();
        assert!(d.count("deny 10.0.0.0/8", 1));
        assert!(d.count("deny 10.0.0.0/8", 1));
        assert!(d.count("deny 10.0.0.0/8", 0));
        for i in 1..DENIED_LABELS_MAX {
            assert!(d.count(&format!("rule {i}"), 2));
        }
        assert!(!d.count("one too many", 2), "past the bound");
        assert!(d.count("rule 1", 2), "a known label still counts");
        let mut merged = Snapshot::empty();
        let mut one = Snapshot::empty();
        one.denied = d.clone();
        merged.merge(&one);
        merged.merge(&one);
        let rows: Vec<_> = merged
            .denied
            .rows()
            .filter(|r| r.0 == "deny 10.0.0.0/8")
            .collect();
        assert_eq!(rows, [("deny 10.0.0.0/8", 0, 2), ("deny 10.0.0.0/8", 1, 4)]);
        assert_eq!(merged.denied.0.len(), DENIED_LABELS_MAX);
    }

    #[test]
    fn merge_and_interval_difference() {
        let mut a = ShardMetrics::new();
        a.record(MethodKind::Ping, Duration::from_micros(10));
        let first = a.snapshot(0);
        a.record(MethodKind::Ping, Duration::from_micros(30));
        a.counters.error_responses += 2;
        let second = a.snapshot(0);
        let d = second.since(&first);
        assert_eq!(d.hist[MethodKind::Ping as usize].len(), 1);
        assert_eq!(d.hist[MethodKind::Ping as usize].max(), 30);

        let mut b = ShardMetrics::new();
        b.record(MethodKind::ToolsCall, Duration::from_micros(5));
        let mut total = Snapshot::empty();
        total.merge(&second);
        total.merge(&b.snapshot(1));
        assert_eq!(total.messages(), 3);
        assert_eq!(total.counters.error_responses, 2);
        let text = total.summary(Duration::from_secs(1));
        assert!(text.contains("tools/call"), "{text}");
        assert!(text.contains("error_responses=2"), "{text}");
    }
}
