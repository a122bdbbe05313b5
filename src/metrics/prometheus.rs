//! Prometheus text exposition (format 0.0.4) of the merged shard metrics, for
//! the admin endpoint's `/metrics`. Pure: the admin transport hands in a view
//! and gets bytes back.
//!
//! Series (all merged across shards unless labelled):
//! - `tessera_requests_total{method}` and `tessera_request_errors_total{method}`
//! - `tessera_request_duration_seconds{method}`: histogram of service time
//!   (parse to response encoded), from the shards' HdrHistograms
//! - `tessera_<counter>_total` for every shard counter (limit hits, restarts,
//!   mesh events; see `metrics::Counters`)
//! - `tessera_connections_denied_by_rule_total{listener,rule}`: peers refused
//!   at accept by `--allow-cidr`/`--deny-cidr` (`metrics::Denied`)
//! - gauges `tessera_connections`, `tessera_http_sessions`, `tessera_tasks`,
//!   `tessera_kv_keys`, `tessera_mesh_pending{from,to}` (cross-core requests
//!   awaiting a reply, per shard pair); with `--cluster`
//!   `tessera_cluster_shards`, `tessera_cluster_shards_connected`,
//!   `tessera_cluster_nodes_live`
//! - per shard: `tessera_shard_up{shard,core}`,
//!   `tessera_shard_restarts_total{shard,core}`; `tessera_uptime_seconds`

use std::fmt::Write as _;
use std::time::Duration;

use super::{MethodKind, Snapshot};

/// Histogram bucket bounds in seconds; the shards resolve microseconds.
pub const BUCKETS_S: [f64; 17] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One shard as the main thread sees it.
#[derive(Clone, Debug)]
pub struct ShardState {
    pub shard: usize,
    pub core: usize,
    /// Accepting (reported ready and not dead or stopping).
    pub up: bool,
    pub restarts: u64,
}

/// Renders the metrics: `merged` is every shard's latest snapshot plus the
/// final snapshots of executors that died (so counters never go backwards).
pub fn render(merged: &Snapshot, shards: &[ShardState], uptime: Duration) -> String {
    let mut s = String::with_capacity(16 * 1024);
    header(
        &mut s,
        "tessera_requests_total",
        "counter",
        "Messages handled, by method.",
    );
    for kind in MethodKind::ALL {
        let _ = writeln!(
            s,
            "tessera_requests_total{{method=\"{}\"}} {}",
            kind.name(),
            merged.hist[kind as usize].len()
        );
    }
    header(
        &mut s,
        "tessera_request_errors_total",
        "counter",
        "JSON-RPC error responses, by method.",
    );
    for kind in MethodKind::ALL {
        let _ = writeln!(
            s,
            "tessera_request_errors_total{{method=\"{}\"}} {}",
            kind.name(),
            merged.errors[kind as usize]
        );
    }
    header(
        &mut s,
        "tessera_request_duration_seconds",
        "histogram",
        "Service time from parse to response, by method (microsecond resolution).",
    );
    for kind in MethodKind::ALL {
        let h = &merged.hist[kind as usize];
        let name = kind.name();
        for le in BUCKETS_S {
            let le_us = (le * 1e6).round() as u64;
            let n = if h.is_empty() {
                0
            } else {
                h.count_between(0, le_us)
            };
            let _ = writeln!(
                s,
                "tessera_request_duration_seconds_bucket{{method=\"{name}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "tessera_request_duration_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {}",
            h.len()
        );
        let sum_s = if h.is_empty() {
            0.0
        } else {
            h.mean() * h.len() as f64 / 1e6
        };
        let _ = writeln!(
            s,
            "tessera_request_duration_seconds_sum{{method=\"{name}\"}} {sum_s}"
        );
        let _ = writeln!(
            s,
            "tessera_request_duration_seconds_count{{method=\"{name}\"}} {}",
            h.len()
        );
    }
    for (name, value) in merged.counters.rows() {
        let metric = format!("tessera_{name}_total");
        header(
            &mut s,
            &metric,
            "counter",
            &format!("Shard counter {name}."),
        );
        let _ = writeln!(s, "{metric} {value}");
    }
    header(
        &mut s,
        "tessera_connections_denied_by_rule_total",
        "counter",
        "Connections refused at accept by an --allow-cidr/--deny-cidr rule, by listener and rule.",
    );
    for (rule, listener, n) in merged.denied.rows() {
        let listener = super::DENIED_LISTENERS[listener];
        let _ = writeln!(
            s,
            "tessera_connections_denied_by_rule_total{{listener=\"{listener}\",rule=\"{rule}\"}} {n}"
        );
    }
    let g = &merged.gauges;
    for (metric, help, value) in [
        ("tessera_connections", "Connections open.", g.connections),
        (
            "tessera_http_sessions",
            "Legacy HTTP sessions held (TCP and stdio connections are their own sessions).",
            g.http_sessions,
        ),
        ("tessera_tasks", "Tasks held.", g.tasks),
        ("tessera_kv_keys", "Keys in the kv store.", g.kv_keys),
        (
            "tessera_cluster_shards",
            "Shards running a Redis client (--cluster).",
            g.cluster_shards,
        ),
        (
            "tessera_cluster_shards_connected",
            "Shards whose Redis connection is up.",
            g.cluster_shards_connected,
        ),
        (
            "tessera_cluster_nodes_live",
            "Live cluster nodes (heartbeat key present), this one included.",
            g.cluster_nodes_live,
        ),
    ] {
        header(&mut s, metric, "gauge", help);
        let _ = writeln!(s, "{metric} {value}");
    }
    header(
        &mut s,
        "tessera_mesh_pending",
        "gauge",
        "Cross-core requests awaiting a reply, per shard pair.",
    );
    let mut pairs = g.mesh_pending.clone();
    pairs.sort_unstable();
    for (from, to, n) in pairs {
        let _ = writeln!(s, "tessera_mesh_pending{{from=\"{from}\",to=\"{to}\"}} {n}");
    }
    header(
        &mut s,
        "tessera_shard_up",
        "gauge",
        "1 while the shard accepts.",
    );
    for st in shards {
        let _ = writeln!(
            s,
            "tessera_shard_up{{shard=\"{}\",core=\"{}\"}} {}",
            st.shard,
            st.core,
            u8::from(st.up)
        );
    }
    header(
        &mut s,
        "tessera_shard_restarts_total",
        "counter",
        "Executor restarts after a shard died.",
    );
    for st in shards {
        let _ = writeln!(
            s,
            "tessera_shard_restarts_total{{shard=\"{}\",core=\"{}\"}} {}",
            st.shard, st.core, st.restarts
        );
    }
    header(
        &mut s,
        "tessera_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(s, "tessera_uptime_seconds {:.3}", uptime.as_secs_f64());
    s
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut m = ShardMetrics::new();
        for us in [5u64, 30, 30, 700, 20_000] {
            m.record(MethodKind::ToolsCall, Duration::from_micros(us));
        }
        m.record_error(MethodKind::ToolsCall);
        let text = render(&m.snapshot(0), &[], Duration::from_secs(1));
        let bucket = |le: &str| -> u64 {
            let key = format!(
                "tessera_request_duration_seconds_bucket{{method=\"tools/call\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .unwrap_or_else(|| panic!("no {key}"))
                .parse()
                .unwrap()
        };
        assert_eq!(bucket("0.00001"), 1);
        assert_eq!(bucket("0.00005"), 3);
        assert_eq!(bucket("0.001"), 4);
        assert_eq!(bucket("0.025"), 5);
        assert_eq!(bucket("+Inf"), 5);
        assert!(text.contains("tessera_requests_total{method=\"tools/call\"} 5\n"));
        assert!(text.contains("tessera_request_errors_total{method=\"tools/call\"} 1\n"));
        assert!(text.contains("tessera_error_responses_total 1\n"));
    }
}
