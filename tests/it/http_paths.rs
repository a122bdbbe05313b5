//! The two HTTP/1.1 paths, over raw sockets against the real binary: the
//! common request shape is served by the lean path (no hand-over counted),
//! and a request of any other shape moves its connection to hyper, which
//! answers it and every later request on that connection.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn discover_body() -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":7,"method":"server/discover","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}})
    .to_string()
    .into_bytes()
}

const MODERN_HEADERS: &str = "Host: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: server/discover\r\n";

fn assert_discovered(r: &HttpResp) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["id"], 7, "{r:?}");
    assert!(r.json()["result"].is_object(), "{r:?}");
}

/// `tessera_http_hyper_handovers_total` once the admin view (refreshed every
/// second) shows at least `at_least`, or what it shows after 10 s.
fn handovers(admin: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = value(&scrape(admin), "tessera_http_hyper_handovers_total", &[]);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The admin view refreshes every second: wait for a refresh that shows
/// `requests` modern requests, then read the hand-over count.
fn handovers_after(admin: &str, requests: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(admin);
        let seen = value(
            &s,
            "tessera_requests_total",
            &[("method", "server/discover")],
        );
        if seen >= requests || Instant::now() >= deadline {
            assert!(
                seen >= requests,
                "the admin view never showed {requests} requests"
            );
            return value(&s, "tessera_http_hyper_handovers_total", &[]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_common_shape_stays_lean_and_other_shapes_move_the_connection_to_hyper() {
    let mut server = Server::start_http(&["--cores", "0", "--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&mut server);
    let addr = server.http_addr.unwrap();
    let body = discover_body();

    // Keep-alive requests of the common shape, one of them with its body
    // arriving in a second segment: all lean.
    let mut c = HttpConn::open(addr);
    for _ in 0..3 {
        let r = modern_discover(&mut c);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.header("date").is_some_and(|d| d.ends_with("GMT")),
            "{r:?}"
        );
        assert_eq!(r.header("x-tessera-shard"), Some("0"), "{r:?}");
    }
    let head = format!(
        "POST /mcp HTTP/1.1\r\n{MODERN_HEADERS}Content-Length: {}\r\n\r\n",
        body.len()
    );
    c.send_raw(head.as_bytes());
    c.send_raw(&body[..10]);
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(&body[10..]);
    assert_discovered(&c.read_response());
    // Two requests in one write: answered in order.
    let mut two = format!(
        "POST /mcp HTTP/1.1\r\n{MODERN_HEADERS}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    two.extend_from_slice(&body);
    let once = two.clone();
    two.extend_from_slice(&once);
    c.send_raw(&two);
    assert_discovered(&c.read_response());
    assert_discovered(&c.read_response());
    assert_eq!(handovers_after(&admin, 6.0), 0.0);

    // A chunked body is not the common shape: hyper takes the connection
    // over, answers this request and the next ones.
    let mut chunked =
        format!("POST /mcp HTTP/1.1\r\n{MODERN_HEADERS}Transfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    c.send_raw(&chunked);
    assert_discovered(&c.read_response());
    let r = modern_discover(&mut c);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(handovers(&admin, 1.0), 1.0);

    // `Expect: 100-continue` is hyper's to answer.
    let mut e = HttpConn::open(addr);
    let head = format!(
        "POST /mcp HTTP/1.1\r\n{MODERN_HEADERS}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    e.send_raw(head.as_bytes());
    let (status, _) = e.read_head();
    assert_eq!(status, 100);
    e.send_raw(&body);
    assert_discovered(&e.read_response());
    assert_eq!(handovers(&admin, 2.0), 2.0);

    // `Connection: close` on the lean path: answered, said, and closed.
    let mut last = HttpConn::open(addr);
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\n{MODERN_HEADERS}Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    last.send_raw(&req);
    let r = last.read_response();
    assert_discovered(&r);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(last.closed_by_server());
    let v: Value = r.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(handovers_after(&admin, 10.0), 2.0);
}
