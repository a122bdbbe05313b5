//! `--cluster`: several real tessera processes on one real Valkey server
//! (tests/it/valkey.rs), checked through `tessera cluster status`, the
//! admin endpoint and MCP requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::valkey::Valkey;

/// A cluster secret file, one per test.
fn secret_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cluster-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("secret");
    std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
    f
}

/// A node of the cluster on `valkey`: HTTP and admin on free ports.
fn node(valkey: &Valkey, secret: &Path, id: &str, cores: &str, extra: &[&str]) -> Server {
    let url = valkey.url();
    let mut args = vec![
        "--admin",
        "127.0.0.1:0",
        "--cores",
        cores,
        "--cluster",
        &url,
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--node-id",
        id,
        "--cluster-heartbeat-ttl-ms",
        "1500",
        "--cluster-command-timeout-ms",
        "500",
        "--cluster-reconnect-max-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    Server::start_http(&args)
}

/// `tessera cluster status --json` against `valkey`.
fn status(valkey: &Valkey) -> Vec<Value> {
    let out = Command::new(tessera_bin())
        .args(["cluster", "status", "--cluster", &valkey.url(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    doc["nodes"].as_array().expect("nodes").clone()
}

fn find<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["id"] == id)
}

/// Polls `check` every 50 ms for up to `within`; true once it holds.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one_core() -> String {
    allowed_cores()[0].to_string()
}

fn all_cores() -> String {
    let c = allowed_cores();
    c.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// A stateless (2026-07-28) tools/call of `echo`.
fn modern_echo(server: &Server, text: &str) -> HttpResp {
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":text},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    modern_call(server, None, "echo", &body)
}

#[test]
fn nodes_register_and_status_lists_them_live_then_gone() {
    let valkey = Valkey::start();
    let secret = secret_file("status");
    let a = node(&valkey, &secret, "alpha", &one_core(), &[]);
    let mut b = node(&valkey, &secret, "beta", &all_cores(), &[]);
    let shards_b = allowed_cores().len() as u64;
    let mut nodes = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            nodes = status(&valkey);
            ["alpha", "beta"]
                .iter()
                .all(|id| find(&nodes, id).is_some_and(|n| n["live"] == true))
        }),
        "both nodes live: {nodes:?}"
    );
    let alpha = find(&nodes, "alpha").unwrap();
    let beta = find(&nodes, "beta").unwrap();
    assert_eq!(alpha["advertise"], a.http_addr.unwrap().to_string());
    assert_eq!(beta["advertise"], b.http_addr.unwrap().to_string());
    assert_eq!(alpha["shards"], 1);
    assert_eq!(beta["shards"], shards_b);
    assert!(eventually(Duration::from_secs(10), || {
        let n = status(&valkey);
        find(&n, "beta")
            .is_some_and(|b| b["sessions"].as_object().unwrap().len() as u64 == shards_b)
    }));

    // The admin endpoint of each node sees the other.
    let mut a = a;
    let admin_a = admin_addr(&mut a);
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_a), "tessera_cluster_nodes_live", &[]) == 2.0
    }));
    assert_eq!(get(&admin_a, "GET", "/readyz").0, 200);

    // A clean stop leaves at once: no TTL to wait for.
    assert!(b.stop_with(libc::SIGTERM).success());
    let n = status(&valkey);
    assert_eq!(
        find(&n, "beta").map(|b| b["live"].clone()),
        Some(json!(false)),
        "{n:?}"
    );
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_a), "tessera_cluster_nodes_live", &[]) == 1.0
    }));
}

#[test]
fn a_node_that_loses_redis_keeps_serving_stateless_requests_and_recovers() {
    let mut valkey = Valkey::start();
    let port = valkey.port;
    let secret = secret_file("outage");
    let mut a = node(&valkey, &secret, "solo", &all_cores(), &[]);
    let admin = admin_addr(&mut a);
    assert!(eventually(Duration::from_secs(10), || get(
        &admin, "GET", "/readyz"
    )
    .0 == 200));

    // Stateless requests never touch Redis.
    let before = scrape(&admin);
    for i in 0..50 {
        let r = modern_echo(&a, &format!("m{i}"));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains(&format!("m{i}")));
    }
    // Shards report every second.
    let calls = |s: &prometheus_parse::Scrape| {
        value(s, "tessera_requests_total", &[("method", "tools/call")])
    };
    let mut after = scrape(&admin);
    assert!(eventually(Duration::from_secs(10), || {
        after = scrape(&admin);
        calls(&after) >= calls(&before) + 50.0
    }));
    assert_eq!(
        value(&after, "tessera_redis_commands_request_total", &[]),
        0.0
    );
    assert!(value(&after, "tessera_redis_commands_heartbeat_total", &[]) > 0.0);

    // Redis goes away: not ready, but still serving what needs no cluster state.
    valkey.stop();
    assert!(
        eventually(Duration::from_secs(10), || get(&admin, "GET", "/readyz").0
            == 503),
        "not ready while Redis is down"
    );
    let r = modern_echo(&a, "during-outage");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("during-outage"));
    let down = scrape(&admin);
    assert_eq!(value(&down, "tessera_cluster_shards_connected", &[]), 0.0);

    // It comes back on the same address: reconnect, re-register, ready.
    let valkey = Valkey::try_on(port).expect("valkey restarts on its port");
    assert!(
        eventually(Duration::from_secs(15), || get(&admin, "GET", "/readyz").0
            == 200),
        "ready again after Redis returns; stderr:\n{}",
        a.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || {
        find(&status(&valkey), "solo").is_some_and(|n| n["live"] == true)
    }));
    let back = scrape(&admin);
    assert!(value(&back, "tessera_redis_reconnects_total", &[]) >= 1.0);
    assert!(value(&back, "tessera_redis_refused_total", &[]) >= 1.0);
    assert_eq!(
        value(&back, "tessera_redis_commands_request_total", &[]),
        0.0
    );
}

#[test]
fn cluster_settings_that_cannot_work_stop_startup_with_the_reason() {
    let secret = secret_file("settings");
    let short = secret.with_file_name("short");
    std::fs::write(&short, "tooshort").unwrap();
    let s = secret.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--http", "127.0.0.1:0", "--cluster", "redis://127.0.0.1:1"],
            "--cluster needs --cluster-secret-file",
        ),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--cluster",
                "redis://127.0.0.1:1",
                "--cluster-secret-file",
                short.to_str().unwrap(),
            ],
            "at least 16 are needed",
        ),
        (
            vec![
                "--tcp",
                "127.0.0.1:0",
                "--cluster",
                "redis://127.0.0.1:1",
                "--cluster-secret-file",
                s,
            ],
            "needs --http",
        ),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--cluster",
                "rediss://127.0.0.1:1",
                "--cluster-secret-file",
                s,
            ],
            "TLS to Redis is not supported",
        ),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--cluster",
                "redis://127.0.0.1:1",
                "--cluster-secret-file",
                s,
                "--node-id",
                "has space",
            ],
            "--node-id",
        ),
        (
            vec![
                "--http",
                "0.0.0.0:0",
                "--cluster",
                "redis://127.0.0.1:1",
                "--cluster-secret-file",
                s,
            ],
            "--cluster-advertise",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(tessera_bin())
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
}

#[test]
fn status_fails_cleanly_when_redis_is_unreachable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(tessera_bin())
        .args([
            "cluster",
            "status",
            "--cluster",
            &format!("redis://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster state unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
