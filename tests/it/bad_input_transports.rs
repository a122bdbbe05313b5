//! The bad-input battery over stdio and HTTP (TCP has its own in
//! `bad_input.rs`), plus slowloris and mass dropped connections: each case
//! gets its documented error and a healthy client is answered throughout.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// (name, message bytes, JSON-RPC code or 0 for success, id in the answer)
fn battery() -> Vec<(&'static str, Vec<u8>, i64, Value)> {
    vec![
        ("malformed JSON", b"{bad json".to_vec(), -32700, Value::Null),
        (
            "truncated",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"".to_vec(),
            -32700,
            Value::Null,
        ),
        ("invalid UTF-8", b"\xff\xfe\xfd".to_vec(), -32700, Value::Null),
        (
            "invalid UTF-8 in a string",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xc3\x28\"}".to_vec(),
            -32700,
            Value::Null,
        ),
        ("100,000 [", b"[".repeat(100_000), -32700, Value::Null),
        (
            "batch array",
            b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]".to_vec(),
            -32600,
            Value::Null,
        ),
        (
            "missing jsonrpc",
            b"{\"id\":3,\"method\":\"ping\"}".to_vec(),
            -32600,
            json!(3),
        ),
        (
            "duplicate keys",
            b"{\"jsonrpc\":\"2.0\",\"id\":8,\"id\":9,\"method\":\"ping\"}".to_vec(),
            -32600,
            json!(9),
        ),
        (
            "method of the wrong type",
            b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":7}".to_vec(),
            -32600,
            json!(5),
        ),
        (
            "params of the wrong type",
            b"{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\",\"params\":1}".to_vec(),
            -32600,
            json!(6),
        ),
        (
            "unknown method",
            b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"no/such\"}".to_vec(),
            -32601,
            json!(10),
        ),
        (
            "huge integer (read as a float)",
            b"{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"ping\",\"params\":{\"n\":123456789012345678901234567890}}".to_vec(),
            0,
            json!(11),
        ),
        (
            "number beyond f64",
            b"{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"ping\",\"params\":{\"n\":1e400}}".to_vec(),
            -32700,
            Value::Null,
        ),
    ]
}

fn check(name: &str, v: &Value, code: i64, id: &Value) {
    assert_eq!(v["jsonrpc"], "2.0", "{name}: {v}");
    assert_eq!(&v["id"], id, "{name}: {v}");
    if code == 0 {
        assert!(v.get("result").is_some(), "{name}: {v}");
    } else {
        assert_eq!(v["error"]["code"], code, "{name}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn stdio_battery() {
    let mut child = Command::new(tessera_bin())
        .args(["serve", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut recv = || {
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "stdout closed");
        serde_json::from_str::<Value>(&l).unwrap()
    };
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\":\"0\"}}}\n").unwrap();
    assert!(recv()["result"].is_object());
    for (i, (name, bytes, code, id)) in battery().into_iter().enumerate() {
        stdin.write_all(&bytes).unwrap();
        stdin.write_all(b"\n").unwrap();
        check(name, &recv(), code, &id);
        // The healthy path in between.
        let ping = 1000 + i;
        writeln!(
            stdin,
            "{{\"jsonrpc\":\"2.0\",\"id\":{ping},\"method\":\"ping\"}}"
        )
        .unwrap();
        let r = recv();
        assert_eq!(r["id"], ping, "after {name}");
        assert_eq!(r["result"], json!({}));
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(Instant::now() < deadline, "stdio server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LEGACY: &str = "2025-11-25";

fn legacy_session(c: &mut HttpConn) -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":LEGACY,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some(init.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200);
    r.header("mcp-session-id").unwrap().to_owned()
}

#[test]
fn http_battery_in_both_eras() {
    http_battery_in_both_eras_on(Server::start_http(&[
        "--cores",
        "0",
        "--max-message-bytes",
        "200000",
    ]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn http_battery_in_both_eras_over_tls() {
    let pki = TestPki::new("http_battery_in_both_era");
    http_battery_in_both_eras_on(Server::start_https(
        &pki,
        &["--cores", "0", "--max-message-bytes", "200000"],
    ));
}

fn http_battery_in_both_eras_on(server: Server) {
    let mut c = server.http();
    let sid = legacy_session(&mut c);
    let legacy = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", LEGACY),
        ("mcp-session-id", sid.as_str()),
    ];
    let modern = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
    ];
    let healthy = json!({"jsonrpc":"2.0","id":"h","method":"ping"}).to_string();
    for (name, bytes, code, id) in battery() {
        let r = c.request("POST", "/mcp", &legacy, Some(&bytes));
        check(name, &r.json(), code, &id);
        // Malformed or invalid messages are 400; a well-formed request is
        // answered 200 even when the answer is a JSON-RPC error.
        let want = if code == -32700 || code == -32600 {
            400
        } else {
            200
        };
        assert_eq!(r.status, want, "legacy {name}");
        let h = c.request("POST", "/mcp", &legacy, Some(healthy.as_bytes()));
        assert_eq!(h.json()["result"], json!({}), "after legacy {name}");

        if code == -32700 || code == -32600 {
            // A modern request is validated the same way before its headers
            // are compared with it.
            let r = c.request("POST", "/mcp", &modern, Some(&bytes));
            assert_eq!(r.status, 400, "modern {name}");
            check(name, &r.json(), code, &id);
        }
    }
    // Oversize body: 413 with -32600, the connection's next request is fine.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"x\":\"{}\"}}}}",
        "a".repeat(300_000)
    );
    let r = c.request("POST", "/mcp", &legacy, Some(big.as_bytes()));
    assert_eq!(r.status, 413);
    assert_eq!(error_code(&r.json()), -32600);
    let mut c2 = server.http();
    let h = c2.request("POST", "/mcp", &legacy, Some(healthy.as_bytes()));
    assert_eq!(h.json()["result"], json!({}));
}

/// Opens `n` connections that each send part of a request and vanish,
/// checking a healthy client every 1,000.
fn drop_mid_request(
    addr: std::net::SocketAddr,
    n: usize,
    partial: &[u8],
    mut healthy: impl FnMut(),
) {
    for i in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(partial);
        if i % 3 == 0 {
            // Some leave with a reset rather than a FIN.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
        if i % 1000 == 999 {
            healthy();
        }
    }
}

#[test]
fn ten_thousand_tcp_connections_dropped_mid_request() {
    let mut server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    drop_mid_request(
        server.addr(),
        10_000,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"na",
        || assert_eq!(c.request("ping", Value::Null)["result"], json!({})),
    );
    assert_eq!(
        c.call_tool("echo", json!({"text":"still here"}))["result"]["content"][0]["text"],
        "still here"
    );
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    server.stop_with(libc::SIGTERM);
    let s = server.stderr();
    let count = |name: &str| -> u64 {
        s.split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count("connections_opened") >= 10_001);
    assert_eq!(count("connections_opened"), count("connections_closed"));
}

#[test]
fn ten_thousand_http_connections_dropped_mid_request() {
    let server = Server::start_http(&["--cores", "0"]);
    let mut c = server.http();
    let sid = legacy_session(&mut c);
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("mcp-protocol-version", LEGACY),
        ("mcp-session-id", sid.as_str()),
    ];
    let ping = json!({"jsonrpc":"2.0","id":"h","method":"ping"}).to_string();
    drop_mid_request(
        server.http_addr.unwrap(),
        10_000,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
        || {
            let r = c.request("POST", "/mcp", &headers, Some(ping.as_bytes()));
            assert_eq!(r.json()["result"], json!({}));
        },
    );
    let r = c.request("POST", "/mcp", &headers, Some(ping.as_bytes()));
    assert_eq!(r.json()["result"], json!({}));
}

#[test]
fn a_tcp_slowloris_is_closed_while_a_healthy_client_is_served() {
    a_tcp_slowloris_is_closed_while_a_healthy_client_is_served_on(Server::start(&[
        "--cores",
        "0",
        "--idle-timeout-ms",
        "500",
    ]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn a_tcp_slowloris_is_closed_while_a_healthy_client_is_served_over_tls() {
    let pki = TestPki::new("a_tcp_slowloris_is_close");
    a_tcp_slowloris_is_closed_while_a_healthy_client_is_served_on(Server::start_tls(
        &pki,
        &["--cores", "0", "--idle-timeout-ms", "500"],
    ));
}

fn a_tcp_slowloris_is_closed_while_a_healthy_client_is_served_on(server: Server) {
    let mut healthy = server.connect();
    healthy.initialize();
    // Over TLS the slow client finishes its handshake, then dribbles.
    let mut slow = Stream::connect(server.addr(), server.tls.as_ref().map(|t| &t.tcp));
    let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}";
    let started = Instant::now();
    let mut closed_after = None;
    for &b in line.iter().cycle().take(100) {
        if slow.write_all(&[b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // The healthy client keeps talking and is never timed out.
        assert_eq!(healthy.request("ping", Value::Null)["result"], json!({}));
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let closed_after = closed_after.or_else(|| {
        slow.tcp()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        matches!(std::io::Read::read(&mut slow, &mut buf), Ok(0) | Err(_))
            .then(|| started.elapsed())
    });
    let t = closed_after.expect("the slowloris connection was not closed");
    assert!(t < Duration::from_secs(3), "closed after {t:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(healthy.request("ping", Value::Null)["result"], json!({}));
}

/// Regression (fuzzing, `fuzz/regressions/http_request/http10-request`): an
/// HTTP/1.0 request with bad MCP headers is answered with an HTTP/1.0 status
/// line, a JSON-RPC error body and the connection closed (1.0 has no
/// keep-alive by default); the server stays up.
#[test]
fn http_1_0_requests_get_http_1_0_answers() {
    let server = Server::start_http(&["--cores", "0"]);
    let input = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/http_request/http10-request"),
    )
    .unwrap();
    // The fuzz input's first byte chose the read chunking; the rest is the stream.
    let mut s = TcpStream::connect(server.http_addr.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&input[1..]).unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 4"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["error"]["code"].as_i64().is_some(), "{v}");
    let mut c = server.http();
    assert_eq!(modern_discover(&mut c).status, 200);
}
