//! The MCP surface beyond tools, over a real TCP connection against
//! `--fixtures conformance`: prompts, resources and templates, completion,
//! pagination, logging, progress, cancellation, server-to-client requests
//! (legacy) and multi-round requests (modern), subscriptions, list changes.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const MODERN: &str = "2026-07-28";

fn fixtures(extra: &[&str]) -> Server {
    let mut args = vec!["--fixtures", "conformance"];
    if !extra.contains(&"--cores") {
        args.extend_from_slice(&["--cores", "0"]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Every CPU the test may use (two here), so connections land on
/// different shards and changes must cross the mesh.
fn all_cores() -> String {
    allowed_cores()
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn init_with(c: &mut Client, caps: Value) {
    let r = c.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": {"name": "t", "version": "1"}}),
    );
    assert!(r["result"]["capabilities"]["prompts"].is_object(), "{r}");
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
}

/// Reads messages until the response with `id`, returning it and what came
/// before it.
fn until_response(c: &mut Client, id: Value) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let m = c.recv();
        if m["id"] == id && m.get("method").is_none() {
            return (m, before);
        }
        before.push(m);
    }
}

/// Calls a tool, skipping notifications that arrive before the answer.
fn call_skipping(c: &mut Client, id: u64, name: &str, args: Value) -> Value {
    c.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}}));
    until_response(c, json!(id)).0
}

fn modern_meta(caps: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": caps,
    })
}

#[test]
fn prompts_resources_templates_and_completion() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));

    let r = c.request("prompts/list", json!({}));
    let names: Vec<&str> = r["result"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"test_prompt_with_arguments"), "{r}");
    assert!(
        !names.contains(&"test_dynamic_prompt"),
        "disabled prompts are not listed: {r}"
    );

    let r = c.request(
        "prompts/get",
        json!({"name": "test_prompt_with_arguments", "arguments": {"arg1": "a", "arg2": "b"}}),
    );
    assert_eq!(
        r["result"]["messages"][0]["content"]["text"],
        "Prompt with arguments: arg1='a', arg2='b'"
    );
    let r = c.request(
        "prompts/get",
        json!({"name": "test_prompt_with_arguments", "arguments": {"arg1": "a"}}),
    );
    assert_eq!(error_code(&r), -32602, "missing required argument: {r}");
    let r = c.request("prompts/get", json!({"name": "test_prompt_with_image"}));
    assert_eq!(r["result"]["messages"][0]["content"]["type"], "image");

    let r = c.request("resources/read", json!({"uri": "test://static-binary"}));
    assert_eq!(r["result"]["contents"][0]["mimeType"], "image/png");
    assert!(r["result"]["contents"][0]["blob"].as_str().unwrap().len() > 20);
    let r = c.request("resources/read", json!({"uri": "test://template/7/data"}));
    let body: Value =
        serde_json::from_str(r["result"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"id": "7", "templateTest": true, "data": "Data for ID: 7"})
    );
    let r = c.request("resources/read", json!({"uri": "test://nope"}));
    assert_eq!(error_code(&r), -32002, "legacy resource-not-found: {r}");
    assert_eq!(r["error"]["data"]["uri"], "test://nope");

    let r = c.request(
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "par"}}),
    );
    assert_eq!(
        r["result"]["completion"]["values"],
        json!(["paris", "park", "party"])
    );
    let r = c.request(
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": "test://template/{id}/data"}, "argument": {"name": "id", "value": "12"}}),
    );
    assert_eq!(r["result"]["completion"]["values"], json!(["123"]));
}

#[test]
fn lists_page_with_signed_cursors() {
    let server = fixtures(&["--page-size", "4"]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let params = match &cursor {
            Some(cur) => json!({"cursor": cur}),
            None => json!({}),
        };
        let r = c.request("tools/list", params);
        let page = r["result"]["tools"].as_array().unwrap();
        assert!(page.len() <= 4, "{r}");
        seen.extend(page.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match r["result"]["nextCursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no tool twice: {seen:?}");
    assert!(
        seen.len() > 20 && seen.contains(&"test_simple_text".to_owned()),
        "{seen:?}"
    );
    let r = c.request("tools/list", json!({"cursor": "not-a-cursor"}));
    assert_eq!(error_code(&r), -32602, "{r}");
    let tampered = format!("{}x", cursor.unwrap_or_default());
    let r = c.request("tools/list", json!({"cursor": tampered}));
    assert_eq!(error_code(&r), -32602, "{r}");
}

#[test]
fn logging_is_filtered_by_level_and_progress_is_reported() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    // No level set: no log messages at all.
    let (r, before) = {
        c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "test_logging_tool", "arguments": {}}}));
        until_response(&mut c, json!(1))
    };
    assert_eq!(result_text(&r), "logged");
    assert!(before.is_empty(), "{before:?}");

    let r = c.request("logging/setLevel", json!({"level": "error"}));
    assert!(r["result"].is_object(), "{r}");
    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_logging_tool", "arguments": {}}}));
    let (_, before) = until_response(&mut c, json!(2));
    let levels: Vec<&str> = before
        .iter()
        .map(|m| m["params"]["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["error", "critical", "alert", "emergency"]);

    c.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "p-1"}}}));
    let (_, before) = until_response(&mut c, json!(3));
    let progress: Vec<(Value, Value)> = before
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            (
                m["params"]["progressToken"].clone(),
                m["params"]["progress"].clone(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (json!("p-1"), json!(0)),
            (json!("p-1"), json!(50)),
            (json!("p-1"), json!(100))
        ]
    );
}

#[test]
fn cancellation_stops_the_handler_and_sends_no_response() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    c.send(&json!({"jsonrpc": "2.0", "id": "slow", "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 3000}}}));
    std::thread::sleep(Duration::from_millis(100));
    c.send(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow", "reason": "test"}}));
    let started = Instant::now();
    // The next answer is the ping's: the cancelled request never answers.
    let r = c.request("ping", json!({}));
    assert!(r["result"].is_object(), "{r}");
    c.send(&json!({"jsonrpc": "2.0", "id": "after", "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 3500}}}));
    let (r, before) = until_response(&mut c, json!("after"));
    assert!(
        started.elapsed() >= Duration::from_millis(3000),
        "waited for the later sleep"
    );
    assert!(
        before.iter().all(|m| m["id"] != "slow"),
        "cancelled request answered: {before:?}"
    );
    assert_eq!(result_text(&r), "slept 3500 ms");
}

#[test]
fn legacy_server_to_client_requests_on_the_same_connection() {
    let server = fixtures(&["--client-request-timeout-ms", "500"]);
    let mut c = server.connect();
    init_with(
        &mut c,
        json!({"sampling": {}, "elicitation": {}, "roots": {}}),
    );

    c.send(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "test_sampling", "arguments": {"prompt": "hi?"}}}));
    let ask = c.recv();
    assert_eq!(ask["method"], "sampling/createMessage", "{ask}");
    assert_eq!(ask["params"]["messages"][0]["content"]["text"], "hi?");
    c.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant", "content": {"type": "text", "text": "hello"}, "model": "m"}}));
    let (r, _) = until_response(&mut c, json!(10));
    assert_eq!(result_text(&r), "LLM response: hello");

    c.send(&json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "test_elicitation", "arguments": {"message": "who?"}}}));
    let ask = c.recv();
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    c.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "error": {"code": -1, "message": "user went away"}}));
    let (r, _) = until_response(&mut c, json!(11));
    assert_eq!(
        error_code(&r),
        -1,
        "the client's error reaches the caller: {r}"
    );

    // URL mode: the request names the URL; completion is announced after.
    c.send(&json!({"jsonrpc": "2.0", "id": 13, "method": "tools/call", "params": {"name": "test_url_elicitation", "arguments": {}}}));
    let ask = c.recv();
    assert_eq!(ask["params"]["mode"], "url", "{ask}");
    assert_eq!(ask["params"]["elicitationId"], "conformance-url-1");
    c.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}}));
    let (r, before) = until_response(&mut c, json!(13));
    assert_eq!(
        result_text(&r),
        "URL elicitation: action=accept, content=null"
    );
    assert!(
        before
            .iter()
            .any(|m| m["method"] == "notifications/elicitation/complete"
                && m["params"]["elicitationId"] == "conformance-url-1"),
        "{before:?}"
    );

    // Unanswered: the handler gets a timeout after --client-request-timeout-ms.
    c.send(&json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "test_list_roots", "arguments": {}}}));
    let ask = c.recv();
    assert_eq!(ask["method"], "roots/list");
    let (r, _) = until_response(&mut c, json!(12));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{r}"
    );
}

#[test]
fn legacy_missing_client_capability_is_an_error() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    let r = c.call_tool("test_sampling", json!({"prompt": "x"}));
    assert_eq!(error_code(&r), -32021, "{r}");
    assert_eq!(
        r["error"]["data"]["requiredCapabilities"],
        json!({"sampling": {}})
    );
}

#[test]
fn subscriptions_and_list_changes_reach_the_connection() {
    let cores = all_cores();
    let server = fixtures(&["--cores", &cores]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    let mut other = server.connect();
    init_with(&mut other, json!({}));

    let r = c.request(
        "resources/subscribe",
        json!({"uri": "test://watched-resource"}),
    );
    assert!(r["result"].is_object(), "{r}");
    let r = call_skipping(&mut other, 1, "test_trigger_resource_update", json!({}));
    assert!(!r["result"]["isError"].as_bool().unwrap_or(false), "{r}");
    let n = c.recv();
    assert_eq!(n["method"], "notifications/resources/updated", "{n}");
    assert_eq!(n["params"]["uri"], "test://watched-resource");

    let r = call_skipping(&mut other, 2, "test_trigger_tool_change", json!({}));
    assert_eq!(result_text(&r), "test_dynamic_tool enabled=true");
    let n = c.recv();
    assert_eq!(n["method"], "notifications/tools/list_changed", "{n}");
    let r = c.request("tools/list", json!({}));
    assert!(r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "test_dynamic_tool"));

    let r = c.request(
        "resources/unsubscribe",
        json!({"uri": "test://watched-resource"}),
    );
    assert!(r["result"].is_object(), "{r}");
    call_skipping(&mut other, 3, "test_trigger_resource_update", json!({}));
    // Nothing arrives now; a ping answers first.
    let r = c.request("ping", json!({}));
    assert!(r["result"].is_object(), "unsubscribed session got: {r}");
}

#[test]
fn modern_multi_round_requests_over_tcp() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    let meta = modern_meta(json!({"elicitation": {}}));
    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_multi_round", "arguments": {}, "_meta": meta}),
    );
    assert_eq!(r["result"]["resultType"], "input_required", "{r}");
    assert!(r["result"]["inputRequests"]["step1"].is_object(), "{r}");
    let state1 = r["result"]["requestState"].as_str().unwrap().to_owned();

    let answer = json!({"action": "accept", "content": {"name": "Ada"}});
    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_multi_round", "arguments": {}, "_meta": meta,
               "inputResponses": {"step1": answer}, "requestState": state1}),
    );
    assert_eq!(r["result"]["resultType"], "input_required", "{r}");
    assert!(r["result"]["inputRequests"]["step2"].is_object(), "{r}");
    let state2 = r["result"]["requestState"].as_str().unwrap().to_owned();

    // State is bound to its tool and signed.
    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_tampered_state", "arguments": {}, "_meta": meta,
               "inputResponses": {"user_name": answer}, "requestState": state2}),
    );
    assert_eq!(error_code(&r), -32602, "state minted for another tool: {r}");
    let mut forged = state2.clone().into_bytes();
    forged[3] ^= 1;
    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_multi_round", "arguments": {}, "_meta": meta,
               "inputResponses": {"step2": {"action": "accept", "content": {"color": "red"}}},
               "requestState": String::from_utf8(forged).unwrap()}),
    );
    assert_eq!(error_code(&r), -32602, "tampered state: {r}");

    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_multi_round", "arguments": {}, "_meta": meta,
               "inputResponses": {"step2": {"action": "accept", "content": {"color": "red"}}}, "requestState": state2}),
    );
    assert_eq!(r["result"]["resultType"], "complete", "{r}");
    assert_eq!(result_text(&r), "Ada's favorite color is red");

    // Without the capability the tool cannot ask: -32021.
    let r = c.request(
        "tools/call",
        json!({"name": "test_input_required_result_elicitation", "arguments": {}, "_meta": modern_meta(json!({}))}),
    );
    assert_eq!(error_code(&r), -32021, "{r}");
    let r = c.request(
        "resources/read",
        json!({"uri": "test://nope", "_meta": modern_meta(json!({}))}),
    );
    assert_eq!(error_code(&r), -32602, "modern resource-not-found: {r}");
}

#[test]
fn schema_validation_failures_are_tool_errors() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    let r = c.call_tool(
        "json_schema_2020_12_tool",
        json!({"name": "x", "contactMethod": "phone"}),
    );
    assert_eq!(
        r["result"]["isError"],
        json!(true),
        "if/then requires phone: {r}"
    );
    let r = c.call_tool(
        "json_schema_2020_12_tool",
        json!({"name": "x", "contactMethod": "phone", "phone": "123"}),
    );
    assert_eq!(r["result"]["isError"], Value::Null, "{r}");
    let r = c.request("tools/list", json!({}));
    let tool = r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "json_schema_2020_12_tool")
        .unwrap()
        .clone();
    assert_eq!(
        tool["inputSchema"]["$defs"]["address"]["$anchor"], "addressDef",
        "published unchanged"
    );
}

#[test]
fn legacy_experimental_tasks() {
    let server = fixtures(&["--max-tasks-per-shard", "2"]);
    let mut c = server.connect();
    init_with(&mut c, json!({}));
    let r = c.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    );
    assert_eq!(error_code(&r), -32600, "already initialized: {r}");

    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "slow_compute", "arguments": {"seconds": 0.3, "label": "a"}, "task": {"ttl": 60000}}}));
    let (r, _) = until_response(&mut c, json!(1));
    let task = &r["result"]["task"];
    let id = task["taskId"]
        .as_str()
        .expect("CreateTaskResult.task.taskId")
        .to_owned();
    assert_eq!(task["status"], "working", "{r}");
    assert_eq!(task["ttl"], 60000);
    assert!(task["createdAt"].as_str().unwrap().ends_with('Z'));

    // A task-required tool without params.task is refused.
    let r = c.call_tool("failing_job", json!({}));
    assert_eq!(error_code(&r), -32601, "{r}");

    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tasks/list", "params": {}}));
    let (r, _) = until_response(&mut c, json!(2));
    assert_eq!(r["result"]["tasks"][0]["taskId"], id.as_str(), "{r}");

    // tasks/result waits for the end; the status notification comes first.
    c.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tasks/result", "params": {"taskId": id}}));
    let (r, before) = until_response(&mut c, json!(3));
    assert!(result_text(&r).starts_with("Computed after 0.3 s a"), "{r}");
    assert_eq!(
        r["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        id.as_str()
    );
    assert!(
        before
            .iter()
            .any(|m| m["method"] == "notifications/tasks/status"
                && m["params"]["status"] == "completed"),
        "{before:?}"
    );
    c.send(&json!({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": id}}));
    let (r, _) = until_response(&mut c, json!(4));
    assert_eq!(r["result"]["status"], "completed", "{r}");

    // Cancelling a running task; cancelling it again is an error.
    c.send(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "slow_compute", "arguments": {"seconds": 30}, "task": {}}}));
    let (r, _) = until_response(&mut c, json!(5));
    let slow = r["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    // The table holds two tasks: a third is refused.
    c.send(&json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "slow_compute", "arguments": {"seconds": 1}, "task": {}}}));
    let (r, _) = until_response(&mut c, json!(6));
    assert_eq!(error_code(&r), -31010, "max-tasks-per-shard: {r}");
    c.send(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tasks/cancel", "params": {"taskId": slow}}),
    );
    let (r, _) = until_response(&mut c, json!(7));
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    c.send(
        &json!({"jsonrpc": "2.0", "id": 8, "method": "tasks/cancel", "params": {"taskId": slow}}),
    );
    let (r, _) = until_response(&mut c, json!(8));
    assert_eq!(error_code(&r), -32602, "{r}");

    // Another session sees none of these tasks.
    let mut other = server.connect();
    init_with(&mut other, json!({}));
    let r = other.request("tasks/get", json!({"taskId": id}));
    assert_eq!(error_code(&r), -32602, "{r}");
}

#[test]
fn modern_tasks_extension_over_tcp() {
    let server = fixtures(&[]);
    let mut c = server.connect();
    let ext = json!({"elicitation": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}});
    let meta = modern_meta(ext);
    let r = c.request(
        "tools/call",
        json!({"name": "confirm_delete", "arguments": {"path": "/tmp/x"}, "_meta": meta}),
    );
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    let id = r["result"]["taskId"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..50 {
        status = c.request("tasks/get", json!({"taskId": id, "_meta": meta}));
        if status["result"]["status"] == "input_required" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        status["result"]["inputRequests"]["confirm"].is_object(),
        "{status}"
    );
    let r = c.request(
        "tasks/update",
        json!({"taskId": id, "_meta": meta, "inputResponses": {"confirm": {"action": "accept", "content": {"confirm": true}}}}),
    );
    assert_eq!(r["result"]["resultType"], "complete", "{r}");
    for _ in 0..50 {
        status = c.request("tasks/get", json!({"taskId": id, "_meta": meta}));
        if status["result"]["status"] == "completed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status["result"]["result"]["content"][0]["text"], "Deleted /tmp/x",
        "{status}"
    );
    // Without the extension: task methods need it, required-task tools refuse.
    let plain = modern_meta(json!({}));
    let r = c.request("tasks/get", json!({"taskId": id, "_meta": plain}));
    assert_eq!(error_code(&r), -32021, "{r}");
    let r = c.request(
        "tools/call",
        json!({"name": "failing_job", "arguments": {}, "_meta": plain}),
    );
    assert_eq!(
        r["error"]["data"]["requiredCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"],
        json!({})
    );
}
