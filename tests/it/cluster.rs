//! `--cluster`: several real tessera processes on one real Valkey server
//! (tests/it/valkey.rs), checked through `tessera cluster status`, the
//! admin endpoint and MCP requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::valkey::{RedisUrl, TlsRedis, Valkey, ValkeyCluster};

/// A cluster secret file, one per test.
fn secret_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cluster-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("secret");
    std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
    f
}

/// A node of the cluster on `valkey`: HTTP and admin on free ports.
fn node(valkey: &impl RedisUrl, secret: &Path, id: &str, cores: &str, extra: &[&str]) -> Server {
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

/// Nodes `ids` of one cluster, each ready (connected to Redis); with their
/// admin addresses.
fn ready_nodes(
    valkey: &impl RedisUrl,
    secret: &Path,
    ids: &[&str],
    cores: &str,
    extra: &[&str],
) -> (Vec<Server>, Vec<String>) {
    let mut nodes: Vec<Server> = ids
        .iter()
        .map(|id| node(valkey, secret, id, cores, extra))
        .collect();
    let admins: Vec<String> = nodes.iter_mut().map(admin_addr).collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            admins.iter().all(|a| get(a, "GET", "/readyz").0 == 200)
        }),
        "nodes {ids:?} ready"
    );
    (nodes, admins)
}

/// `tessera cluster status --json` against `valkey`.
fn status(valkey: &impl RedisUrl) -> Vec<Value> {
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
    // Every shard reports its lost connection (each on its own tick).
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin), "tessera_cluster_shards_connected", &[]) == 0.0
    }));

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
    assert!(
        value(&back, "tessera_redis_refused_total", &[])
            + value(&back, "tessera_redis_timeouts_total", &[])
            >= 1.0,
        "the outage was counted: refused {} timed out {}",
        value(&back, "tessera_redis_refused_total", &[]),
        value(&back, "tessera_redis_timeouts_total", &[])
    );
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
            vec!["--http", "127.0.0.1:0", "--rate-limit-scope", "cluster"],
            "--rate-limit-scope cluster needs --cluster",
        ),
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
                "redis://127.0.0.1:1",
                "--cluster-secret-file",
                s,
                "--cluster-tls-ca-file",
                s,
            ],
            "is for a TLS URL",
        ),
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--cluster",
                "rediss://127.0.0.1:1",
                "--cluster-secret-file",
                s,
                "--cluster-tls-ca-file",
                s,
            ],
            "holds no certificate",
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

const CT: (&str, &str) = ("content-type", "application/json");
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const V: (&str, &str) = ("mcp-protocol-version", "2025-11-25");

/// A legacy session made on `server`; its id.
fn legacy_session(server: &Server) -> String {
    let r = legacy_post(
        server,
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{}},"clientInfo":{"name":"t","version":"1"}}}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").expect("session id").to_owned();
    let r = legacy_post(
        server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    sid
}

fn echo(id: u64, text: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}})
}

fn echoed(r: &HttpResp) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Sessions are written to Redis behind the request path; waits until the
/// owner's record of `sid` is there.
fn stored(valkey: &Valkey, sid: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        valkey
            .command(&["HGET", &format!("tessera:s:{{{sid}}}"), "owner"])
            .is_some_and(|r| r.starts_with('$') && !r.starts_with("$-1"))
    })
}

/// Session `sid`'s standalone SSE stream (`GET`), opened on `server`.
fn standalone_stream(server: &Server, sid: &str) -> HttpConn {
    let mut stream = server.http();
    stream.send(
        "GET",
        "/mcp",
        &[("accept", "text/event-stream"), V, ("mcp-session-id", sid)],
        None,
    );
    assert_eq!(stream.read_head().0, 200);
    stream
}

/// The next JSON-RPC message on an SSE stream (priming events and
/// keep-alives skipped).
fn next_message(stream: &mut HttpConn, what: &str) -> Value {
    stream
        .events()
        .find(|e| !e.comment && !e.data.is_empty())
        .unwrap_or_else(|| panic!("no {what}"))
        .json()
}

#[test]
fn a_session_is_served_from_any_node_and_outlives_its_owner() {
    let valkey = Valkey::start();
    let secret = secret_file("sessions");
    let (mut nodes, admins) = ready_nodes(&valkey, &secret, &["a", "b"], &all_cores(), &[]);
    let (b, mut a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let (admin_a, admin_b) = (admins[0].clone(), admins[1].clone());
    let sid = legacy_session(&a);
    assert!(sid.ends_with(".a"), "the id names its node: {sid}");

    // The owner serves it with no Redis command on the request path.
    for i in 0..20 {
        assert_eq!(
            echoed(&legacy_post(&a, Some(&sid), &echo(i, &format!("a{i}")))),
            format!("a{i}")
        );
    }
    assert!(stored(&valkey, &sid));
    // Node b holds nothing of it: it relays to a.
    for i in 0..5 {
        assert_eq!(
            echoed(&legacy_post(
                &b,
                Some(&sid),
                &echo(100 + i, &format!("b{i}"))
            )),
            format!("b{i}")
        );
    }
    // Progress over SSE, relayed.
    let mut c = sleep_stream(&b, &sid, 200, 400);
    let events: Vec<SseEvent> = c
        .events()
        .filter(|e| !e.comment && !e.data.is_empty())
        .collect();
    let last = events.last().expect("events").json();
    assert_eq!(last["id"], 200, "{events:?}");
    let progress = events
        .iter()
        .filter(|e| e.json()["method"] == "notifications/progress")
        .count();
    assert!(progress >= 3, "{events:?}");
    let ids: Vec<String> = events.iter().filter_map(|e| e.id.clone()).collect();

    // On a, the owner: zero request-path Redis commands; on b, the relays.
    let calls = |s: &prometheus_parse::Scrape| {
        value(s, "tessera_requests_total", &[("method", "tools/call")])
    };
    assert!(eventually(Duration::from_secs(10), || calls(&scrape(
        &admin_a
    )) >= 26.0));
    let sa = scrape(&admin_a);
    assert_eq!(value(&sa, "tessera_redis_commands_request_total", &[]), 0.0);
    assert!(value(&sa, "tessera_redis_commands_background_total", &[]) > 0.0);
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_b), "tessera_cluster_relays_total", &[]) >= 6.0
    }));

    // A subscription made at the owner (written behind with its record).
    let sub = json!({"jsonrpc":"2.0","id":250,"method":"resources/subscribe","params":{"uri":"kv://survives"}});
    assert_eq!(legacy_post(&a, Some(&sid), &sub).status, 200);
    assert!(eventually(Duration::from_secs(10), || {
        valkey
            .command(&["HGET", &format!("tessera:s:{{{sid}}}"), "rec"])
            .is_some_and(|r| r.contains("kv://survives"))
    }));

    // kill -9 the owner; once its heartbeat expires, b takes the session
    // over: the stream replays from Redis after the Last-Event-ID, and the
    // session keeps working.
    a.stop_with(libc::SIGKILL);
    let killed = Instant::now();
    let resume_after = &ids[1];
    let mut replayed = Vec::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            match resume(&b, &sid, resume_after) {
                Some(events) => {
                    replayed = events;
                    true
                }
                None => false,
            }
        }),
        "b took the session over; stderr:\n{}",
        b.stderr()
    );
    let taken_ms = killed.elapsed().as_millis();
    let replayed_ids: Vec<String> = replayed.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(replayed_ids, ids[2..].to_vec(), "exactly the missed events");
    assert!(taken_ms < 2 * 1500 + 2000, "takeover took {taken_ms} ms");
    assert_eq!(
        echoed(&legacy_post(&b, Some(&sid), &echo(300, "after"))),
        "after"
    );
    // The subscription came along: a change made by another client reaches
    // the session's stream on its new owner.
    let mut stream = standalone_stream(&b, &sid);
    let other = legacy_session(&b);
    let set = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"survives","value":1}}});
    assert_eq!(legacy_post(&b, Some(&other), &set).status, 200);
    let update = next_message(&mut stream, "an update on the new owner");
    assert_eq!(update["params"]["uri"], "kv://survives", "{update}");
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_b), "tessera_cluster_takeovers_total", &[]) >= 1.0
    }));
    let owner = valkey
        .command(&["HGET", &format!("tessera:s:{{{sid}}}"), "owner"])
        .unwrap();
    assert!(owner.ends_with("\r\nb\r\n"), "{owner:?}");
}

#[test]
fn an_unknown_session_is_not_found_on_every_node_and_a_forged_relay_is_refused() {
    let valkey = Valkey::start();
    let secret = secret_file("forged");
    let (mut nodes, _) = ready_nodes(&valkey, &secret, &["a", "b"], &one_core(), &[]);
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let sid = legacy_session(&a);
    assert!(stored(&valkey, &sid));
    let unknown = format!("{}.a", "0".repeat(36));
    for n in [&a, &b] {
        let r = legacy_post(n, Some(&unknown), &echo(1, "x"));
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    }
    // Node-to-node requests without a valid proof are refused, even for a
    // session that exists.
    let b64 = "eyJ4IjoxfQ";
    for proof in ["", "v1 a 1 - AAAA", &format!("v1 a {} {b64} AAAA", 1)] {
        let r = b.http().request(
            "POST",
            "/mcp",
            &[
                CT,
                ACCEPT,
                V,
                ("mcp-session-id", &sid),
                ("x-tessera-relay", proof),
            ],
            Some(echo(2, "forged").to_string().as_bytes()),
        );
        assert_eq!(
            r.status,
            403,
            "proof {proof:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A DELETE through another node ends it everywhere.
    let r = b
        .http()
        .request("DELETE", "/mcp", &[V, ("mcp-session-id", &sid)], None);
    assert_eq!(r.status, 200);
    for n in [&a, &b] {
        let r = legacy_post(n, Some(&sid), &echo(3, "gone"));
        if r.status != 404 {
            eprintln!("A:\n{}\nB:\n{}", a.stderr(), b.stderr());
        }
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// Three nodes behind a real nginx doing round-robin with no affinity: the
/// official Python SDK's legacy session works though its requests land on
/// every node in turn.
#[test]
fn the_python_sdk_drives_a_legacy_session_through_a_round_robin_balancer() {
    let valkey = Valkey::start();
    let secret = secret_file("nginx");
    for extra in [&[][..], &["--fixtures", "conformance"][..]] {
        let (nodes, admins) =
            ready_nodes(&valkey, &secret, &["n1", "n2", "n3"], &one_core(), extra);
        let upstreams: Vec<_> = nodes.iter().map(|n| n.http_addr.unwrap()).collect();
        let lb = crate::nginx::Nginx::start("sdk", &upstreams);
        let url = format!("http://{}/mcp", lb.addr);
        let mode = if extra.is_empty() {
            "http"
        } else {
            "http-fixtures"
        };
        crate::interop_python::run_client(&[mode, "legacy", &url]);
        // The balancer spread the session's requests: nodes other than its
        // owner relayed some.
        let relaying = admins
            .iter()
            .filter(|a| value(&scrape(a), "tessera_cluster_relays_total", &[]) > 0.0)
            .count();
        assert!(
            eventually(Duration::from_secs(5), || {
                admins
                    .iter()
                    .filter(|a| value(&scrape(a), "tessera_cluster_relays_total", &[]) > 0.0)
                    .count()
                    >= 2
            }),
            "requests of one session reached several nodes ({relaying} relayed)"
        );
    }
}

/// `tessera-loadgen http --addr A --addr B` spreads one session's requests
/// over both nodes, per request: every request succeeds and both nodes
/// serve some.
#[test]
fn the_loadgen_spreads_a_sessions_requests_over_every_node() {
    let valkey = Valkey::start();
    let secret = secret_file("loadgen");
    let (mut nodes, admins) = ready_nodes(&valkey, &secret, &["a", "b"], &one_core(), &[]);
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let (admin_a, admin_b) = (admins[0].clone(), admins[1].clone());
    for era in ["legacy", "modern"] {
        let out = Command::new(loadgen_bin())
            .args(["http", "--era", era])
            .args(["--addr", &a.http_addr.unwrap().to_string()])
            .args(["--addr", &b.http_addr.unwrap().to_string()])
            .args([
                "--connections",
                "2",
                "--pipeline",
                "2",
                "--duration",
                "1s",
                "--warmup",
                "0s",
            ])
            .args(["--cores", &one_core()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{era}: {text}");
        assert!(
            text.contains(" 0 errors, 0 wrong, 0 missing"),
            "{era}: {text}"
        );
    }
    let calls = |admin: &str| {
        value(
            &scrape(admin),
            "tessera_requests_total",
            &[("method", "tools/call")],
        )
    };
    assert!(eventually(Duration::from_secs(10), || calls(&admin_a)
        > 0.0
        && calls(&admin_b) > 0.0));
    // Legacy requests that reached the node without the session were relayed.
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_a), "tessera_cluster_relays_total", &[])
            + value(&scrape(&admin_b), "tessera_cluster_relays_total", &[])
            > 0.0
    }));
}

/// kv keys live in Redis: a value set on one node is read on every node,
/// and a subscriber on one node hears about a change made on another.
#[test]
fn kv_is_shared_and_updates_reach_subscribers_on_every_node() {
    let valkey = Valkey::start();
    let secret = secret_file("kv");
    let (nodes, _) = ready_nodes(&valkey, &secret, &["k1", "k2", "k3"], &one_core(), &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let watcher = legacy_session(a);
    // The watcher's standalone stream, on its own node.
    let mut stream = standalone_stream(a, &watcher);
    let sub = json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"kv://shared"}});
    assert_eq!(legacy_post(a, Some(&watcher), &sub).status, 200);
    // Another client sets it on a third node.
    let writer = legacy_session(c);
    let set = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"shared","value":{"n":7}}}});
    let r = legacy_post(c, Some(&writer), &set);
    assert_eq!(
        r.json()["result"]["structuredContent"]["created"],
        true,
        "{r:?}"
    );
    let update = next_message(&mut stream, "an event on the watcher's stream");
    assert_eq!(update["method"], "notifications/resources/updated");
    assert_eq!(update["params"]["uri"], "kv://shared");
    // Every node reads the same value (kv_get, and resources/read).
    let reader = legacy_session(b);
    let get_it = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"kv_get","arguments":{"key":"shared"}}});
    for (n, sid) in [(a, &watcher), (b, &reader), (c, &writer)] {
        let r = legacy_post(n, Some(sid), &get_it);
        assert_eq!(
            r.json()["result"]["structuredContent"]["value"],
            json!({"n":7}),
            "{r:?}"
        );
    }
    let read =
        json!({"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"kv://shared"}});
    let r = legacy_post(b, Some(&reader), &read);
    assert_eq!(
        r.json()["result"]["contents"][0]["text"],
        "{\"n\":7}",
        "{r:?}"
    );
}

/// `--rate-limit-scope cluster`: one bucket per principal across nodes, so
/// alternating nodes does not multiply the limit; `node` scope does.
#[test]
fn a_cluster_wide_rate_limit_counts_requests_on_every_node() {
    let valkey = Valkey::start();
    let secret = secret_file("rate");
    let limit = ["--rate-limit-per-sec", "1", "--rate-limit-burst", "4"];
    for (scope, allowed_max) in [("cluster", 4 + 2), ("node", usize::MAX)] {
        let extra: Vec<&str> = limit
            .iter()
            .copied()
            .chain(["--rate-limit-scope", scope])
            .collect();
        let (ra, rb) = (format!("ra-{scope}"), format!("rb-{scope}"));
        let (nodes, _) = ready_nodes(&valkey, &secret, &[&ra, &rb], &one_core(), &extra);
        let (a, b) = (&nodes[0], &nodes[1]);
        let mut allowed = 0;
        let mut limited = 0;
        for i in 0..12 {
            let r = modern_echo(if i % 2 == 0 { a } else { b }, "r");
            match r.status {
                200 => allowed += 1,
                429 => {
                    limited += 1;
                    assert!(r.header("retry-after").is_some(), "{r:?}");
                }
                other => panic!(
                    "{scope}: HTTP {other}: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        if scope == "cluster" {
            // 4 in the burst, plus at most the refill during the loop.
            assert!(
                allowed <= allowed_max && limited >= 6,
                "{scope}: {allowed} allowed"
            );
        } else {
            // Each node has its own 4-deep bucket: 8 in all.
            assert!(
                allowed >= 8,
                "{scope}: {allowed} allowed, {limited} limited"
            );
        }
    }
}

/// A change of the offered set on one node (a tool that enables another)
/// reaches every node: their clients hear list_changed and list the tool.
#[test]
fn a_tool_enabled_on_one_node_is_offered_and_announced_on_every_node() {
    let valkey = Valkey::start();
    let secret = secret_file("lists");
    let (nodes, _) = ready_nodes(
        &valkey,
        &secret,
        &["l1", "l2"],
        &one_core(),
        &["--fixtures", "conformance"],
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    let listener = legacy_session(a);
    let mut stream = standalone_stream(a, &listener);
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}});
    let offered = |sid: &str, n: &Server| {
        legacy_post(n, Some(sid), &list).json()["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "test_dynamic_tool")
    };
    assert!(!offered(&listener, a));
    let other = legacy_session(b);
    let trigger = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"test_trigger_tool_change","arguments":{}}});
    let r = legacy_post(b, Some(&other), &trigger);
    assert_eq!(echoed(&r), "test_dynamic_tool enabled=true");
    let n = next_message(&mut stream, "an event on the listener's stream");
    assert_eq!(n["method"], "notifications/tools/list_changed", "{n}");
    assert!(
        offered(&listener, a),
        "node a offers the tool node b enabled"
    );
}

/// The same cross-node path reaches a modern (2026-07-28)
/// `subscriptions/listen` stream: kv_set through one node, the listener on
/// another hears it.
#[test]
fn a_modern_listen_stream_hears_a_change_made_on_another_node() {
    let valkey = Valkey::start();
    let secret = secret_file("listen");
    let (nodes, _) = ready_nodes(&valkey, &secret, &["m1", "m2"], &one_core(), &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let listen = json!({"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{
        "notifications":{"resourceSubscriptions":["kv://heard"]},"_meta":meta}});
    let mut stream = open_listen(a, &listen);
    // Changes are announced until the listener is registered: retry the
    // write until the stream carries the update.
    let set = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"heard","value":1},"_meta":meta}}).to_string();
    let writer = std::thread::spawn({
        let addr = b.http_addr.unwrap();
        move || {
            for _ in 0..20 {
                let r = HttpConn::open(addr).request(
                    "POST",
                    "/mcp",
                    &[
                        CT,
                        ("accept", "application/json"),
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", "kv_set"),
                    ],
                    Some(set.as_bytes()),
                );
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let heard = stream
        .events()
        .filter(|e| !e.comment && !e.data.is_empty())
        .map(|e| e.json())
        .find(|m| m["method"] == "notifications/resources/updated");
    writer.join().unwrap();
    let heard = heard.expect("the listen stream carried the update");
    assert_eq!(heard["params"]["uri"], "kv://heard", "{heard}");
}

/// The `_meta` of a modern request from a client that takes tasks.
fn tasks_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}}})
}

/// A modern request `method` named `name` (Mcp-Name) on `server`; its
/// JSON-RPC answer.
fn modern_rpc(server: &Server, method: &str, name: &str, mut params: Value) -> Value {
    params["_meta"] = tasks_meta();
    let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}).to_string();
    let r = server.http().request(
        "POST",
        "/mcp",
        &[
            CT,
            ("accept", "application/json"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
            ("mcp-name", name),
        ],
        Some(body.as_bytes()),
    );
    r.json()
}

/// A modern task of `slow_compute` made on `server`; its id.
fn modern_task(server: &Server, seconds: f64) -> String {
    let r = modern_rpc(
        server,
        "tools/call",
        "slow_compute",
        json!({"name":"slow_compute","arguments":{"seconds":seconds,"label":"m"}}),
    );
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    r["result"]["taskId"].as_str().unwrap().to_owned()
}

fn modern_status(server: &Server, task: &str) -> Value {
    modern_rpc(server, "tasks/get", task, json!({"taskId": task}))
}

/// A legacy task of `slow_compute` made in session `sid`; its id.
fn legacy_task(server: &Server, sid: &str, id: u64, seconds: f64) -> String {
    let r = legacy_post(
        server,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"slow_compute","arguments":{"seconds":seconds,"label":"l"},"task":{"ttl":60000}}}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r:?}"))
        .to_owned()
}

fn legacy_rpc(server: &Server, sid: &str, method: &str, params: Value) -> Value {
    let r = legacy_post(
        server,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":9,"method":method,"params":params}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// What Redis holds of a task (`field` of hash `key`), once it says
/// `status`.
fn stored_as(valkey: &Valkey, key: &str, field: &str, status: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        valkey
            .command(&["HGET", key, field])
            .is_some_and(|r| r.contains(&format!("\"status\":\"{status}\"")))
    })
}

#[test]
fn tasks_are_served_from_any_node_and_outlive_their_maker() {
    let valkey = Valkey::start();
    let secret = secret_file("tasks");
    let fixtures = ["--fixtures", "conformance"];
    let (mut nodes, admins) = ready_nodes(&valkey, &secret, &["a", "b"], &all_cores(), &fixtures);
    let (b, mut a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let admin_b = admins[1].clone();

    // Modern tasks made on a, served through b while a lives: relayed.
    let done = modern_task(&a, 0.1);
    assert!(done.ends_with(".a"), "the id names its node: {done}");
    let running = modern_task(&a, 60.0);
    let doomed = modern_task(&a, 60.0);
    let mut status = Value::Null;
    assert!(eventually(Duration::from_secs(10), || {
        status = modern_status(&b, &done);
        status["result"]["status"] == "completed"
    }));
    assert_eq!(
        status["result"]["result"]["structuredContent"]["label"], "m",
        "{status}"
    );
    assert_eq!(modern_status(&b, &running)["result"]["status"], "working");
    let ack = modern_rpc(&b, "tasks/cancel", &doomed, json!({"taskId": doomed}));
    assert_eq!(ack["result"]["resultType"], "complete", "{ack}");
    assert_eq!(modern_status(&a, &doomed)["result"]["status"], "cancelled");
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(&admin_b), "tessera_cluster_relays_total", &[]) >= 3.0
    }));

    // Legacy tasks belong to their session, made on a.
    let sid = legacy_session(&a);
    let l_done = legacy_task(&a, &sid, 1, 0.1);
    let l_running = legacy_task(&a, &sid, 2, 60.0);
    let result = legacy_rpc(&a, &sid, "tasks/result", json!({"taskId": l_done}));
    let text = result["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"))
        .to_owned();

    // Written behind to Redis: modern tasks under their id, legacy ones in
    // their session's hash.
    assert!(stored_as(
        &valkey,
        &format!("tessera:t:{{{done}}}"),
        "rec",
        "completed"
    ));
    assert!(stored_as(
        &valkey,
        &format!("tessera:t:{{{running}}}"),
        "rec",
        "working"
    ));
    let session_key = format!("tessera:s:{{{sid}}}");
    assert!(stored_as(
        &valkey,
        &session_key,
        &format!("t:{l_done}"),
        "completed"
    ));
    assert!(stored_as(
        &valkey,
        &session_key,
        &format!("t:{l_running}"),
        "working"
    ));

    // kill -9 the maker: b takes the tasks over once a's heartbeat expires.
    a.stop_with(libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(15), || {
            modern_status(&b, &done)["result"]["status"] == "completed"
        }),
        "b serves a's finished task; stderr:\n{}",
        b.stderr()
    );
    let lost = modern_status(&b, &running);
    assert_eq!(lost["result"]["status"], "failed", "{lost}");
    assert!(
        lost["result"]["statusMessage"]
            .as_str()
            .unwrap()
            .contains("stopped"),
        "{lost}"
    );
    assert_eq!(lost["result"]["error"]["code"], -32603, "{lost}");
    // The session came along with its tasks.
    let got = legacy_rpc(&b, &sid, "tasks/get", json!({"taskId": l_done}));
    assert_eq!(got["result"]["status"], "completed", "{got}");
    let again = legacy_rpc(&b, &sid, "tasks/result", json!({"taskId": l_done}));
    assert_eq!(again["result"]["content"][0]["text"], text.as_str());
    let failed = legacy_rpc(&b, &sid, "tasks/get", json!({"taskId": l_running}));
    assert_eq!(failed["result"]["status"], "failed", "{failed}");
    let list = legacy_rpc(&b, &sid, "tasks/list", json!({}));
    assert_eq!(
        list["result"]["tasks"].as_array().unwrap().len(),
        2,
        "{list}"
    );
    // Redis says b owns them now.
    let owner = valkey
        .command(&["HGET", &format!("tessera:t:{{{running}}}"), "owner"])
        .unwrap();
    assert!(owner.ends_with("\r\nb\r\n"), "{owner:?}");
    assert!(stored_as(
        &valkey,
        &format!("tessera:t:{{{running}}}"),
        "rec",
        "failed"
    ));
    assert!(eventually(Duration::from_secs(10), || {
        value(
            &scrape(&admin_b),
            "tessera_cluster_tasks_adopted_total",
            &[],
        ) >= 4.0
    }));
    // A task no node ever made is unknown everywhere.
    let unknown = format!("0000-{}.a", "0".repeat(24));
    let r = modern_status(&b, &unknown);
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

/// A modern `subscriptions/listen` stream on `server` following `tasks`;
/// returned after its acknowledgement (the listener is registered then).
fn listen_for_tasks(server: &Server, tasks: &[&str]) -> (HttpConn, Value) {
    let listen = json!({"jsonrpc":"2.0","id":"l1","method":"subscriptions/listen","params":{
        "notifications":{"io.modelcontextprotocol/tasks":{"taskIds":tasks}},"_meta":tasks_meta()}});
    let mut stream = open_listen(server, &listen);
    let ack = next_message(&mut stream, "the acknowledgement");
    (stream, ack)
}

#[test]
fn listen_streams_on_every_node_hear_a_tasks_status_changes() {
    let valkey = Valkey::start();
    let secret = secret_file("task-listen");
    let fixtures = ["--fixtures", "conformance"];
    let (nodes, _) = ready_nodes(&valkey, &secret, &["a", "b"], &all_cores(), &fixtures);
    let (a, b) = (&nodes[0], &nodes[1]);
    let task = modern_task(a, 2.0);
    let mut streams = Vec::new();
    for n in [a, b] {
        let (stream, ack) = listen_for_tasks(n, &[&task]);
        assert_eq!(
            ack["method"], "notifications/subscriptions/acknowledged",
            "{ack}"
        );
        assert_eq!(
            ack["params"]["notifications"]["io.modelcontextprotocol/tasks"]["taskIds"][0],
            task.as_str(),
            "{ack}"
        );
        streams.push(stream);
    }
    for (stream, on) in streams.iter_mut().zip(["a", "b"]) {
        let status = next_message(stream, "a task status");
        assert_eq!(
            status["method"], "notifications/tasks/status",
            "on {on}: {status}"
        );
        assert_eq!(status["params"]["taskId"], task.as_str());
        assert_eq!(status["params"]["status"], "completed", "on {on}: {status}");
        assert_eq!(
            status["params"]["result"]["structuredContent"]["label"], "m",
            "on {on}: {status}"
        );
        assert_eq!(
            status["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "l1",
            "{status}"
        );
    }
}

/// A `subscriptions/listen` request sent to `server`; its stream, after
/// the response head.
fn open_listen(server: &Server, listen: &Value) -> HttpConn {
    let mut stream = server.http();
    stream.send(
        "POST",
        "/mcp",
        &[
            CT,
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "subscriptions/listen"),
        ],
        Some(listen.to_string().as_bytes()),
    );
    assert_eq!(stream.read_head().0, 200);
    stream
}

/// With write-through, every event a client saw from a session's owner is
/// in Redis when the owner dies: a resume through another node replays
/// each of them. (Written behind, the last events seen are often not.)
#[test]
fn with_sync_events_a_resume_after_kill_9_replays_every_event_seen() {
    let valkey = Valkey::start();
    let secret = secret_file("sync");
    let sync = ["--cluster-sync-events"];
    let (mut nodes, _) = ready_nodes(&valkey, &secret, &["a", "b"], &one_core(), &sync);
    let (b, mut a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let sid = legacy_session(&a);
    assert!(stored(&valkey, &sid));
    // A plain call still answers with JSON.
    assert_eq!(
        echoed(&legacy_post(&a, Some(&sid), &echo(1, "plain"))),
        "plain"
    );
    let mut c = sleep_stream(&a, &sid, 2, 2000);
    let mut seen = Vec::new();
    let mut priming = None;
    for e in c.events() {
        if e.comment {
            continue;
        }
        if e.data.is_empty() {
            priming = e.id.clone();
            continue;
        }
        seen.push(e.id.clone().expect("an event id"));
        if seen.len() == 4 {
            break;
        }
    }
    // At once, while the owner is still emitting.
    a.stop_with(libc::SIGKILL);
    let priming = priming.expect("a priming event");
    let mut replayed = Vec::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            match resume(&b, &sid, &priming) {
                Some(events) => {
                    replayed = events.into_iter().filter_map(|e| e.id).collect();
                    true
                }
                None => false,
            }
        }),
        "b took the session over; stderr:\n{}",
        b.stderr()
    );
    for id in &seen {
        assert!(
            replayed.contains(id),
            "event {id} seen but not replayed: {replayed:?}"
        );
    }
}

/// A Redis Cluster (three Valkey primaries) given as a seed list: every
/// script touches one slot (keys are hash-tagged), so sessions, their
/// takeover, kv and announcements work as on one server.
#[test]
fn a_redis_cluster_seed_list_serves_sessions_kv_and_takeovers() {
    let rc = ValkeyCluster::start(3);
    let secret = secret_file("redis-cluster");
    let (mut nodes, _) = ready_nodes(&rc, &secret, &["a", "b"], &one_core(), &[]);
    let (b, mut a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let listed = status(&rc);
    for id in ["a", "b"] {
        assert_eq!(find(&listed, id).expect(id)["live"], true, "{listed:?}");
    }
    let sid = legacy_session(&a);
    // Its record is on whichever primary owns its slot.
    assert!(eventually(Duration::from_secs(10), || {
        rc.nodes.iter().any(|v| {
            v.command(&["HGET", &format!("tessera:s:{{{sid}}}"), "owner"])
                .is_some_and(|r| r.starts_with("$1\r\na"))
        })
    }));
    assert_eq!(
        echoed(&legacy_post(&b, Some(&sid), &echo(1, "relayed"))),
        "relayed"
    );
    // kv through one node, watched and read on the other.
    let mut stream = standalone_stream(&a, &sid);
    let sub = json!({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"kv://slots"}});
    assert_eq!(legacy_post(&a, Some(&sid), &sub).status, 200);
    let writer = legacy_session(&b);
    let set = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"slots","value":16384}}});
    assert_eq!(legacy_post(&b, Some(&writer), &set).status, 200);
    let update = next_message(&mut stream, "the kv update");
    assert_eq!(update["params"]["uri"], "kv://slots", "{update}");
    let get_it = json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"kv_get","arguments":{"key":"slots"}}});
    let r = legacy_post(&a, Some(&sid), &get_it);
    assert_eq!(
        r.json()["result"]["structuredContent"]["value"],
        16384,
        "{r:?}"
    );
    drop(stream);
    // The owner dies: b takes the session over.
    a.stop_with(libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(15), || {
            legacy_post(&b, Some(&sid), &echo(5, "after")).status == 200
        }),
        "b took the session over; stderr:\n{}",
        b.stderr()
    );
    assert_eq!(
        echoed(&legacy_post(&b, Some(&sid), &echo(6, "again"))),
        "again"
    );
}

/// A `sleep` of `ms` with progress, POSTed in session `sid` on `server`
/// as request `id`, answered as an SSE stream; the stream after its head.
fn sleep_stream(server: &Server, sid: &str, id: u64, ms: u64) -> HttpConn {
    let mut c = server.http();
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":ms},"_meta":{"progressToken":"p"}}});
    c.send(
        "POST",
        "/mcp",
        &[
            CT,
            ("accept", "text/event-stream"),
            V,
            ("mcp-session-id", sid),
        ],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(c.read_head().0, 200);
    c
}

/// `rediss://`: the nodes reach Redis over TLS and check its certificate
/// against `--cluster-tls-ca-file`; a node that does not trust the issuer
/// never becomes ready.
#[test]
fn nodes_reach_redis_over_tls_and_check_its_certificate() {
    let valkey = Valkey::start();
    let tls = TlsRedis::start(&valkey);
    let secret = secret_file("tls");
    let ca = tls.ca_file.to_str().unwrap().to_owned();
    let trust = ["--cluster-tls-ca-file", ca.as_str()];
    let (mut nodes, _) = ready_nodes(&tls, &secret, &["a", "b"], &one_core(), &trust);
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let sid = legacy_session(&a);
    // Written through the TLS connection to the server behind it.
    assert!(stored(&valkey, &sid));
    assert_eq!(
        echoed(&legacy_post(&b, Some(&sid), &echo(1, "over tls"))),
        "over tls"
    );
    let out = Command::new(tessera_bin())
        .args(["cluster", "status", "--json", "--cluster", &tls.url()])
        .args(["--cluster-tls-ca-file", &ca])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = doc["nodes"].as_array().unwrap();
    for id in ["a", "b"] {
        assert_eq!(find(listed, id).expect(id)["live"], true, "{doc}");
    }
    // The system's roots do not know the test CA.
    let mut doubting = node(&tls, &secret, "c", &one_core(), &[]);
    let admin = admin_addr(&mut doubting);
    assert!(
        eventually(Duration::from_secs(10), || doubting
            .stderr()
            .to_lowercase()
            .contains("certificate")),
        "{}",
        doubting.stderr()
    );
    assert_eq!(get(&admin, "GET", "/readyz").0, 503);
}

/// `GET` with `Last-Event-ID: last` for session `sid` on `server`: the
/// replayed events, or None when it was not answered 200.
fn resume(server: &Server, sid: &str, last: &str) -> Option<Vec<SseEvent>> {
    let mut c = server.http();
    c.send(
        "GET",
        "/mcp",
        &[
            ("accept", "text/event-stream"),
            V,
            ("mcp-session-id", sid),
            ("last-event-id", last),
        ],
        None,
    );
    if c.read_head().0 != 200 {
        return None;
    }
    Some(
        c.events()
            .filter(|e| !e.comment && !e.data.is_empty())
            .collect(),
    )
}

/// `--store-key-file` with `--cluster`: session records and SSE events reach
/// Redis sealed; a node with the key takes a session over and serves it, a
/// node with another key does not serve what it cannot open (counted).
#[test]
fn sealed_records_in_redis_open_only_on_nodes_with_the_key() {
    let valkey = Valkey::start();
    let secret = secret_file("sealed");
    let dir = secret.parent().unwrap().to_path_buf();
    let key_of = |name: &str| {
        let out = Command::new(tessera_bin()).arg("gen-key").output().unwrap();
        let f = dir.join(name);
        std::fs::write(&f, &out.stdout).unwrap();
        f.display().to_string()
    };
    let (k1, k2) = (key_of("k1"), key_of("k2"));
    let (mut nodes, _) = ready_nodes(
        &valkey,
        &secret,
        &["a", "b"],
        &one_core(),
        &["--store-key-file", &k1],
    );
    let (b, mut a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    let c_socket = dir.join("c.sock");
    let mut c = node(
        &valkey,
        &secret,
        "c",
        &one_core(),
        &[
            "--store-key-file",
            &k2,
            "--upgrade-socket",
            c_socket.to_str().unwrap(),
        ],
    );
    let admin_c = admin_addr(&mut c);
    // A live rekey would leave what the shards send to Redis behind.
    let out = Command::new(tessera_bin())
        .args(["store", "rekey", "--upgrade-socket"])
        .arg(&c_socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not while serving with --cluster"),
        "{out:?}"
    );

    let kept = legacy_session(&a);
    let lost = legacy_session(&a);
    let sub = json!({"jsonrpc":"2.0","id":5,"method":"resources/subscribe","params":{"uri":"kv://sealed-marker"}});
    assert_eq!(legacy_post(&a, Some(&kept), &sub).status, 200);
    let mut s = sleep_stream(&a, &kept, 6, 300);
    assert!(s.events().any(|e| e.data.contains("\"id\":6")));
    // Written behind: wait until the record has the subscription (it is
    // sealed, so only its size says so) and the events are there.
    assert!(stored(&valkey, &kept) && stored(&valkey, &lost));
    let rec = |sid: &str| {
        valkey
            .command(&["HGET", &format!("tessera:s:{{{sid}}}"), "rec"])
            .unwrap_or_default()
    };
    let events = || {
        valkey
            .command(&["XRANGE", &format!("tessera:s:{{{kept}}}:ev"), "-", "+"])
            .unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(10), || events().contains("\r\nf\r\n")));
    std::thread::sleep(Duration::from_millis(500));
    for (what, bytes) in [("record", rec(&kept)), ("events", events())] {
        for plain in ["sealed-marker", "elicitation", "progress", "slept"] {
            assert!(
                !bytes.contains(plain),
                "{what} in Redis shows {plain:?}: {bytes:?}"
            );
        }
    }

    a.stop_with(libc::SIGKILL);
    // c holds another key: once a's heartbeat is gone it takes `lost` over,
    // cannot open it, and serves nothing of it.
    assert!(
        eventually(Duration::from_secs(15), || {
            legacy_post(&c, Some(&lost), &echo(1, "x")).status == 404
        }),
        "{}",
        c.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || {
        value(
            &scrape(&admin_c),
            "tessera_store_records_unreadable_total",
            &[],
        ) >= 1.0
    }));
    // b holds the key: `kept` works there, subscription included.
    assert!(
        eventually(Duration::from_secs(15), || {
            let r = legacy_post(&b, Some(&kept), &echo(7, "after"));
            r.status == 200 && echoed(&r) == "after"
        }),
        "{}",
        b.stderr()
    );
    let mut stream = standalone_stream(&b, &kept);
    let other = legacy_session(&b);
    let set = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"sealed-marker","value":1}}});
    assert_eq!(legacy_post(&b, Some(&other), &set).status, 200);
    let update = next_message(&mut stream, "an update on the new owner");
    assert_eq!(update["params"]["uri"], "kv://sealed-marker", "{update}");
}
