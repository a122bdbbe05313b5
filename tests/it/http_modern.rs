//! Streamable HTTP, modern era (2026-07-28): stateless requests validated
//! against their metadata headers; plus connection-level behaviour shared by
//! both eras (pipelining, timeouts).

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const VERSION: &str = "2026-07-28";

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}
    })
}

fn modern(c: &mut HttpConn, body: &Value, extra: &[(&str, &str)]) -> HttpResp {
    let method = body["method"].as_str().unwrap().to_owned();
    let name = body["params"]["name"]
        .as_str()
        .or(body["params"]["uri"].as_str())
        .map(str::to_owned);
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", VERSION),
        ("Mcp-Method", method.as_str()),
    ];
    if let Some(n) = &name {
        h.push(("Mcp-Name", n.as_str()));
    }
    // `extra` replaces same-named headers; an empty value removes one.
    for (k, v) in extra {
        h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            h.push((k, v));
        }
    }
    c.request("POST", "/mcp", &h, Some(&serde_json::to_vec(body).unwrap()))
}

fn call(id: u64, name: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args,"_meta":meta()}})
}

#[test]
fn discover_and_stateless_calls() {
    discover_and_stateless_calls_on(Server::start_http(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn discover_and_stateless_calls_over_tls() {
    let pki = TestPki::new("discover_and_stateless_c");
    discover_and_stateless_calls_on(Server::start_https(&pki, &["--cores", "0"]));
}

fn discover_and_stateless_calls_on(server: Server) {
    let mut c = server.http();
    let r = modern(
        &mut c,
        &json!({"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta":meta()}}),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(v["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!(VERSION)));
    assert!(v["result"]["capabilities"]["tools"].is_object());
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "tessera"
    );
    assert!(
        r.header("mcp-session-id").is_none(),
        "no sessions in 2026-07-28"
    );

    let r = modern(&mut c, &call(1, "echo", json!({"text":"stateless"})), &[]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["result"]["content"][0]["text"], "stateless");
    assert_eq!(v["result"]["resultType"], "complete");
    let r = modern(
        &mut c,
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":meta()}}),
        &[],
    );
    let v = r.json();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 6);
    assert!(
        v["result"]["ttlMs"].is_u64() && v["result"]["cacheScope"] == "public",
        "{v}"
    );
    // kv results merge their own _meta with the server identity.
    let r = modern(
        &mut c,
        &call(3, "kv_set", json!({"key":"k","value":1})),
        &[],
    );
    let m = &r.json()["result"]["_meta"];
    assert!(
        m["io.modelcontextprotocol/serverInfo"].is_object() && m["tessera/shard"].is_object(),
        "{m}"
    );
    // A resource that does not exist is -32602 in this era.
    let r = modern(
        &mut c,
        &json!({"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"kv://nope","_meta":meta()}}),
        &[],
    );
    assert_eq!(r.json()["error"]["code"], -32602);
    // A notification is accepted with 202 and no body.
    let r = modern(
        &mut c,
        &json!({"jsonrpc":"2.0","method":"notifications/whatever","params":{"_meta":meta()}}),
        &[],
    );
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
}

#[test]
fn headers_are_validated_against_the_body() {
    let server = Server::start_http(&["--cores", "0"]);
    let mut c = server.http();
    let body = call(1, "echo", json!({"text":"x"}));
    let expect = |r: HttpResp, status: u16, code: i64| {
        assert_eq!(r.status, status, "{r:?}");
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        v
    };
    expect(
        modern(&mut c, &body, &[("MCP-Protocol-Version", "")]),
        400,
        -32020,
    );
    expect(modern(&mut c, &body, &[("Mcp-Method", "")]), 400, -32020);
    expect(
        modern(&mut c, &body, &[("Mcp-Method", "tools/list")]),
        400,
        -32020,
    );
    expect(modern(&mut c, &body, &[("Mcp-Name", "")]), 400, -32020);
    let v = expect(modern(&mut c, &body, &[("Mcp-Name", "add")]), 400, -32020);
    assert_eq!(v["id"], 1);
    // Base64-encoded names are decoded before comparing.
    let r = modern(&mut c, &body, &[("Mcp-Name", "=?base64?ZWNobw==?=")]);
    assert_eq!(r.status, 200, "{r:?}");
    // Header and body versions disagree.
    let mut other = body.clone();
    other["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    expect(modern(&mut c, &other, &[]), 400, -32020);
    // A version nobody supports: -32022 listing what is supported.
    let mut unknown = body.clone();
    unknown["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let v = expect(
        modern(&mut c, &unknown, &[("MCP-Protocol-Version", "2099-01-01")]),
        400,
        -32022,
    );
    assert_eq!(v["error"]["data"]["requested"], "2099-01-01");
    assert!(v["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!(VERSION)));
    // Required _meta fields.
    let mut no_caps = body.clone();
    no_caps["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    expect(modern(&mut c, &no_caps, &[]), 400, -32602);
    // Unknown method: 404 with -32601.
    let r = modern(
        &mut c,
        &json!({"jsonrpc":"2.0","id":5,"method":"no/such","params":{"_meta":meta()}}),
        &[],
    );
    expect(r, 404, -32601);
    // No GET stream and no DELETE in this era.
    let r = c.request(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("MCP-Protocol-Version", VERSION),
        ],
        None,
    );
    assert_eq!(r.status, 405);
    let r = c.request("DELETE", "/mcp", &[("MCP-Protocol-Version", VERSION)], None);
    assert_eq!(r.status, 405);
    // A modern body sent without any headers is caught too.
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    expect(r, 400, -32020);
    // Tool argument errors are still results.
    let r = modern(&mut c, &call(6, "echo", json!({})), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["isError"], true);
}

#[test]
fn modern_sse_carries_progress_and_closing_it_cancels_the_request() {
    modern_sse_carries_progress_and_closing_it_cancels_the_request_on(Server::start_http(&[
        "--cores", "0",
    ]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn modern_sse_carries_progress_and_closing_it_cancels_the_request_over_tls() {
    let pki = TestPki::new("modern_sse_carries_progr");
    modern_sse_carries_progress_and_closing_it_cancels_the_request_on(Server::start_https(
        &pki,
        &["--cores", "0"],
    ));
}

fn modern_sse_carries_progress_and_closing_it_cancels_the_request_on(mut server: Server) {
    let mut c = server.http();
    let mut body = call(1, "sleep", json!({"ms": 150}));
    body["params"]["_meta"]["progressToken"] = json!(42);
    let b = serde_json::to_vec(&body).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", VERSION),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "sleep"),
    ];
    c.send("POST", "/mcp", &headers, Some(&b));
    let (status, h) = c.read_head();
    assert_eq!(status, 200);
    assert!(h
        .iter()
        .any(|(k, v)| k == "content-type" && v == "text/event-stream"));
    assert!(h.iter().any(|(k, v)| k == "x-accel-buffering" && v == "no"));
    let events: Vec<SseEvent> = c.events().filter(|e| !e.comment).collect();
    assert!(
        events.iter().all(|e| e.id.is_none()),
        "modern streams are not resumable"
    );
    let (last, progress) = events.split_last().unwrap();
    assert!(!progress.is_empty());
    for p in progress {
        assert_eq!(p.json()["params"]["progressToken"], 42);
    }
    assert_eq!(last.json()["result"]["content"][0]["text"], "slept 150 ms");

    // Closing a stream cancels its request: that sleep never completes.
    let mut body = call(2, "sleep", json!({"ms": 800}));
    body["params"]["_meta"]["progressToken"] = json!("t");
    let mut c = server.http();
    c.send(
        "POST",
        "/mcp",
        &headers,
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    let _first: Vec<SseEvent> = c.events().filter(|e| !e.comment).take(2).collect();
    drop(c);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(server.stop_with(libc::SIGTERM).success());
    let err = server.stderr();
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with("tools/call"))
        .unwrap();
    let completed: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        completed, 1,
        "the cancelled sleep must not complete:\n{err}"
    );
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let server = Server::start_http(&["--cores", "0"]);
    let mut c = server.http();
    let mut batch = Vec::new();
    for i in 0..20u64 {
        let body = serde_json::to_vec(&call(i, "echo", json!({"text": format!("p{i}")}))).unwrap();
        batch.extend(request_bytes(
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("MCP-Protocol-Version", VERSION),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "echo"),
            ],
            Some(&body),
        ));
    }
    c.send_raw(&batch);
    for i in 0..20u64 {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["id"], i);
        assert_eq!(r.json()["result"]["content"][0]["text"], format!("p{i}"));
    }
}

#[test]
fn slow_headers_and_idle_connections_are_closed() {
    let server = Server::start_http(&[
        "--cores",
        "0",
        "--http-header-timeout-ms",
        "300",
        "--http-body-timeout-ms",
        "300",
        "--http-idle-timeout-ms",
        "1500",
    ]);
    // Slowloris: a request head that never finishes.
    let mut slow = server.http();
    slow.send_raw(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic");
    let t = Instant::now();
    // Meanwhile other clients are served.
    let mut ok = server.http();
    let r = modern(
        &mut ok,
        &json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":meta()}}),
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(slow.closed_by_server(), "the slow client must be cut off");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A body that never arrives: 408.
    let mut partial = server.http();
    partial.send_raw(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
    let r = partial.read_response();
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["error"]["code"], -32600);

    // An idle keep-alive connection lives past the header timeout (that one
    // only bounds a head in progress) and is closed at the idle timeout.
    let mut idle = server.http();
    let r = modern(
        &mut idle,
        &json!({"jsonrpc":"2.0","id":2,"method":"server/discover","params":{"_meta":meta()}}),
        &[],
    );
    assert_eq!(r.status, 200);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    let r = modern(
        &mut idle,
        &json!({"jsonrpc":"2.0","id":3,"method":"server/discover","params":{"_meta":meta()}}),
        &[],
    );
    assert_eq!(r.status, 200, "still open after 600 ms idle");
    let t2 = Instant::now();
    assert!(idle.closed_by_server());
    let waited = t2.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(4),
        "{waited:?} (first wait {:?})",
        t.elapsed()
    );
}
