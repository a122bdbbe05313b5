//! 2026-07-28 requests over Streamable HTTP: validated against their
//! headers, then served statelessly by a session that lives as long as the
//! request, on whatever shard received it (no hop, no stored state).
//!
//! The response is JSON unless the request produces a related message
//! (progress, a log line, a listen acknowledgement) before its result, or the
//! client accepts only a stream: then it is an SSE stream, the form that can
//! carry them. The HTTP status of an error follows its JSON-RPC code, taken
//! from the answer as data.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Instant;

use super::head::Headers;
use base64::Engine;
use bytes::Bytes;
use simd_json::prelude::*;

use super::relay::Accepts;
use super::request::{header, padded};
use super::response::{sse_event, trim_newline, McpBody, McpResponse, SseSource};
use super::HttpShard;
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::mcp::{self, code, meta};
use crate::runtime::local::Pipe;
use crate::server::auth::Identity;
use crate::server::core::Core;
use crate::server::placement;
use crate::server::session::{account, Session};
use crate::server::{Answer, Notifier, Pending, SharedNotifier};

/// Decodes a header value that may use the `=?base64?...?=` sentinel.
fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|x| x.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(v.to_owned()),
    }
}

/// The HTTP status a modern JSON-RPC error travels with.
fn status_of(error: Option<i32>) -> u16 {
    match error {
        None => 200,
        Some(jsonrpc::METHOD_NOT_FOUND) => 404,
        Some(jsonrpc::PARSE_ERROR | jsonrpc::INVALID_REQUEST) => 400,
        Some(
            code::HEADER_MISMATCH
            | code::MISSING_REQUIRED_CLIENT_CAPABILITY
            | code::UNSUPPORTED_PROTOCOL_VERSION,
        ) => 400,
        Some(_) => 200,
    }
}

/// Progress for a modern SSE response: events without ids (modern streams
/// are not resumable); dropped, and counted, if the client is not reading.
struct ModernSink {
    pipe: Rc<Pipe<Bytes>>,
    core: Weak<Core>,
}

impl Notifier for ModernSink {
    fn notify(&self, message: &[u8]) {
        if self.pipe.push(sse_event(None, message)).is_err() {
            if let Some(c) = self.core.upgrade() {
                c.metrics.borrow_mut().counters.notifications_dropped += 1;
            }
        }
    }
}

/// What serving the message gave.
enum Outcome {
    Done(McpResponse),
    Answer {
        /// Where messages related to the request go, when the client
        /// accepts a stream.
        pipe: Option<Rc<Pipe<Bytes>>>,
        pending: Option<Pending>,
        /// The answer written now (when not pending).
        now: Answer,
    },
}

/// A 2026-07-28 POST (`from_node`: relayed by another node of the cluster,
/// so served here whatever it names).
pub(crate) async fn post(
    http: &Rc<HttpShard>,
    headers: &Headers,
    accepts: Accepts,
    body: Vec<u8>,
    principal: Option<&Identity>,
    from_node: bool,
) -> McpResponse {
    if !from_node {
        if let Some(r) = at_task_holder(http, headers, accepts, &body, principal).await {
            return r;
        }
    }
    let sse_only = !accepts.json;
    let (pipe, pending, mut now) = match serve(http, headers, accepts, body, principal) {
        Outcome::Done(r) => return r,
        Outcome::Answer { pipe, pending, now } => (pipe, pending, now),
    };
    let Some(p) = pending else {
        return match pipe {
            Some(pipe) if sse_only || !pipe.is_empty() => {
                trim_newline(&mut now.bytes);
                let _ = pipe.push_final(sse_event(None, &now.bytes));
                sse(pipe, None)
            }
            _ => json(now),
        };
    };
    let Some(pipe) = pipe else {
        return json(p.fut.await);
    };
    let result: Rc<RefCell<Option<Answer>>> = Rc::default();
    let sink = pipe.clone();
    let slot = result.clone();
    // Owned by the response: when the client goes away, the response drops
    // and the handler is cancelled.
    let task = glommio::spawn_local(async move {
        let mut answer = p.fut.await;
        trim_newline(&mut answer.bytes);
        if answer.bytes.is_empty() {
            sink.close();
            return;
        }
        let _ = sink.push_final(sse_event(None, &answer.bytes));
        *slot.borrow_mut() = Some(answer);
    });
    if !sse_only {
        pipe.ready().await;
        if pipe.is_closed() && pipe.len() == 1 {
            if let Some(answer) = result.borrow_mut().take() {
                return json(answer);
            }
        }
    }
    sse(pipe, Some(task))
}

/// `--cluster`: a `tasks/*` request (routed by its `Mcp-Name`, the task id,
/// as SEP-2663 has load balancers do) for a task another node made is
/// relayed to the live node that holds it; None to serve it here. The
/// serving node checks the headers against the body as usual.
async fn at_task_holder(
    http: &Rc<HttpShard>,
    headers: &Headers,
    accepts: Accepts,
    body: &[u8],
    principal: Option<&Identity>,
) -> Option<McpResponse> {
    let link = http.cluster()?;
    let method = header(headers, "mcp-method")?;
    if !matches!(method, "tasks/get" | "tasks/update" | "tasks/cancel") {
        return None;
    }
    let task = decode_header_value(header(headers, "mcp-name")?)?;
    if placement::node_of(&task).is_none_or(|n| n == link.node_id()) {
        return None;
    }
    super::cluster::relay_task(http, link, &task, headers, accepts, body, principal).await
}

/// An answer as a JSON response, its status from its error code.
fn json(mut answer: Answer) -> McpResponse {
    trim_newline(&mut answer.bytes);
    McpResponse::json(status_of(answer.error), answer.bytes)
}

fn sse(pipe: Rc<Pipe<Bytes>>, task: Option<glommio::Task<()>>) -> McpResponse {
    McpResponse {
        status: 200,
        headers: Vec::new(),
        body: McpBody::Sse {
            source: SseSource::Local(pipe),
            task,
            resumable: false,
        },
    }
}

/// Parses, checks the headers against the body, and serves the message.
fn serve(
    http: &Rc<HttpShard>,
    headers: &Headers,
    accepts: Accepts,
    body: Vec<u8>,
    principal: Option<&Identity>,
) -> Outcome {
    let core = &http.net.core;
    let (mut buf, len) = padded(body);
    let started = Instant::now();
    let mut parser = core.parser.borrow_mut();
    parser.parse(&mut buf, len, |parsed| {
        let root = match parsed {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("Parse error: {e}");
                return Outcome::Done(McpResponse::rpc_error(
                    400,
                    &Id::Null,
                    jsonrpc::PARSE_ERROR,
                    &msg,
                ));
            }
        };
        let msg = match jsonrpc::classify(root) {
            Ok(m) => m,
            Err(inv) => {
                return Outcome::Done(McpResponse::rpc_error(400, &inv.id, inv.code, inv.message))
            }
        };
        let mut session = Session::new(core, None);
        if let Some(who) = principal {
            session.set_identity(core, who.clone());
        }
        let (id, method, params) = match &msg {
            Message::Request { id, method, params } => (*id, *method, *params),
            Message::Notification { .. } => {
                let h = session.handle_parsed(core, msg, &mut Vec::new(), started, None);
                account(core, &h, started);
                return Outcome::Done(McpResponse::empty(202));
            }
            Message::Response { id, .. } => {
                return Outcome::Done(McpResponse::rpc_error(
                    400,
                    id,
                    jsonrpc::INVALID_REQUEST,
                    "clients do not send responses in protocol version 2026-07-28",
                ))
            }
        };
        if let Err((status, code, message)) = check_headers(core, headers, method, &params) {
            core.metrics.borrow_mut().record_error(MethodKind::Invalid);
            return Outcome::Done(McpResponse::rpc_error(status, &id, code, &message));
        }
        let pipe = accepts.sse.then(|| Pipe::new(http.cfg.sse_queue_events));
        let related: Option<SharedNotifier> = pipe.as_ref().map(|p| {
            Rc::new(ModernSink {
                pipe: p.clone(),
                core: Rc::downgrade(core),
            }) as SharedNotifier
        });
        let mut out = Vec::with_capacity(256);
        session.set_trace_header(super::request::trace_header(core, headers));
        let h = session.handle_parsed(core, msg, &mut out, started, related.as_ref());
        account(core, &h, started);
        Outcome::Answer {
            pipe,
            pending: h.pending,
            now: Answer {
                bytes: out,
                error: h.error,
            },
        }
    })
}

/// Modern request metadata headers must be present and agree with the body
/// (Streamable HTTP 2026-07-28 §Server Validation).
fn check_headers(
    core: &Core,
    headers: &Headers,
    method: &str,
    params: &Option<simd_json::tape::Value<'_, '_>>,
) -> Result<(), (u16, i32, String)> {
    let mismatch = |m: String| Err((400, code::HEADER_MISMATCH, m));
    let req_meta = params.as_ref().and_then(|p| p.get("_meta"));
    let body_version = req_meta
        .as_ref()
        .and_then(|m| m.get(meta::PROTOCOL_VERSION))
        .and_then(|v| v.into_string());
    let Some(header_version) = header(headers, "mcp-protocol-version") else {
        return mismatch("Header mismatch: MCP-Protocol-Version header is required".into());
    };
    let Some(body_version) = body_version else {
        return Err((
            400,
            jsonrpc::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/protocolVersion\"] is required".into(),
        ));
    };
    if header_version != body_version {
        return mismatch(format!(
            "Header mismatch: MCP-Protocol-Version header value '{header_version}' does not match body value '{body_version}'"
        ));
    }
    if mcp::modern_version(body_version).is_some()
        && !req_meta
            .as_ref()
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .is_some_and(|c| c.is_object())
    {
        return Err((
            400,
            jsonrpc::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/clientCapabilities\"] (an object) is required"
                .into(),
        ));
    }
    match header(headers, "mcp-method") {
        None => return mismatch("Header mismatch: Mcp-Method header is required".into()),
        Some(m) if m != method => {
            return mismatch(format!(
            "Header mismatch: Mcp-Method header value '{m}' does not match body value '{method}'"
        ))
        }
        Some(_) => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        // SEP-2663: task methods route by task id.
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = params
            .as_ref()
            .and_then(|p| p.get(field))
            .and_then(|v| v.into_string());
        match header(headers, "mcp-name") {
            None => return mismatch("Header mismatch: Mcp-Name header is required".into()),
            Some(raw) => match decode_header_value(raw) {
                None => {
                    return mismatch(
                        "Header mismatch: Mcp-Name is not valid Base64-encoded UTF-8".into(),
                    )
                }
                Some(v) if Some(v.as_str()) != body_name => {
                    return mismatch(format!(
                    "Header mismatch: Mcp-Name header value '{v}' does not match body value '{}'",
                    body_name.unwrap_or("")
                ))
                }
                Some(_) => {}
            },
        }
    }
    if method == "tools/call" {
        check_param_headers(core, headers, params)?;
    }
    Ok(())
}

/// Arguments a tool marks with `x-mcp-header` travel in `Mcp-Param-{name}`
/// headers too, and the two must agree (SEP-2243): a value in the body
/// needs its header; the header's value (Base64 inside `=?base64?...?=`,
/// strictly padded) must equal the argument's string form.
fn check_param_headers(
    core: &Core,
    headers: &Headers,
    params: &Option<simd_json::tape::Value<'_, '_>>,
) -> Result<(), (u16, i32, String)> {
    let mismatch = |m: String| Err((400, code::HEADER_MISMATCH, m));
    let Some(name) = params
        .as_ref()
        .and_then(|p| p.get("name"))
        .and_then(|n| n.into_string())
    else {
        return Ok(());
    };
    let registry = core.registry();
    let Some(entry) = registry.tool(name) else {
        return Ok(());
    };
    let args = params.as_ref().and_then(|p| p.get("arguments"));
    for (param, suffix) in &entry.header_params {
        let header_name = format!("mcp-param-{}", suffix.to_ascii_lowercase());
        let body = args
            .as_ref()
            .and_then(|a| a.get(param.as_str()))
            .filter(|v| !v.is_null());
        let body_text = body.map(|v| match v.into_string() {
            Some(s) => s.to_owned(),
            None => crate::protocol::json::encode_value(v),
        });
        match (header(headers, &header_name), body_text) {
            (None, None) => {}
            (None, Some(_)) => {
                return mismatch(format!(
                    "Header mismatch: Mcp-Param-{suffix} header is required when arguments.{param} is present"
                ))
            }
            (Some(_), None) => {
                return mismatch(format!(
                    "Header mismatch: Mcp-Param-{suffix} header is present but arguments.{param} is not"
                ))
            }
            (Some(raw), Some(body)) => match decode_header_value(raw) {
                None => {
                    return mismatch(format!(
                        "Header mismatch: Mcp-Param-{suffix} is not valid Base64-encoded UTF-8"
                    ))
                }
                Some(v) if v != body => {
                    return mismatch(format!(
                        "Header mismatch: Mcp-Param-{suffix} header value '{v}' does not match arguments.{param}"
                    ))
                }
                Some(_) => {}
            },
        }
    }
    Ok(())
}

/// The 2026-07-28 header/body agreement on any headers and body (the fuzz
/// target's entry), against a shard with the built-in tools.
#[cfg(feature = "internals")]
pub(crate) fn fuzz_check_headers(headers: &Headers, body: &[u8]) {
    use crate::server::core::{CoreParts, FaultRates, Limits};
    thread_local! {
        static CORE: Rc<Core> = Rc::new(Core::new(CoreParts {
            id: 0,
            shard_count: 1,
            limits: Limits {
                kv_max_keys_per_shard: 16,
                kv_max_key_bytes: 64,
                kv_max_value_bytes: 64,
                max_subscriptions_per_session: 4,
                max_watchers_per_key: 4,
                max_client_requests: 4,
                client_request_timeout_ms: 1000,
                page_size: 10,
                mrtr_state_ttl_ms: 1000,
                max_tasks_per_shard: 4,
                task_ttl_ms: 1000,
                rate_limit_per_sec: 0,
                rate_limit_burst: 0,
                rate_limit_max_principals: 4,
                mesh_timeout_ms: 1000,
            },
            registry: crate::server::api::McpServer::new()
                .with_builtins()
                .build()
                .build()
                .expect("built-in registry"),
            state_key: crate::server::mrtr::StateKey::random(),
            auth: None,
            faults: FaultRates::default(),
            shutdown: Rc::default(),
        }));
    }
    let (mut buf, len) = padded(body.to_vec());
    CORE.with(|core| {
        let mut parser = core.parser.borrow_mut();
        parser.parse(&mut buf, len, |parsed| {
            let Ok(root) = parsed else { return };
            if let Ok(Message::Request { method, params, .. }) = jsonrpc::classify(root) {
                if let Err((status, code, message)) = check_headers(core, headers, method, &params)
                {
                    assert!(status == 400, "{status} {code} {message}");
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_decode_base64_sentinels() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn statuses_follow_the_code() {
        assert_eq!(status_of(None), 200);
        assert_eq!(status_of(Some(jsonrpc::METHOD_NOT_FOUND)), 404);
        assert_eq!(status_of(Some(code::HEADER_MISMATCH)), 400);
        assert_eq!(status_of(Some(jsonrpc::INVALID_PARAMS)), 200);
    }
}
