//! What tracing (`--otlp-endpoint`) adds to a request: the server span,
//! named and attributed by the OpenTelemetry semantic conventions for MCP,
//! made current while the request runs (its hops, command runs and store
//! writes become children), and the request's duration for
//! `mcp.server.operation.duration`. Only a sampled request builds a span;
//! every request adds a duration sample.

use std::rc::Rc;
use std::time::{Instant, SystemTime};

use simd_json::prelude::*;

use super::{audited, Req};
use crate::protocol::jsonrpc::Id;
use crate::protocol::mcp::{self, meta};
use crate::protocol::method::Method;
use crate::server::core::Core;
use crate::server::session::Session;
use crate::server::trace::{
    AttrValue, InSpan, OpSample, SpanCtx, SpanKind, SpanRecord, TraceParent,
};
use crate::server::{Answer, Handled};

/// `error.type` of a tool result with `isError: true`.
const TOOL_ERROR: &str = "tool_error";

/// What the span and the sample say about a request, owned so a pending
/// answer can carry it.
struct Facts {
    method: &'static str,
    /// The method as sent, when tessera does not know it (span name only).
    unknown_method: Option<Box<str>>,
    target: Option<(&'static str, Box<str>)>,
    resource_uri: Option<Box<str>>,
    request_id: Option<Box<str>>,
    session_id: Option<Rc<str>>,
    protocol_version: Option<&'static str>,
    started_at: SystemTime,
    started: Instant,
}

pub(super) fn request(
    session: &mut Session,
    core: &Rc<Core>,
    req: Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let tracer = core.tracer().expect("traced only with a tracer");
    let header = session.take_trace_header();
    let parent = parent_in_meta(&req).or(header);
    let span = tracer.sample(parent.as_ref());
    let mut facts = facts(&req, span.is_some());
    let mark = out.len();
    let previous = tracer.enter(span);
    let mut handled = audited(session, core, req, out);
    tracer.leave(previous);
    facts.session_id = session.http_session_id().cloned();
    facts.protocol_version = facts.protocol_version.or(session.negotiated_version());
    match handled.pending.as_mut() {
        None => finish(
            core,
            &facts,
            span,
            parent.as_ref(),
            handled.error,
            &out[mark..],
        ),
        Some(p) => {
            let fut = std::mem::replace(&mut p.fut, Box::pin(async { Answer::default() }));
            let core = core.clone();
            p.fut = Box::pin(async move {
                let answer = match span {
                    Some(span) => {
                        InSpan {
                            fut,
                            span,
                            core: core.clone(),
                        }
                        .await
                    }
                    None => fut.await,
                };
                finish(
                    &core,
                    &facts,
                    span,
                    parent.as_ref(),
                    answer.error,
                    &answer.bytes,
                );
                answer
            });
        }
    }
    handled
}

/// `params._meta.traceparent` (and its `tracestate`), when valid.
fn parent_in_meta(req: &Req<'_, '_>) -> Option<TraceParent> {
    let m = req.meta.as_ref()?;
    let mut p = TraceParent::parse(m.get(meta::TRACEPARENT)?.into_string()?)?;
    p.state = m
        .get(meta::TRACESTATE)
        .and_then(|s| s.into_string())
        .filter(|s| !s.is_empty())
        .map(Into::into);
    Some(p)
}

fn facts(req: &Req<'_, '_>, sampled: bool) -> Facts {
    let target = match req.method {
        Some(Method::ToolsCall) => req
            .str_param("name")
            .map(|n| ("gen_ai.tool.name", n.into())),
        Some(Method::PromptsGet) => req
            .str_param("name")
            .map(|n| ("gen_ai.prompt.name", n.into())),
        _ => None,
    };
    let resource_uri = match req.method {
        Some(
            Method::ResourcesRead
            | Method::ResourcesSubscribe
            | Method::ResourcesUnsubscribe
            | Method::ResourcesDirectoryRead,
        ) if sampled => req.str_param("uri").map(Into::into),
        _ => None,
    };
    let protocol_version = req
        .meta
        .as_ref()
        .and_then(|m| m.get(meta::PROTOCOL_VERSION))
        .and_then(|v| v.into_string())
        .and_then(mcp::modern_version);
    Facts {
        method: req.method.map_or("_OTHER", Method::name),
        unknown_method: req
            .method
            .is_none()
            .then(|| req.name.into())
            .filter(|_| sampled),
        target,
        resource_uri,
        request_id: sampled.then(|| request_id(&req.id)),
        session_id: None,
        protocol_version,
        started_at: SystemTime::now() - req.started.elapsed(),
        started: req.started,
    }
}

/// `jsonrpc.request.id`: a string id as is, a number as written.
fn request_id(id: &Id<'_>) -> Box<str> {
    let bytes = (*id).to_owned_bytes();
    let text = String::from_utf8_lossy(&bytes);
    match serde_json::from_slice::<String>(&bytes) {
        Ok(s) => s.into(),
        Err(_) => text.into(),
    }
}

/// `error.type`: the JSON-RPC error code, or `tool_error` for a tool
/// result with `isError: true`.
fn error_type(error: Option<i32>, method: &'static str, answer: &[u8]) -> Option<Box<str>> {
    match error {
        Some(code) => Some(code.to_string().into()),
        None if method == "tools/call"
            && memchr::memmem::find(answer, br#""isError":true"#).is_some() =>
        {
            Some(TOOL_ERROR.into())
        }
        None => None,
    }
}

/// Adds the duration sample and, when sampled, records the server span.
fn finish(
    core: &Core,
    facts: &Facts,
    span: Option<SpanCtx>,
    parent: Option<&TraceParent>,
    error: Option<i32>,
    answer: &[u8],
) {
    let tracer = core.tracer().expect("traced only with a tracer");
    let error_type = error_type(error, facts.method, answer);
    tracer.sample_duration(OpSample {
        method: facts.method,
        target: facts.target.clone(),
        protocol_version: facts.protocol_version,
        error_type: error_type.clone(),
        duration: facts.started.elapsed(),
    });
    let Some(span) = span else { return };
    let method_name = facts.unknown_method.as_deref().unwrap_or(facts.method);
    let name = match &facts.target {
        Some((_, target)) => format!("{method_name} {target}"),
        None => method_name.to_string(),
    };
    let str = |s: &str| AttrValue::Str(s.into());
    let mut attrs = vec![("mcp.method.name", str(method_name))];
    if let Some((key, target)) = &facts.target {
        attrs.push((key, AttrValue::Str(target.clone())));
    }
    if facts.method == "tools/call" {
        attrs.push(("gen_ai.operation.name", str("execute_tool")));
    }
    if let Some(uri) = &facts.resource_uri {
        attrs.push(("mcp.resource.uri", AttrValue::Str(uri.clone())));
    }
    if let Some(id) = &facts.request_id {
        attrs.push(("jsonrpc.request.id", AttrValue::Str(id.clone())));
    }
    if let Some(v) = facts.protocol_version {
        attrs.push(("mcp.protocol.version", str(v)));
    }
    if let Some(sid) = &facts.session_id {
        attrs.push(("mcp.session.id", str(sid)));
    }
    if let Some(code) = error {
        attrs.push(("rpc.response.status_code", str(&code.to_string())));
    }
    if let Some(t) = &error_type {
        attrs.push(("error.type", AttrValue::Str(t.clone())));
    }
    tracer.finish(SpanRecord {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: parent.map(|p| p.span_id),
        parent_remote: parent.is_some(),
        trace_state: parent.and_then(|p| p.state.clone()),
        kind: SpanKind::Server,
        name,
        start: facts.started_at,
        end: SystemTime::now(),
        attrs,
        error: error_type.map(|t| t.to_string()),
    });
}
