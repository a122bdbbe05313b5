//! Streamable HTTP, legacy era (2025-11-25 and older): sessions owned by
//! shards, SSE with resumption, status codes.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");
const V: (&str, &str) = ("MCP-Protocol-Version", "2025-11-25");

fn post(c: &mut HttpConn, sid: Option<&str>, body: &Value) -> HttpResp {
    let b = serde_json::to_vec(body).unwrap();
    let mut h = vec![CT, ACCEPT, V];
    if let Some(s) = sid {
        h.push(("Mcp-Session-Id", s));
    }
    c.request("POST", "/mcp", &h, Some(&b))
}

fn initialize(server: &Server) -> String {
    let mut c = server.http();
    let r = post(
        &mut c,
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
    let sid = r.header("mcp-session-id").expect("session id").to_owned();
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    sid
}

fn call(id: u64, name: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}})
}

fn sleep_with_progress(id: u64, ms: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":ms},"_meta":{"progressToken":"tok"}}})
}

#[test]
fn session_lifecycle_and_status_codes() {
    session_lifecycle_and_status_codes_on(Server::start_http(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn session_lifecycle_and_status_codes_over_tls() {
    let pki = TestPki::new("session_lifecycle_and_st");
    session_lifecycle_and_status_codes_on(Server::start_https(&pki, &["--cores", "0"]));
}

fn session_lifecycle_and_status_codes_on(server: Server) {
    let sid = initialize(&server);
    assert_eq!(sid.len(), 36);
    assert!(sid.starts_with("0000"), "the id names shard 0: {sid}");
    let mut c = server.http();
    let r = post(
        &mut c,
        Some(&sid),
        &call(1, "echo", json!({"text": "over http"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["result"]["content"][0]["text"], "over http");
    // Keep-alive: the same connection serves the next request.
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    );
    assert_eq!(r.json()["result"]["tools"].as_array().unwrap().len(), 6);
    // A client response to nothing is accepted like a notification.
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":"x","result":{}}),
    );
    assert_eq!(r.status, 202);

    // Missing session id on a non-initialize request: 400; unknown: 404.
    let r = post(
        &mut c,
        None,
        &json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32600);
    let bogus = format!("0000{}", "ab".repeat(16));
    assert_eq!(
        post(
            &mut c,
            Some(&bogus),
            &json!({"jsonrpc":"2.0","id":4,"method":"ping"})
        )
        .status,
        404
    );
    assert_eq!(
        post(
            &mut c,
            Some("not-an-id"),
            &json!({"jsonrpc":"2.0","id":4,"method":"ping"})
        )
        .status,
        404
    );

    // DELETE ends the session; its id then answers 404.
    let r = c.request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], None);
    assert_eq!(r.status, 200);
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Session not found"));
}

#[test]
fn transport_rejections_carry_jsonrpc_errors() {
    let server = Server::start_http(&["--cores", "0", "--max-message-bytes", "1024"]);
    let sid = initialize(&server);
    let mut c = server.http();
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let check = |r: HttpResp, status: u16| {
        assert_eq!(r.status, status, "{r:?}");
        if status != 202 {
            let v = r.json();
            assert_eq!(v["jsonrpc"], "2.0", "{v}");
            assert!(v["error"]["code"].is_i64(), "{v}");
        }
    };
    let s = ("Mcp-Session-Id", sid.as_str());
    check(
        c.request("POST", "/other", &[CT, ACCEPT, s], Some(ping)),
        404,
    );
    let r = c.request("PUT", "/mcp", &[CT, ACCEPT, s], Some(ping));
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    check(r, 405);
    check(c.request("POST", "/mcp", &[ACCEPT, s], Some(ping)), 415);
    check(
        c.request(
            "POST",
            "/mcp",
            &[("Content-Type", "text/plain"), ACCEPT, s],
            Some(ping),
        ),
        415,
    );
    check(
        c.request(
            "POST",
            "/mcp",
            &[CT, ("Accept", "text/html"), s],
            Some(ping),
        ),
        406,
    );
    check(
        c.request("GET", "/mcp", &[("Accept", "application/json"), s], None),
        406,
    );
    check(
        c.request("POST", "/mcp", &[CT, ACCEPT, s], Some(&vec![b' '; 5000])),
        413,
    );
    let r = c.request("POST", "/mcp", &[CT, ACCEPT, s], Some(b"{nope"));
    assert_eq!(r.json()["error"]["code"], -32700);
    check(r, 400);
    check(
        c.request(
            "POST",
            "/mcp",
            &[CT, ACCEPT, s, ("MCP-Protocol-Version", "1999-01-01")],
            Some(ping),
        ),
        400,
    );
    check(
        c.request(
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                s,
                ("MCP-Protocol-Version", "1999-01-01"),
            ],
            None,
        ),
        400,
    );
    // DNS rebinding defence: foreign Origin or Host.
    check(
        c.request(
            "POST",
            "/mcp",
            &[CT, ACCEPT, s, ("Origin", "http://evil.example")],
            Some(ping),
        ),
        403,
    );
    check(
        c.request(
            "POST",
            "/mcp",
            &[CT, ACCEPT, s, ("Host", "evil.example:80")],
            Some(ping),
        ),
        403,
    );
    let ok = c.request(
        "POST",
        "/mcp",
        &[CT, ACCEPT, s, ("Origin", "http://localhost:5173")],
        Some(ping),
    );
    assert_eq!(ok.status, 200);
    // Without MCP-Protocol-Version the server assumes 2025-03-26 and serves.
    let r = c.request("POST", "/mcp", &[CT, ACCEPT, s], Some(ping));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], json!({}));
}

#[test]
fn allow_origin_extends_the_list() {
    let server = Server::start_http(&[
        "--cores",
        "0",
        "--allow-origin",
        "https://app.example",
        "--allow-host",
        "mcp.example",
    ]);
    let mut c = server.http();
    let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#;
    let r = c.request(
        "POST",
        "/mcp",
        &[
            CT,
            ACCEPT,
            ("Origin", "https://app.example"),
            ("Host", "mcp.example:443"),
        ],
        Some(init),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.request(
        "POST",
        "/mcp",
        &[CT, ACCEPT, ("Origin", "https://other.example")],
        Some(init),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn progress_streams_over_sse_and_the_stream_ends_with_the_response() {
    let server = Server::start_http(&["--cores", "0"]);
    let sid = initialize(&server);
    let mut c = server.http();
    let b = serde_json::to_vec(&sleep_with_progress(7, 200)).unwrap();
    c.send(
        "POST",
        "/mcp",
        &[CT, ACCEPT, V, ("Mcp-Session-Id", &sid)],
        Some(&b),
    );
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("content-type"), Some("text/event-stream"));
    assert_eq!(h("x-accel-buffering"), Some("no"));
    let events: Vec<SseEvent> = c.events().filter(|e| !e.comment).collect();
    let priming = &events[0];
    assert!(
        priming.id.is_some() && priming.data.is_empty() && priming.retry.is_some(),
        "{priming:?}"
    );
    let last = events.last().unwrap().json();
    assert_eq!(last["id"], 7, "{last}");
    assert_eq!(last["result"]["content"][0]["text"], "slept 200 ms");
    let progress: Vec<f64> = events[1..events.len() - 1]
        .iter()
        .map(|e| e.json()["params"]["progress"].as_f64().unwrap())
        .collect();
    assert!(progress.len() >= 3, "{events:?}");
    assert!(
        progress.windows(2).all(|w| w[1] > w[0]),
        "progress must increase: {progress:?}"
    );
    let mut ids = std::collections::HashSet::new();
    for e in &events {
        assert!(
            ids.insert(e.id.clone().unwrap()),
            "duplicate event id {e:?}"
        );
    }
}

/// Reads events until one carries JSON data; returns (last id seen, events).
fn take_events(c: &mut HttpConn, n: usize) -> Vec<SseEvent> {
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    c.events().filter(|e| !e.comment).take(n).collect()
}

#[test]
fn a_dropped_post_stream_resumes_with_last_event_id() {
    a_dropped_post_stream_resumes_with_last_event_id_on(Server::start_http(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn a_dropped_post_stream_resumes_with_last_event_id_over_tls() {
    let pki = TestPki::new("a_dropped_post_stream_re");
    a_dropped_post_stream_resumes_with_last_event_id_on(Server::start_https(
        &pki,
        &["--cores", "0"],
    ));
}

fn a_dropped_post_stream_resumes_with_last_event_id_on(server: Server) {
    let sid = initialize(&server);
    let mut c = server.http();
    let b = serde_json::to_vec(&sleep_with_progress(11, 600)).unwrap();
    c.send(
        "POST",
        "/mcp",
        &[CT, ACCEPT, V, ("Mcp-Session-Id", &sid)],
        Some(&b),
    );
    // Priming plus the first two progress events, then the client vanishes.
    let first = take_events(&mut c, 3);
    let last_seen = first.last().unwrap().id.clone().unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(150));

    let mut r = server.http();
    r.send(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            V,
            ("Mcp-Session-Id", &sid),
            ("Last-Event-ID", &last_seen),
        ],
        None,
    );
    let rest = take_events(&mut r, usize::MAX);
    let all: Vec<&SseEvent> = first.iter().skip(1).chain(rest.iter()).collect();
    let seqs: Vec<u64> = all
        .iter()
        .map(|e| {
            e.id.as_ref()
                .unwrap()
                .split('-')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no event lost, none duplicated");
    let stream: std::collections::HashSet<&str> = all
        .iter()
        .map(|e| e.id.as_ref().unwrap().split('-').next().unwrap())
        .collect();
    assert_eq!(stream.len(), 1, "one stream");
    let last = all.last().unwrap().json();
    assert_eq!(last["id"], 11);
    assert_eq!(last["result"]["content"][0]["text"], "slept 600 ms");
}

#[test]
fn the_server_closes_long_connections_and_the_client_polls_back() {
    let server = Server::start_http(&[
        "--cores",
        "0",
        "--sse-max-connection-ms",
        "150",
        "--sse-retry-ms",
        "50",
    ]);
    let sid = initialize(&server);
    let mut c = server.http();
    let b = serde_json::to_vec(&sleep_with_progress(12, 500)).unwrap();
    c.send(
        "POST",
        "/mcp",
        &[CT, ACCEPT, V, ("Mcp-Session-Id", &sid)],
        Some(&b),
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    let mut seen: Vec<SseEvent> = c.events().filter(|e| !e.comment).collect();
    let retry = seen.pop().expect("a retry field before the close");
    assert_eq!(retry.retry, Some(50), "{retry:?}");
    assert!(
        seen.iter()
            .all(|e| e.data.is_empty() || e.json().get("result").is_none()),
        "closed before the response"
    );
    let mut last = seen.iter().rev().find_map(|e| e.id.clone()).unwrap();
    // Poll back until the stream delivers its response.
    let mut response = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while response.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let mut r = server.http();
        r.send(
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", &sid),
                ("Last-Event-ID", &last),
            ],
            None,
        );
        let (status, _) = r.read_head();
        assert_eq!(status, 200);
        for e in r.events().filter(|e| !e.comment && !e.data.is_empty()) {
            last = e.id.clone().unwrap();
            if e.json()["id"] == 12 {
                response = Some(e.json());
            }
        }
    }
    let response = response.expect("the response arrives after polling");
    assert_eq!(response["result"]["content"][0]["text"], "slept 500 ms");
}

#[test]
fn standalone_stream_carries_resource_updates_and_resumes() {
    standalone_stream_carries_resource_updates_and_resumes_on(Server::start_http(&[
        "--cores", "0",
    ]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn standalone_stream_carries_resource_updates_and_resumes_over_tls() {
    let pki = TestPki::new("standalone_stream_carrie");
    standalone_stream_carries_resource_updates_and_resumes_on(Server::start_https(
        &pki,
        &["--cores", "0"],
    ));
}

fn standalone_stream_carries_resource_updates_and_resumes_on(server: Server) {
    let sid = initialize(&server);
    let mut c = server.http();
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"kv://watched"}}),
    );
    assert_eq!(r.json()["result"], json!({}), "{r:?}");

    let mut g = server.http();
    g.send(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), V, ("Mcp-Session-Id", &sid)],
        None,
    );
    let (status, _) = g.read_head();
    assert_eq!(status, 200);
    let mut events = g.events().filter(|e| !e.comment);
    let priming = events.next().unwrap();
    assert!(priming.data.is_empty() && priming.id.is_some());

    let r = post(
        &mut c,
        Some(&sid),
        &call(2, "kv_set", json!({"key":"watched","value":1})),
    );
    assert_eq!(r.status, 200);
    let update = events.next().unwrap();
    let v = update.json();
    assert_eq!(v["method"], "notifications/resources/updated");
    assert_eq!(v["params"]["uri"], "kv://watched");
    let seen = update.id.clone().unwrap();
    assert!(
        seen.starts_with("0-"),
        "standalone stream is stream 0: {seen}"
    );
    drop(events);
    drop(g);

    // Two more changes while nobody listens; a resume replays exactly those.
    post(
        &mut c,
        Some(&sid),
        &call(3, "kv_set", json!({"key":"watched","value":2})),
    );
    post(
        &mut c,
        Some(&sid),
        &call(4, "kv_delete", json!({"key":"watched"})),
    );
    let mut g = server.http();
    g.send(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", &sid),
            ("Last-Event-ID", &seen),
        ],
        None,
    );
    let (status, _) = g.read_head();
    assert_eq!(status, 200);
    let replay: Vec<SseEvent> = g.events().filter(|e| !e.comment).take(2).collect();
    assert_eq!(replay.len(), 2);
    for e in &replay {
        assert_eq!(e.json()["method"], "notifications/resources/updated");
    }
    // resources/read and unsubscribe.
    post(
        &mut c,
        Some(&sid),
        &call(5, "kv_set", json!({"key":"watched","value":{"n":3}})),
    );
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"kv://watched"}}),
    );
    assert_eq!(r.json()["result"]["contents"][0]["text"], "{\"n\":3}");
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"kv://missing"}}),
    );
    assert_eq!(r.json()["error"]["code"], -32002);
    let r = post(
        &mut c,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":8,"method":"resources/unsubscribe","params":{"uri":"kv://watched"}}),
    );
    assert_eq!(r.json()["result"], json!({}));
}

#[test]
fn idle_sessions_expire() {
    let server = Server::start_http(&["--cores", "0", "--session-idle-ttl-ms", "200"]);
    let sid = initialize(&server);
    let mut c = server.http();
    assert_eq!(
        post(
            &mut c,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":1,"method":"ping"})
        )
        .status,
        200
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        post(
            &mut c,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":2,"method":"ping"})
        )
        .status,
        404
    );
}

#[test]
fn session_limit_answers_503() {
    let server = Server::start_http(&["--cores", "0", "--max-sessions-per-shard", "2"]);
    initialize(&server);
    initialize(&server);
    let mut c = server.http();
    let r = post(
        &mut c,
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}),
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some());
    assert!(r.header("mcp-session-id").is_none());
}

#[test]
fn requests_for_a_session_are_served_by_its_owner_from_any_core() {
    let cores = allowed_cores();
    assert!(
        cores.len() >= 2,
        "this test needs 2 CPUs, the process may use {cores:?}"
    );
    let list = format!("{},{}", cores[0], cores[1]);
    let mut server = Server::start_http(&["--cores", &list]);
    let sid = initialize(&server);
    let mut received_on = std::collections::HashSet::new();
    for i in 0..200u64 {
        // A new connection each time, so SO_REUSEPORT spreads them.
        let mut c = server.http();
        let r = post(
            &mut c,
            Some(&sid),
            &call(100 + i, "echo", json!({"text": format!("m{i}")})),
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["id"], 100 + i);
        assert_eq!(r.json()["result"]["content"][0]["text"], format!("m{i}"));
        received_on.insert(r.header("x-tessera-shard").unwrap().to_owned());
        if received_on.len() == 2 && i >= 20 {
            break;
        }
    }
    assert_eq!(received_on.len(), 2, "requests should reach both shards");
    // An SSE response relayed from the owner to the other core.
    let owner_shard = u32::from_str_radix(&sid[..4], 16).unwrap().to_string();
    let mut relayed_stream = false;
    for _ in 0..100 {
        let mut c = server.http();
        let b = serde_json::to_vec(&sleep_with_progress(500, 40)).unwrap();
        c.send(
            "POST",
            "/mcp",
            &[CT, ACCEPT, V, ("Mcp-Session-Id", &sid)],
            Some(&b),
        );
        let (status, headers) = c.read_head();
        assert_eq!(status, 200);
        let shard = headers
            .iter()
            .find(|(k, _)| k == "x-tessera-shard")
            .unwrap()
            .1
            .clone();
        let events: Vec<SseEvent> = c
            .events()
            .filter(|e| !e.comment && !e.data.is_empty())
            .collect();
        assert!(events.len() >= 2, "progress and response: {events:?}");
        assert_eq!(
            events.last().unwrap().json()["result"]["content"][0]["text"],
            "slept 40 ms"
        );
        if shard != owner_shard {
            relayed_stream = true;
            break;
        }
    }
    assert!(
        relayed_stream,
        "no SSE request landed on the non-owner shard"
    );
    let r = server
        .http()
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], None);
    assert_eq!(r.status, 200);
    assert!(server.stop_with(libc::SIGTERM).success());
    let err = server.stderr();
    let relayed: u64 = err
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mesh_requests_sent="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(relayed > 0, "some requests crossed cores:\n{err}");
}
