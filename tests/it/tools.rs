//! The built-in tools over TCP, including argument errors (tool results with
//! `isError: true`) and protocol errors (-32602).

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn is_tool_error(r: &Value) -> bool {
    r["result"]["isError"] == json!(true)
}

#[test]
fn echo_returns_its_text() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    for text in [
        "hello",
        "",
        "line\nbreak \"quoted\" \\ tab\t",
        "ünïcödé ✓ 😀",
        "\u{1}\u{1f}",
    ] {
        let r = c.call_tool("echo", json!({"text": text}));
        assert_eq!(result_text(&r), text, "{r}");
        assert!(!is_tool_error(&r));
    }
    for bad in [
        json!({}),
        json!({"text": 5}),
        json!({"text": "x", "extra": 1}),
    ] {
        let r = c.call_tool("echo", bad.clone());
        assert!(is_tool_error(&r), "{bad} must be a tool error: {r}");
        assert!(result_text(&r).contains("invalid arguments"), "{r}");
    }
}

#[test]
fn add_is_exact_for_integers() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let cases = [
        (json!(2), json!(3), json!(5)),
        (json!(-7), json!(2), json!(-5)),
        (
            json!(9007199254740993u64),
            json!(1),
            json!(9007199254740994u64),
        ),
        (json!(1.5), json!(2.25), json!(3.75)),
    ];
    for (a, b, sum) in cases {
        let r = c.call_tool("add", json!({"a": a, "b": b}));
        assert_eq!(r["result"]["structuredContent"]["sum"], sum, "{r}");
        assert_eq!(result_text(&r), sum.to_string());
    }
    for bad in [
        json!({"a": 1}),
        json!({"a": "1", "b": 2}),
        json!({"a": 1, "b": null}),
    ] {
        assert!(is_tool_error(&c.call_tool("add", bad)));
    }
}

#[test]
fn sleep_yields_the_core_to_other_requests() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let t0 = Instant::now();
    c.send(&json!({"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"sleep","arguments":{"ms":300}}}));
    c.send(&json!({"jsonrpc":"2.0","id":"fast","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}));
    let first = c.recv();
    assert_eq!(
        first["id"], "fast",
        "echo must not wait behind sleep: {first}"
    );
    let second = c.recv();
    assert_eq!(second["id"], "slow");
    assert_eq!(result_text(&second), "slept 300 ms");
    assert!(t0.elapsed() >= Duration::from_millis(300));

    // Another connection on the same core is served while a sleep runs:
    // its ping is answered before the sleep ends (checked by order, not by
    // a deadline a loaded machine could miss).
    c.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":2000}}}));
    let mut other = server.connect();
    assert_eq!(other.request("ping", Value::Null)["result"], json!({}));
    c.set_read_timeout(Duration::from_millis(1));
    assert!(c.try_recv().is_none(), "the sleep answered before the ping");
    c.set_read_timeout(IO_TIMEOUT);
    assert_eq!(c.recv()["id"], 1);

    for bad in [
        json!({"ms": -1}),
        json!({"ms": 60001}),
        json!({"ms": "10"}),
        json!({"ms": 1.5}),
        json!({}),
    ] {
        let r = c.call_tool("sleep", bad.clone());
        assert!(is_tool_error(&r), "{bad}: {r}");
    }
}

#[test]
fn tools_call_params_are_checked() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    assert_eq!(error_code(&c.call_tool("no_such_tool", json!({}))), -32602);
    assert_eq!(error_code(&c.request("tools/call", json!({}))), -32602);
    assert_eq!(
        error_code(&c.request("tools/call", json!({"name": 3}))),
        -32602
    );
    assert_eq!(
        error_code(&c.request("tools/call", json!({"name": "echo", "arguments": [1]}))),
        -32602
    );
    assert_eq!(error_code(&c.request("tools/call", Value::Null)), -32602);
}

#[test]
fn kv_tools_store_any_json_value() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let values = [
        json!({"a": [1, 2, {"b": null}]}),
        json!("str \"q\" \n"),
        json!(12.5),
        json!(null),
        json!([]),
    ];
    for (i, v) in values.iter().enumerate() {
        let key = format!("key-{i}");
        let r = c.call_tool("kv_set", json!({"key": key, "value": v}));
        assert_eq!(r["result"]["structuredContent"]["created"], true, "{r}");
        let r = c.call_tool("kv_get", json!({"key": key}));
        assert_eq!(
            r["result"]["structuredContent"],
            json!({"found": true, "value": v}),
            "{r}"
        );
        let text: Value = serde_json::from_str(result_text(&r)).unwrap();
        assert_eq!(&text, v);
    }
    let r = c.call_tool("kv_set", json!({"key": "key-0", "value": 1}));
    assert_eq!(r["result"]["structuredContent"]["created"], false);
    let r = c.call_tool("kv_delete", json!({"key": "key-0"}));
    assert_eq!(r["result"]["structuredContent"]["deleted"], true);
    let r = c.call_tool("kv_delete", json!({"key": "key-0"}));
    assert_eq!(r["result"]["structuredContent"]["deleted"], false);
    let r = c.call_tool("kv_get", json!({"key": "key-0"}));
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"found": false, "value": null})
    );
    assert_eq!(
        r["result"]["_meta"]["tessera/shard"],
        json!({"served_by": 0, "owner": 0})
    );
    for bad in [
        json!({}),
        json!({"key": ""}),
        json!({"key": 1, "value": 1}),
        json!({"key": "k"}),
    ] {
        assert!(is_tool_error(&c.call_tool("kv_set", bad)));
    }
}

#[test]
fn kv_limits_are_enforced() {
    let server = Server::start(&[
        "--cores",
        "0",
        "--kv-max-keys-per-shard",
        "2",
        "--kv-max-key-bytes",
        "8",
        "--kv-max-value-bytes",
        "16",
    ]);
    let mut c = server.connect();
    c.initialize();
    assert!(!is_tool_error(
        &c.call_tool("kv_set", json!({"key": "a", "value": 1}))
    ));
    assert!(!is_tool_error(
        &c.call_tool("kv_set", json!({"key": "b", "value": 2}))
    ));
    let full = c.call_tool("kv_set", json!({"key": "c", "value": 3}));
    assert!(is_tool_error(&full), "{full}");
    assert!(result_text(&full).contains("kv store full"), "{full}");
    // Updating a key that exists still works at the bound.
    assert!(!is_tool_error(
        &c.call_tool("kv_set", json!({"key": "a", "value": 9}))
    ));
    let long_key = c.call_tool("kv_get", json!({"key": "123456789"}));
    assert!(
        is_tool_error(&long_key) && result_text(&long_key).contains("kv-max-key-bytes"),
        "{long_key}"
    );
    let big = c.call_tool("kv_set", json!({"key": "a", "value": "0123456789abcdef"}));
    assert!(
        is_tool_error(&big) && result_text(&big).contains("kv-max-value-bytes"),
        "{big}"
    );
}
