//! Bounds on HTTP request heads, over raw sockets against the real binary:
//! a head larger than `--http-max-head-bytes` or with more than
//! `--http-max-headers` headers is answered 431, a target longer than
//! `--http-max-uri-bytes` 414, each counted in `http_heads_refused`; heads
//! within the bounds are served as before.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

fn init_body() -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"heads","version":"1"}}})).unwrap()
}

/// A POST of `initialize` to `path` with `extra` headers, as raw bytes.
fn post(path: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    request_bytes("POST", path, &headers, Some(&init_body()))
}

/// Sends `bytes` (from another thread: the server may answer before it has
/// read them all) and returns the response's status code.
fn status_of(addr: SocketAddr, bytes: Vec<u8>) -> u16 {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may close before taking everything; that is fine.
        let _ = w.write_all(&bytes);
    });
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("a status line");
    writer.join().unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

fn admin_addr(server: &Server) -> String {
    let text = server.stderr();
    let rest = text
        .split("admin endpoint on http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no admin line:\n{text}"));
    rest.split_whitespace().next().unwrap().to_string()
}

/// `tessera_http_heads_refused_total` once it reaches `at_least` (the admin
/// view refreshes every second), or what it was at the timeout.
fn heads_refused(admin: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(admin).expect("admin");
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let v: f64 = text
            .lines()
            .find(|l| l.starts_with("tessera_http_heads_refused_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn oversized_heads_and_targets_are_refused_and_counted() {
    let server = Server::start_http(&["--cores", "0", "--admin", "127.0.0.1:0"]);
    let addr = server.http_addr.unwrap();
    let admin = admin_addr(&server);

    // Within the bounds: served.
    let ok = vec![("X-Note".to_string(), "a".repeat(4 * 1024))];
    assert_eq!(status_of(addr, post("/mcp", &ok)), 200);

    // One 1 MiB header value (nginx stops at 8 KiB per line; we at 64 KiB
    // per head by default).
    let huge = vec![("X-Huge".to_string(), "a".repeat(1024 * 1024))];
    assert_eq!(status_of(addr, post("/mcp", &huge)), 431);

    // More headers than --http-max-headers (100 by default).
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    assert_eq!(status_of(addr, post("/mcp", &many)), 431);

    // A target longer than --http-max-uri-bytes (8 KiB by default).
    let long_path = format!("/mcp?pad={}", "p".repeat(9 * 1024));
    assert_eq!(status_of(addr, post(&long_path, &[])), 414);

    assert_eq!(heads_refused(&admin, 3.0), 3.0);
    // The server is still serving.
    assert_eq!(status_of(addr, post("/mcp", &[])), 200);
}

#[test]
fn the_head_bounds_are_flags() {
    let server = Server::start_http(&[
        "--cores",
        "0",
        "--http-max-head-bytes",
        "8192",
        "--http-max-headers",
        "8",
        "--http-max-uri-bytes",
        "64",
    ]);
    let addr = server.http_addr.unwrap();
    assert_eq!(status_of(addr, post("/mcp", &[])), 200);
    let big = vec![("X-Big".to_string(), "b".repeat(10_000))];
    assert_eq!(status_of(addr, post("/mcp", &big)), 431);
    let many: Vec<(String, String)> = (0..8).map(|i| (format!("X-H{i}"), "v".into())).collect();
    assert_eq!(status_of(addr, post("/mcp", &many)), 431);
    assert_eq!(
        status_of(addr, post(&format!("/mcp?{}", "q".repeat(80)), &[])),
        414
    );
}
