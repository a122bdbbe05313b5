//! Limits that refuse work, over real sockets: the per-principal rate limit
//! (-31012 / HTTP 429) and the per-shard connection cap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn tcp_rate_limit_refuses_with_the_documented_error_then_recovers() {
    let server = Server::start(&[
        "--cores",
        "0",
        "--rate-limit-per-sec",
        "5",
        "--rate-limit-burst",
        "5",
    ]);
    let mut c = server.connect();
    c.initialize(); // one token
    let mut buf = Vec::new();
    for id in 1..=10 {
        buf.extend_from_slice(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n").as_bytes(),
        );
    }
    c.send_raw(&buf);
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..10 {
        let r = c.recv();
        if r.get("result").is_some() {
            ok += 1;
        } else {
            assert_eq!(error_code(&r), -31012, "{r}");
            assert!(r["error"]["data"]["retryAfterMs"].as_u64().unwrap() >= 1);
            limited += 1;
        }
    }
    assert_eq!((ok, limited), (4, 6));
    // Another connection is another principal.
    let mut other = server.connect();
    other.initialize();
    assert_eq!(other.request("ping", Value::Null)["result"], json!({}));
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(c.request("ping", Value::Null)["result"], json!({}));
}

#[test]
fn http_rate_limit_answers_429_with_retry_after() {
    let server = Server::start_http(&["--cores", "0", "--rate-limit-per-sec", "2"]);
    let mut c = server.http();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = modern_discover(&mut c);
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert_eq!(error_code(&r.json()), -31012);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(modern_discover(&mut c).status, 200);
}

#[test]
fn connections_over_the_per_shard_cap_are_closed_at_once() {
    let server = Server::start(&["--cores", "0", "--max-connections-per-shard", "2"]);
    let mut a = server.connect();
    a.initialize();
    let mut b = server.connect();
    b.initialize();
    let mut third = TcpStream::connect(server.addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "refused connection is closed"
    );
    drop(b);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = server.connect();
    d.initialize();
    assert_eq!(a.request("ping", Value::Null)["result"], json!({}));
    assert_eq!(d.request("ping", Value::Null)["result"], json!({}));
}

#[test]
fn http_connections_over_the_cap_get_503() {
    let server = Server::start_http(&["--cores", "0", "--max-connections-per-shard", "1"]);
    let mut a = server.http();
    assert_eq!(modern_discover(&mut a).status, 200);
    let mut b = server.http();
    let r = b.read_response();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(error_code(&r.json()), -31010);
    assert_eq!(modern_discover(&mut a).status, 200);
}
