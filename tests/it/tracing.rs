//! OpenTelemetry tracing (`--otlp-endpoint`) against a real OTLP/HTTP
//! receiver process (tests/interop/otlp_receiver.py, which decodes the
//! exports with the official opentelemetry-proto definitions): the client's
//! trace continued from `params._meta.traceparent` and from the HTTP
//! header, the semantic-convention names and attributes, child spans for
//! cross-core hops and command-tool runs, parent-based sampling, and the
//! `mcp.server.operation.duration` histogram.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;
use serde_json::{json, Value};

/// OTLP's SPAN_KIND_SERVER and SPAN_KIND_INTERNAL; STATUS_CODE_ERROR.
const SERVER: i64 = 2;
const INTERNAL: i64 = 1;
const STATUS_ERROR: i64 = 2;

struct Receiver {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let mut child = Command::new(interop_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/otlp_receiver.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let port = first["port"].as_u64().expect("the receiver's port") as u16;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver { child, port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Spans of trace `trace_id` seen so far.
    fn spans(&self, trace_id: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["signal"] == "span" && v["trace_id"] == trace_id)
            .cloned()
            .collect()
    }

    /// Waits until `check` holds for the spans of `trace_id`.
    fn wait_spans(&self, trace_id: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let ok = eventually(IO_TIMEOUT, || check(&self.spans(trace_id)));
        let spans = self.spans(trace_id);
        assert!(ok, "trace {trace_id}: {spans:#?}");
        spans
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOOLS: &str = r#"
[[tool]]
name = "say"
description = "echo the text back"
command = ["/bin/echo", "-n", "{text}"]
input_schema = { type = "object", properties = { text = { type = "string" } }, required = ["text"] }
"#;

fn traceparent(trace_id: &str, parent: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{parent}-{}",
        if sampled { "01" } else { "00" }
    )
}

fn meta_call(tool: &str, args: Value, traceparent: &str) -> Value {
    json!({"name": tool, "arguments": args, "_meta": {"traceparent": traceparent, "tracestate": "vendor=x"}})
}

fn server_span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == SERVER && s["name"] == name)
        .unwrap_or_else(|| panic!("no server span {name:?} in {spans:#?}"))
}

#[test]
fn spans_continue_the_clients_trace_with_the_mcp_attributes() {
    let receiver = Receiver::start();
    let dir = std::env::temp_dir().join(format!("tessera-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tools.toml");
    std::fs::write(&config, TOOLS).unwrap();
    let cores: Vec<String> = allowed_cores()
        .iter()
        .take(2)
        .map(|c| c.to_string())
        .collect();
    let endpoint = receiver.endpoint();
    let server = Server::start(&[
        "--cores",
        &cores.join(","),
        "--config",
        config.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
        "--otlp-export-interval-ms",
        "100",
    ]);
    let mut c = server.connect();
    c.initialize();

    // A sampled parent in _meta: the server span continues its trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = c.request(
        "tools/call",
        meta_call(
            "echo",
            json!({"text": "hi"}),
            &traceparent(trace, parent, true),
        ),
    );
    assert_eq!(result_text(&r), "hi");
    let id = r["id"].to_string();
    let spans = receiver.wait_spans(trace, |s| !s.is_empty());
    let s = server_span(&spans, "tools/call echo");
    assert_eq!(s["parent_span_id"], parent);
    assert_eq!(s["trace_state"], "vendor=x");
    assert_eq!(s["service"], "tessera");
    let a = &s["attributes"];
    assert_eq!(a["mcp.method.name"], "tools/call");
    assert_eq!(a["gen_ai.tool.name"], "echo");
    assert_eq!(a["gen_ai.operation.name"], "execute_tool");
    assert_eq!(a["jsonrpc.request.id"], id);
    assert_eq!(a["mcp.protocol.version"], "2025-11-25");
    assert!(a.get("error.type").is_none(), "{s}");
    assert_ne!(s["status"], STATUS_ERROR);

    // A command tool's run is a child of its request's span.
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = c.request(
        "tools/call",
        meta_call(
            "say",
            json!({"text": "run"}),
            &traceparent(trace, parent, true),
        ),
    );
    assert_eq!(result_text(&r), "run");
    let spans = receiver.wait_spans(trace, |s| s.len() >= 2);
    let call = server_span(&spans, "tools/call say");
    let run = spans
        .iter()
        .find(|s| s["name"] == "command say")
        .expect("the command's span");
    assert_eq!(run["kind"], INTERNAL);
    assert_eq!(run["parent_span_id"], call["span_id"]);
    assert_eq!(run["attributes"]["gen_ai.tool.name"], "say");

    // An error: error.type is the JSON-RPC code and the status is Error.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let r = c.request(
        "tools/call",
        meta_call("no_such_tool", json!({}), &traceparent(trace, parent, true)),
    );
    let code = error_code(&r);
    let spans = receiver.wait_spans(trace, |s| !s.is_empty());
    let s = server_span(&spans, "tools/call no_such_tool");
    assert_eq!(s["attributes"]["error.type"], code.to_string());
    assert_eq!(
        s["attributes"]["rpc.response.status_code"],
        code.to_string()
    );
    assert_eq!(s["status"], STATUS_ERROR);

    // Cross-core hops: kv keys live on their owner shard.
    if cores.len() > 1 {
        let trace = "7bf92f3577b34da6a3ce929d0e0e4739";
        for k in 0..16 {
            let args = json!({"key": format!("trace-key-{k}"), "value": "v"});
            let r = c.request(
                "tools/call",
                meta_call("kv_set", args, &traceparent(trace, parent, true)),
            );
            assert!(r.get("result").is_some(), "{r}");
        }
        let spans = receiver.wait_spans(trace, |s| {
            s.iter().any(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("hop kv shard"))
            })
        });
        let hop = spans
            .iter()
            .find(|s| s["name"].as_str().unwrap().starts_with("hop kv shard"))
            .unwrap();
        assert!(
            spans
                .iter()
                .any(|s| s["kind"] == SERVER && s["span_id"] == hop["parent_span_id"]),
            "a hop's parent is its request's span: {spans:#?}"
        );
    }

    // Parent-based: a parent that is not sampled is not traced, and with
    // --trace-sample-ratio 0 (the default) neither is a request without one.
    let unsampled = "8bf92f3577b34da6a3ce929d0e0e4730";
    c.request(
        "tools/call",
        meta_call(
            "echo",
            json!({"text": "no"}),
            &traceparent(unsampled, parent, false),
        ),
    );
    let untraced = c.request(
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "none"}}),
    );
    let untraced_id = untraced["id"].to_string();
    // A sampled request after both: once it is exported, theirs would be too.
    let marker = "9bf92f3577b34da6a3ce929d0e0e4731";
    c.request(
        "tools/call",
        meta_call(
            "echo",
            json!({"text": "m"}),
            &traceparent(marker, parent, true),
        ),
    );
    receiver.wait_spans(marker, |s| !s.is_empty());
    assert!(receiver.spans(unsampled).is_empty());
    let all = receiver.seen.lock().unwrap().clone();
    assert!(
        !all.iter().any(|s| s["signal"] == "span"
            && s["attributes"]["jsonrpc.request.id"] == untraced_id
            && s["attributes"]["mcp.method.name"] == "tools/call"),
        "a request without a parent was traced at ratio 0"
    );

    // Every request, traced or not, is in the duration histogram.
    let ok = eventually(IO_TIMEOUT, || {
        receiver.seen.lock().unwrap().iter().any(|m| {
            m["signal"] == "metric"
                && m["name"] == "mcp.server.operation.duration"
                && m["unit"] == "s"
                && m["attributes"]["mcp.method.name"] == "tools/call"
                && m["attributes"]["gen_ai.tool.name"] == "echo"
                && m["count"].as_u64().unwrap_or(0) >= 4
        })
    });
    assert!(
        ok,
        "no mcp.server.operation.duration for tools/call echo: {:#?}",
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["signal"] == "metric")
            .collect::<Vec<_>>()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http_requests_continue_the_header_trace_and_name_their_session() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let server = Server::start_http(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-export-interval-ms",
        "100",
    ]);
    // Modern era, the trace in the HTTP header only.
    let trace = "abf92f3577b34da6a3ce929d0e0e4732";
    let parent = "10f067aa0ba902b7";
    let tp = traceparent(trace, parent, true);
    let body = json!({"jsonrpc":"2.0","id":"req-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"h"},"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{}}}});
    let r = modern_call_with(&server, &[("traceparent", &tp)], "echo", &body.to_string());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let spans = receiver.wait_spans(trace, |s| !s.is_empty());
    let s = server_span(&spans, "tools/call echo");
    assert_eq!(s["parent_span_id"], parent);
    assert_eq!(s["attributes"]["mcp.protocol.version"], "2026-07-28");
    assert_eq!(s["attributes"]["jsonrpc.request.id"], "req-1");
    assert!(s["attributes"].get("mcp.session.id").is_none(), "{s}");

    // A legacy session: its id is on the span; _meta wins over the header.
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = legacy_post(&server, None, &init);
    let sid = r
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let meta_trace = "bbf92f3577b34da6a3ce929d0e0e4733";
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":meta_call("echo", json!({"text":"x"}), &traceparent(meta_trace, parent, true))});
    let r = legacy_post(&server, Some(&sid), &call);
    assert_eq!(rpc_message(&r)["result"]["content"][0]["text"], "x");
    let spans = receiver.wait_spans(meta_trace, |s| !s.is_empty());
    let s = server_span(&spans, "tools/call echo");
    assert_eq!(s["attributes"]["mcp.session.id"], sid);
    assert_eq!(s["attributes"]["mcp.protocol.version"], "2025-11-25");
}
