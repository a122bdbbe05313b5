//! `--admin ADDR`: `/metrics` read by a real Prometheus text-format parser,
//! `/healthz`, `/readyz`, against the real binary.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[test]
fn metrics_health_and_readiness() {
    let mut server = Server::start(&["--admin", "127.0.0.1:0"]);
    let addr = admin_addr(&mut server);
    let mut c = server.connect();
    c.initialize();
    for i in 0..5 {
        let r = c.call_tool("echo", json!({"text": format!("m{i}")}));
        assert!(r["result"].is_object(), "{r}");
    }
    let r = c.request(
        "tools/call",
        json!({"name": "no-such-tool", "arguments": {}}),
    );
    assert!(r["error"].is_object(), "{r}");

    // Shards publish every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = scrape(&addr);
        if value(&s, "tessera_requests_total", &[("method", "tools/call")]) >= 6.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "tools/call never reached 6");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        value(
            &s,
            "tessera_request_errors_total",
            &[("method", "tools/call")]
        ) >= 1.0
    );
    assert!(value(&s, "tessera_error_responses_total", &[]) >= 1.0);
    assert!(value(&s, "tessera_connections", &[]) >= 1.0);
    assert!(value(&s, "tessera_connections_opened_total", &[]) >= 1.0);
    let shards = s
        .samples
        .iter()
        .filter(|x| x.metric == "tessera_shard_up")
        .count();
    assert!(shards >= 1);
    assert_eq!(
        value(&s, "tessera_shard_up", &[]),
        shards as f64,
        "every shard up"
    );
    // The latency histogram of tools/call: cumulative buckets ending at the count.
    let hist = s
        .samples
        .iter()
        .find_map(|x| match &x.value {
            prometheus_parse::Value::Histogram(h)
                if x.metric == "tessera_request_duration_seconds"
                    && x.labels.get("method") == Some("tools/call") =>
            {
                Some(h.clone())
            }
            _ => None,
        })
        .expect("tools/call histogram");
    let counts: Vec<f64> = hist.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(*counts.last().unwrap() >= 6.0, "{counts:?}");
    if shards > 1 {
        assert!(
            s.samples.iter().any(|x| x.metric == "tessera_mesh_pending"),
            "mesh pairs are reported"
        );
    }

    // Every series the shipped Grafana dashboard queries exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
    )
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let (_, text) = get(&addr, "GET", "/metrics");
    for name in dashboard.split("tessera_").skip(1).map(|rest| {
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        format!("tessera_{}", &rest[..end])
    }) {
        let base = name.trim_end_matches("_bucket");
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }

    assert_eq!(get(&addr, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&addr, "GET", "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(&addr, "GET", "/nope").0, 404);
    assert_eq!(get(&addr, "POST", "/metrics").0, 405);
    let (status, body) = get(&addr, "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""));
}

#[test]
fn counters_survive_a_shard_restart_and_restarts_are_counted() {
    let cores = allowed_cores();
    if cores.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let list = format!("{},{}", cores[0], cores[1]);
    let mut server = Server::start(&[
        "--cores",
        &list,
        "--admin",
        "127.0.0.1:0",
        "--chaos-kill-shard-every",
        "1500ms",
    ]);
    let addr = admin_addr(&mut server);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut best = 0.0f64;
    let mut restarts = 0.0;
    while restarts < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no restarts counted:\n{}",
            server.stderr()
        );
        // New connections land on whichever shard is up.
        if let Ok(mut c) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut c = server.connect();
            c.initialize();
            c
        })) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.call_tool("echo", json!({"text": "x"}))
            }));
        }
        let s = scrape(&addr);
        let init = value(&s, "tessera_requests_total", &[("method", "initialize")]);
        assert!(init >= best, "counter went backwards: {best} -> {init}");
        best = init;
        restarts = value(&s, "tessera_shard_restarts_total", &[]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(best >= 1.0);
}
