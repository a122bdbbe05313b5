//! `--audit-log` against the real binary: one JSON line per request with
//! principal, session, method, name, outcome and latency, for TCP (token in
//! `_meta`) and HTTP (bearer and 401s), size rotation, and the session id on
//! log lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// The audit lines, once at least `n` are there (the writer is a few
/// hundred milliseconds behind by design).
fn lines(path: &Path, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let v: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if v.len() >= n || Instant::now() > until {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_request_is_audited_with_who_what_and_how_it_ended() {
    let tokens = scratch("tokens");
    std::fs::write(
        &tokens,
        format!(
            "{}\n{}\n",
            hash_token("alice-secret-token", "alice", "reader"),
            hash_token("root-secret-token", "root", "ops")
        ),
    )
    .unwrap();
    let log = scratch("audit.jsonl");
    let config = scratch("audit.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\nhttp = \"127.0.0.1:0\"\nauth = \"token\"\nauth_tokens = {:?}\naudit_log = {:?}\n\n[[role]]\nname = \"reader\"\ntools = [\"echo\"]\n\n[[role]]\nname = \"ops\"\ntools = [\"*\"]\n",
            tokens.to_str().unwrap(),
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    let r = c.request("tools/list", json!({}));
    assert_eq!(error_code(&r), -31014);
    let r = c.request(
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"},
               "_meta":{"authorization":"Bearer alice-secret-token"}}),
    );
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(result_text(&c.call_tool("echo", json!({"text":"a"}))), "a");
    let denied = c.call_tool("kv_set", json!({"key":"k","value":1}));
    assert_eq!(error_code(&denied), -31013);

    // HTTP: a refused request and a stateless call.
    let _ = server.wait_for_stderr("listening on http://", Duration::from_secs(5));
    let http_addr: std::net::SocketAddr = server
        .stderr()
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut h = HttpConn::open(http_addr);
    let r = h.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        Some(b"{}"),
    );
    assert_eq!(r.status, 401);
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"h"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    let mut h = HttpConn::open(http_addr);
    let r = h.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("authorization", "Bearer root-secret-token"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200);

    let got = lines(&log, 6);
    let find = |pred: &dyn Fn(&Value) -> bool| {
        got.iter()
            .find(|l| pred(l))
            .unwrap_or_else(|| panic!("no such line in {got:#?}"))
            .clone()
    };
    let first = find(&|l| l["method"] == "tools/list");
    assert_eq!(first["outcome"], "unauthorized");
    assert_eq!(first["code"], -31014);
    assert_eq!(first["principal"], Value::Null);
    let session = first["session"].as_str().unwrap().to_string();
    assert!(session.starts_with("tcp-0-"), "{session}");
    let echo = find(&|l| l["name"] == "echo" && l["principal"] == "alice");
    assert_eq!(echo["outcome"], "ok");
    assert_eq!(echo["session"], session.as_str());
    assert!(echo["latency_us"].as_u64().is_some());
    assert!(echo["time"].as_str().unwrap().ends_with('Z'));
    let denied = find(&|l| l["name"] == "kv_set");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["principal"], "alice");
    find(&|l| {
        l["outcome"] == "unauthorized" && l["method"] == "tools/call" && l["principal"].is_null()
    });
    find(&|l| l["principal"] == "root" && l["name"] == "echo" && l["outcome"] == "ok");

    // The denial's log line names the session.
    assert!(
        server
            .stderr()
            .lines()
            .any(|l| l.contains("denied: principal alice")
                && l.contains(&format!("session={session}"))),
        "{}",
        server.stderr()
    );
    server.stop_with(libc::SIGTERM);
}

#[test]
fn the_log_rotates_by_size_and_keeps_what_it_is_told() {
    let log = scratch("rotate.jsonl");
    let mut server = Server::start(&[
        "--cores",
        "0",
        "--audit-log",
        log.to_str().unwrap(),
        "--audit-log-max-bytes",
        "4096",
        "--audit-log-keep",
        "2",
    ]);
    let mut c = server.connect();
    c.initialize();
    for i in 0..300 {
        assert_eq!(
            result_text(&c.call_tool("echo", json!({"text": i.to_string()}))),
            i.to_string()
        );
        if i % 50 == 0 {
            // Let several flushes happen so rotation is exercised more than once.
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert_eq!(server.stop_with(libc::SIGTERM).code(), Some(0));
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(rotated(1).exists() && rotated(2).exists(), "rotated files");
    assert!(!rotated(3).exists(), "only two kept");
    for p in [log.clone(), rotated(1), rotated(2)] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 4096 + 64 * 1024, "{}: {len}", p.display());
    }
    // The newest lines are in the current file, ending with the last call.
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["name"], "echo");
}
