//! Supervision over real sockets: handler panics cost one request, connection
//! handlers restart on the same socket within their restart intensity, dead
//! executors come back, and the chaos test under loadgen load.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn line(id: u64, method: &str, params: Value) -> Vec<u8> {
    let mut m = json!({"jsonrpc":"2.0","id":id,"method":method});
    if !params.is_null() {
        m["params"] = params;
    }
    let mut v = serde_json::to_vec(&m).unwrap();
    v.push(b'\n');
    v
}

fn init_line() -> Vec<u8> {
    line(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}),
    )
}

/// Reads responses until EOF or `timeout`; returns them and whether EOF came.
fn read_all(stream: &TcpStream, timeout: Duration) -> (Vec<Value>, bool) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut out = Vec::new();
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) => return (out, true),
            Ok(_) => out.push(serde_json::from_str(&l).unwrap()),
            Err(_) => return (out, false),
        }
    }
}

fn counter(stderr: &str, name: &str) -> u64 {
    stderr
        .split(&format!("{name}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn tool_panics_cost_one_request_and_leak_nothing_to_the_client() {
    let server = Server::start(&["--cores", "0", "--chaos-panic-rate", "1"]);
    let mut c = server.connect();
    c.initialize();
    for _ in 0..3 {
        let r = c.call_tool("echo", json!({"text":"hi"}));
        assert_eq!(error_code(&r), -32603, "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("Internal error"), "{msg}");
        assert!(!msg.contains("chaos") && !msg.contains("panick"), "{msg}");
        assert!(r["error"].get("data").is_none(), "{r}");
    }
    // The connection and its session carry on.
    assert_eq!(c.request("ping", Value::Null)["result"], json!({}));
    let tools = c.request("tools/list", json!({}));
    assert!(!tools["result"]["tools"].as_array().unwrap().is_empty());
}

#[test]
fn a_panicking_connection_handler_restarts_and_answers_everything_once() {
    let mut server = Server::start(&[
        "--cores",
        "0",
        "--chaos-conn-panic-rate",
        "0.2",
        "--max-restarts",
        "100000",
    ]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&init_line()).unwrap();
    // Several requests per write, so panics land between lines of one read
    // (after a panic the rest of that read is replayed).
    let n = 2000u64;
    let mut sent = 0;
    let mut buf = Vec::new();
    for id in 1..=n {
        buf.extend(line(
            id,
            "tools/call",
            json!({"name":"echo","arguments":{"text":format!("m{id}")}}),
        ));
        if id % 10 == 0 {
            s.write_all(&buf).unwrap();
            buf.clear();
            sent += 10;
            if id % 200 == 0 {
                // Let reads stay small.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert_eq!(sent, n);
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = vec![0u32; n as usize + 1];
    let mut got = 0;
    while got < n + 1 {
        let mut l = String::new();
        assert!(
            r.read_line(&mut l).unwrap() > 0,
            "connection closed after {got} responses"
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        let id = v["id"].as_u64().unwrap();
        seen[id as usize] += 1;
        if id > 0 {
            assert_eq!(result_text(&v), format!("m{id}"), "{v}");
        }
        got += 1;
    }
    assert!(
        seen.iter().all(|&k| k == 1),
        "every request answered exactly once"
    );
    // Still the same connection and session.
    s.write_all(&line(9_999_999, "ping", Value::Null)).unwrap();
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.contains("9999999"), "{l}");
    drop(s);
    server.stop_with(libc::SIGTERM);
    let restarts = counter(&server.stderr(), "connection_restarts");
    assert!(restarts >= 10, "expected many restarts, got {restarts}");
}

#[test]
fn past_the_restart_intensity_the_connection_answers_what_it_read_and_closes() {
    let mut server = Server::start(&[
        "--cores",
        "0",
        "--chaos-conn-panic-rate",
        "1",
        "--max-restarts",
        "1",
        "--restart-period",
        "60s",
    ]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    // Restart 1: the panic right after initialize's line.
    s.write_all(&init_line()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.contains("\"result\""), "{l}");
    // The next panic exceeds the intensity: a slow request is in flight and
    // two more are read but not handled; all three get -32603, then EOF.
    let mut batch = line(
        1,
        "tools/call",
        json!({"name":"sleep","arguments":{"ms":3000}}),
    );
    batch.extend(line(2, "ping", Value::Null));
    batch.extend(line(3, "ping", Value::Null));
    s.write_all(&batch).unwrap();
    let started = Instant::now();
    let (resps, eof) = read_all(&s, Duration::from_secs(10));
    assert!(eof, "connection should be closed; got {resps:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed without waiting for the slow call"
    );
    let mut ids: Vec<u64> = resps.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3], "{resps:?}");
    for v in &resps {
        assert_eq!(error_code(v), -32603, "{v}");
    }
    // The server is fine; other connections are served.
    let mut c = server.connect();
    c.send_raw(&init_line());
    assert!(c.recv()["result"].is_object());
    server.stop_with(libc::SIGTERM);
    assert_eq!(counter(&server.stderr(), "connections_given_up"), 1);
}

#[test]
fn http_handler_panics_answer_500_and_the_connection_closes_past_the_intensity() {
    let server = Server::start_http(&[
        "--cores",
        "0",
        "--chaos-conn-panic-rate",
        "1",
        "--max-restarts",
        "2",
    ]);
    let mut c = server.http();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    for i in 0..3 {
        let r = c.request("POST", "/mcp", &headers, Some(body.to_string().as_bytes()));
        assert_eq!(r.status, 500);
        assert_eq!(error_code(&r.json()), -32603);
        let closing = r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(closing, i == 2, "response {i}");
    }
    assert!(c.closed_by_server());
}

#[test]
fn a_killed_shard_is_back_within_a_second_and_serves_new_connections() {
    let cores = allowed_cores();
    if cores.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let list = format!("{},{}", cores[0], cores[1]);
    let mut server = Server::start(&["--cores", &list, "--chaos-kill-shard-every", "1500ms"]);
    let addr = server.addr();
    // Load on both shards while shard 0 is killed: clients that lose their
    // connection reconnect.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..4u64 {
        let stop = stop.clone();
        load.push(std::thread::spawn(move || {
            let mut answered = 0u64;
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if s.write_all(&init_line()).is_err() {
                    continue;
                }
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    continue;
                }
                for _ in 0..200 {
                    k += 1;
                    let key = format!("k{t}-{k}");
                    if s.write_all(&line(
                        k,
                        "tools/call",
                        json!({"name":"kv_set","arguments":{"key":key,"value":k}}),
                    ))
                    .is_err()
                    {
                        break;
                    }
                    l.clear();
                    if r.read_line(&mut l).unwrap_or(0) == 0 {
                        break;
                    }
                    answered += 1;
                }
            }
            answered
        }));
    }
    let restarted = server
        .wait_for_stderr("shard 0 restarted", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no restart:\n{}", server.stderr()));
    let ms: f64 = restarted
        .split("chaos kill")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no restart time in {restarted:?}"));
    assert!(ms < 1000.0, "restart took {ms} ms");
    // New connections land on the restarted shard and are served there
    // (kv results name the shard that served them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served_by_restarted = false;
    while !served_by_restarted && Instant::now() < deadline {
        let mut c = Client::connect(addr);
        c.initialize();
        let r = c.call_tool("kv_get", json!({"key":"anything"}));
        served_by_restarted = r["result"]["_meta"]["tessera/shard"]["served_by"] == 0;
    }
    assert!(
        served_by_restarted,
        "no new connection was served by shard 0"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: u64 = load.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!("{restarted}\nrequests answered under load across the kill: {answered}");
    assert!(answered > 100, "load was served: {answered}");
    let st = server.stop_with(libc::SIGTERM);
    assert!(st.success(), "{}", server.stderr());
    assert!(
        server.stderr().contains("lost with it"),
        "the loss is logged"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// The chaos test: 1% of tool calls panic under sustained loadgen
/// load for 30 s. No connection is dropped (the loadgen fails on a closed
/// connection), every request is answered exactly once (sent = answered, no
/// wrong or missing responses), and RSS after the run stays within 10% of
/// RSS after warm-up.
#[test]
fn chaos_one_percent_tool_panics_for_30s_lose_nothing() {
    let cores = allowed_cores();
    let (server_core, load_core) = (cores[0], *cores.last().unwrap());
    let mut server = Server::start(&[
        "--cores",
        &server_core.to_string(),
        "--chaos-panic-rate",
        "0.01",
    ]);
    let pid = server.child().id();
    let addr = server.addr().to_string();
    let load = std::thread::spawn(move || {
        Command::new(loadgen_bin())
            .args([
                "tcp",
                "--addr",
                &addr,
                "--connections",
                "16",
                "--pipeline",
                "16",
                "--warmup",
                "5s",
                "--duration",
                "30s",
                "--cores",
                &load_core.to_string(),
                "--allow-errors",
            ])
            .output()
            .expect("run loadgen")
    });
    std::thread::sleep(Duration::from_secs(5));
    let rss_warm = rss_kib(pid);
    let out = load.join().unwrap();
    let rss_end = rss_kib(pid);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}{stderr}");
    eprintln!("RSS after warm-up {rss_warm} KiB, at the end {rss_end} KiB");
    assert!(out.status.success(), "loadgen failed:\n{stdout}\n{stderr}");
    let num = |label: &str| -> u64 {
        stdout
            .split(label)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
    };
    let sent = num(" sent");
    let answered = num(" total");
    let errors = num(" errors");
    assert_eq!(sent, answered, "every request answered");
    assert_eq!(num(" wrong"), 0);
    assert_eq!(num(" missing"), 0);
    // About 1% of the calls panicked, each answered with an error.
    let rate = errors as f64 / answered as f64;
    assert!((0.005..0.02).contains(&rate), "error rate {rate}");
    assert!(
        (rss_end as f64) <= rss_warm as f64 * 1.10,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    server.stop_with(libc::SIGTERM);
    let s = server.stderr();
    assert_eq!(
        counter(&s, "connections_opened"),
        counter(&s, "connections_closed")
    );
    assert!(counter(&s, "handler_panics") >= errors);
    // A storm of panics is summarised, not printed one by one.
    let panic_lines = s.lines().filter(|l| l.contains("panic in thread")).count() as u64;
    assert!(
        panic_lines < errors,
        "{panic_lines} panic lines for {errors} panics"
    );
}

/// SIGTERM: stop accepting, let in-flight requests finish within
/// `--drain-timeout`, end SSE streams with a `retry` hint (the client
/// resumes elsewhere with Last-Event-ID), print the summary, exit 0.
#[test]
fn graceful_shutdown_finishes_requests_and_flushes_sse_streams() {
    const V: &str = "2025-11-25";
    let mut server = Server::start_http(&["--cores", "0", "--drain-timeout", "3s"]);
    let mut c = server.http();
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":V,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some(init.to_string().as_bytes()),
    );
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let session = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", V),
        ("mcp-session-id", sid.as_str()),
    ];
    let mut stream = server.http();
    stream.send(
        "GET",
        "/mcp",
        &[
            ("accept", "text/event-stream"),
            ("mcp-protocol-version", V),
            ("mcp-session-id", sid.as_str()),
        ],
        None,
    );
    let (status, _) = stream.read_head();
    assert_eq!(status, 200);
    let mut slow = server.http();
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":600}}});
    slow.send("POST", "/mcp", &session, Some(call.to_string().as_bytes()));
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.child().id() as i32, libc::SIGTERM);
    }
    let r = slow.read_response();
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("slept 600 ms"), "{body}");
    let mut sse = Vec::new();
    while let Some(chunk) = stream.read_chunk() {
        sse.extend(chunk);
    }
    assert!(
        String::from_utf8_lossy(&sse).contains("retry:"),
        "{}",
        String::from_utf8_lossy(&sse)
    );
    let st = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(st.success());
    assert!(server.stderr().contains("tessera summary"));
}

#[test]
fn the_stdio_session_survives_restarts_of_its_shard() {
    let cores = allowed_cores();
    let core = cores[0].to_string();
    let mut server = Server::spawn(
        &[
            "serve",
            "--stdio",
            "--cores",
            &core,
            "--chaos-kill-shard-every",
            "400ms",
        ],
        Stdio::piped(),
    );
    let mut stdin = server.child().stdin.take().unwrap();
    let mut stdout = BufReader::new(server.child().stdout.take().unwrap());
    let mut ask = |id: u64, method: &str, params: Value| -> Value {
        stdin.write_all(&line(id, method, params)).unwrap();
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "stdout closed");
        serde_json::from_str(&l).unwrap()
    };
    let init = ask(
        1,
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    // The client initializes once and never again: after each restart of
    // the only shard it must still be served, at the version it agreed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 2;
    let mut restarts = 0;
    while restarts < 3 && Instant::now() < deadline {
        let r = ask(
            id,
            "tools/call",
            json!({"name":"echo","arguments":{"text":format!("m{id}")}}),
        );
        assert_eq!(result_text(&r), format!("m{id}"), "{r}");
        id += 1;
        std::thread::sleep(Duration::from_millis(20));
        restarts = server.stderr().matches("shard 0 restarted").count();
    }
    assert!(restarts >= 3, "3 restarts in 15 s:\n{}", server.stderr());
    let again = ask(
        id,
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    );
    assert_eq!(error_code(&again), -32600, "still initialized: {again}");
    let _ = server.stop_with(libc::SIGTERM);
}
