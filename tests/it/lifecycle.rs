//! MCP lifecycle over TCP: version negotiation, the initialization gate,
//! notifications, id echoing, tools/list.

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn initialize_negotiates_every_supported_version() {
    initialize_negotiates_every_supported_version_on(Server::start(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn initialize_negotiates_every_supported_version_over_tls() {
    let pki = TestPki::new("initialize_negotiates_ev");
    initialize_negotiates_every_supported_version_on(Server::start_tls(&pki, &["--cores", "0"]));
}

fn initialize_negotiates_every_supported_version_on(server: Server) {
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let mut c = server.connect();
        let r = c.request(
            "initialize",
            json!({"protocolVersion": v, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        );
        assert_eq!(r["result"]["protocolVersion"], v, "{r}");
        assert!(r["result"]["capabilities"]["tools"].is_object(), "{r}");
        assert_eq!(r["result"]["serverInfo"]["name"], "tessera");
        assert!(r["result"]["serverInfo"]["version"].is_string());
    }
    let mut c = server.connect();
    let r = c.request(
        "initialize",
        json!({"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    );
    assert_eq!(
        r["result"]["protocolVersion"], "2025-11-25",
        "unknown versions get the newest: {r}"
    );
}

#[test]
fn only_initialize_and_ping_before_initialization() {
    only_initialize_and_ping_before_initialization_on(Server::start(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn only_initialize_and_ping_before_initialization_over_tls() {
    let pki = TestPki::new("only_initialize_and_ping");
    only_initialize_and_ping_before_initialization_on(Server::start_tls(&pki, &["--cores", "0"]));
}

fn only_initialize_and_ping_before_initialization_on(server: Server) {
    let mut c = server.connect();
    assert_eq!(error_code(&c.request("tools/list", Value::Null)), -32600);
    assert_eq!(
        error_code(&c.call_tool("echo", json!({"text": "x"}))),
        -32600
    );
    let pong = c.request("ping", Value::Null);
    assert_eq!(pong["result"], json!({}), "{pong}");
    c.initialize();
    assert!(c.request("tools/list", Value::Null)["result"]["tools"].is_array());
}

#[test]
fn initialize_is_checked() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    assert_eq!(error_code(&c.request("initialize", json!({}))), -32602);
    assert_eq!(
        error_code(&c.request("initialize", json!({"protocolVersion": 5}))),
        -32602
    );
    assert_eq!(
        error_code(&c.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": 3})
        )),
        -32602
    );
    c.initialize();
    let again = c.request("initialize", json!({"protocolVersion": "2025-11-25"}));
    assert_eq!(error_code(&again), -32600, "second initialize: {again}");
}

#[test]
fn notifications_are_never_answered() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/no_such_thing", "params": {}}));
    c.send(&json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"}}));
    // A client response to a request the server never sent is ignored too.
    c.send(&json!({"jsonrpc": "2.0", "id": 77, "result": {}}));
    let r = c.request("ping", Value::Null);
    assert_eq!(
        r["result"],
        json!({}),
        "the first line back must answer the ping: {r}"
    );
}

#[test]
fn ids_are_echoed_unchanged() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let ids = [
        json!("abc"),
        json!("with \"quotes\" and \\ and é"),
        json!(""),
        json!(0),
        json!(-5),
        json!(9007199254740993u64),
        json!(18446744073709551615u64),
        json!(1.5),
    ];
    for id in ids {
        c.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
        let r = c.recv();
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["result"], json!({}));
    }
}

#[test]
fn tools_list_describes_every_builtin_tool() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let r = c.request("tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().expect("tools array");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["echo", "add", "sleep", "kv_set", "kv_get", "kv_delete"]
    );
    for t in tools {
        assert!(
            t["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{t}"
        );
        let schema = &t["inputSchema"];
        assert_eq!(schema["type"], "object", "{t}");
        assert!(schema["properties"].is_object(), "{t}");
        assert!(schema["required"].is_array(), "{t}");
    }
    assert_eq!(tools[5]["outputSchema"]["type"], "object");
    let bad = c.request("tools/list", json!({"cursor": "nope"}));
    assert_eq!(error_code(&bad), -32602, "{bad}");
}
