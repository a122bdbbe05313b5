//! The handlers of the dispatch table, one file per method family, and the
//! machinery they share: running a handler under the supervisor (at once or
//! as a pending future registered for cancellation), paging lists, and
//! writing a handler's outcome in the request's era.

pub(crate) mod completion;
pub(crate) mod lifecycle;
pub(crate) mod listen;
pub(crate) mod logging;
pub(crate) mod prompts;
pub(crate) mod resources;
pub(crate) mod skills;
pub(crate) mod tasks;
pub(crate) mod tools;

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::FutureExt;
use simd_json::prelude::*;

use super::core::Core;
use super::ctx::{CallCtx, Ctx, Rounds};
use super::dispatch::Req;
use super::encode::{self, Close, Era};
use super::registry::{page, JsonOutcome, JsonReply};
use super::session::{record_answer, Inflight};
use super::tools::{CallError, RpcError};
use super::{Answer, Handled, Pending, PendingAnswer};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};

/// Writes an answer now: `Err(code)` when it was an error.
type Write<T> = Box<dyn FnOnce(&Core, &mut Vec<u8>, &Id<'_>, T) -> Option<i32>>;

/// Wraps a handler's future: supervised (a panic costs this request only),
/// registered for cancellation, encoded by `write`, accounted.
pub(crate) fn pend<T: 'static>(
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    kind: MethodKind,
    fut: Pin<Box<dyn Future<Output = T>>>,
    inflight: &Rc<Inflight>,
    cancelled: Rc<Cell<bool>>,
    write: impl FnOnce(&Core, &mut Vec<u8>, &Id<'_>, T) -> Option<i32> + 'static,
) -> Handled {
    let write: Write<T> = Box::new(write);
    let id = req.id.to_owned_bytes();
    inflight.begin(&id, cancelled);
    let track = id.clone();
    let core = core.clone();
    let inflight = inflight.clone();
    let started = req.started;
    let what: Box<str> = req.name.into();
    let fut: PendingAnswer = Box::pin(async move {
        let outcome = AssertUnwindSafe(fut).catch_unwind().await;
        inflight.finish(&id);
        let mut bytes = Vec::with_capacity(128);
        let error = match outcome {
            Ok(v) => write(&core, &mut bytes, &Id::Encoded(&id), v),
            Err(_) => Some(panicked(&core, &mut bytes, &Id::Encoded(&id), &what)),
        };
        let answer = Answer { bytes, error };
        record_answer(&core, kind, started, &answer);
        answer
    });
    Handled::later(
        kind,
        Pending {
            fut,
            id: Some(track),
            long_lived: false,
        },
    )
}

/// Counts a handler panic and answers -32603 (details only in the log).
pub(crate) fn panicked(core: &Core, out: &mut Vec<u8>, id: &Id<'_>, what: &str) -> i32 {
    core.metrics.borrow_mut().counters.handler_panics += 1;
    log::debug!(
        "shard {}: handler {what:?} panicked; answered -32603",
        core.id
    );
    encode::handler_failed(out, id)
}

/// Modern era: reads `inputResponses` and `requestState` for a request that
/// may take several rounds (state is bound to `target`).
pub(crate) fn rounds_for(core: &Core, req: &Req<'_, '_>, target: &str) -> Result<Rounds, RpcError> {
    let mut responses = HashMap::new();
    if let Some(r) = req.params.as_ref().and_then(|p| p.get("inputResponses")) {
        let Some(obj) = r.as_object() else {
            return Err(RpcError::invalid_params("inputResponses must be an object"));
        };
        for (k, v) in obj.iter() {
            if !v.is_object() {
                return Err(RpcError::invalid_params(format!(
                    "inputResponses.{k} must be an object"
                )));
            }
            responses.insert(k.to_owned(), json::encode_value(v));
        }
    }
    let state = match req.params.as_ref().and_then(|p| p.get("requestState")) {
        None => None,
        Some(s) => {
            let Some(s) = s.into_string() else {
                return Err(RpcError::invalid_params("requestState must be a string"));
            };
            let opened = core
                .state_key
                .open(target, s, core.limits.mrtr_state_ttl_ms)
                .map_err(|e| RpcError::invalid_params(format!("invalid requestState: {e}")))?;
            Some(opened)
        }
    };
    Ok(Rounds::new(responses, state))
}

/// Reads the rounds of a modern request into `cx`; writes the error when the
/// round's state is bad.
pub(crate) fn load_rounds(
    core: &Core,
    req: &Req<'_, '_>,
    cx: &mut CallCtx<'_>,
    target: &str,
    out: &mut Vec<u8>,
) -> Result<(), i32> {
    if !req.era.is_modern() {
        return Ok(());
    }
    match rounds_for(core, req, target) {
        Ok(r) => {
            *cx.rounds.get_mut() = Some(r);
            Ok(())
        }
        Err(e) => Err(encode::rpc_error(out, &req.id, &e)),
    }
}

/// Writes the `InputRequiredResult` for a handler that needs client input.
pub(crate) fn input_required(
    core: &Core,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    ctx: Option<&Ctx>,
    target: &str,
) -> Option<i32> {
    let Some(rounds) = ctx.and_then(|c| c.rounds()).filter(|r| r.has_requests()) else {
        let e = RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            "handler asked for input but recorded no input request",
        );
        return Some(encode::rpc_error(out, id, &e));
    };
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{\"inputRequests\":");
    out.extend_from_slice(rounds.input_requests_json().as_bytes());
    if let Some(state) = rounds.next_state() {
        out.extend_from_slice(b",\"requestState\":");
        json::write_str(out, &core.state_key.seal(target, &state));
    }
    encode::close_object(
        out,
        Era::Modern(crate::protocol::mcp::MODERN_VERSIONS[0]),
        Close {
            result_type: "input_required",
            ..Close::complete(true)
        },
    );
    jsonrpc::end_response(out);
    None
}

/// Writes a handler's failure: input required (modern), or the error.
pub(crate) fn call_error(
    core: &Core,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    e: CallError,
    era: Era,
    ctx: Option<&Ctx>,
    target: &str,
) -> Option<i32> {
    match e {
        CallError::InputRequired if era.is_modern() => input_required(core, out, id, ctx, target),
        CallError::InputRequired => {
            let e = RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                "input required outside a multi-round request",
            );
            Some(encode::rpc_error(out, id, &e))
        }
        CallError::Rpc(e) => Some(encode::rpc_error(out, id, &e)),
    }
}

/// Writes a JSON result (prompts, resources) or its failure.
#[allow(clippy::too_many_arguments)]
fn json_outcome(
    core: &Core,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    outcome: JsonOutcome,
    era: Era,
    ctx: Option<&Ctx>,
    target: &str,
    cache_ttl_ms: Option<u64>,
) -> Option<i32> {
    match outcome {
        Ok(r) => {
            encode::json_result(out, id, &r, era, cache_ttl_ms.filter(|_| era.is_modern()));
            None
        }
        Err(e) => call_error(core, out, id, e, era, ctx, target),
    }
}

/// Runs a JSON-result handler (prompt, resource) under the supervisor and
/// writes or defers its answer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_json(
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    cx: &CallCtx<'_>,
    inflight: &Rc<Inflight>,
    kind: MethodKind,
    target: String,
    cache_ttl_ms: Option<u64>,
    call: impl FnOnce(&CallCtx<'_>) -> JsonReply,
) -> Handled {
    let era = cx.era;
    match std::panic::catch_unwind(AssertUnwindSafe(|| call(cx))) {
        Ok(JsonReply::Ready(o)) => {
            let ctx = cx.made();
            let error = json_outcome(
                core,
                out,
                &req.id,
                o,
                era,
                ctx.as_ref(),
                &target,
                cache_ttl_ms,
            );
            Handled::done(kind, error)
        }
        Ok(JsonReply::Pending(fut)) => {
            let ctx = cx.made();
            pend(
                core,
                req,
                kind,
                fut,
                inflight,
                cx.cancelled(),
                move |core, out, id, o| {
                    json_outcome(core, out, id, o, era, ctx.as_ref(), &target, cache_ttl_ms)
                },
            )
        }
        Err(_) => Handled::err(kind, panicked(core, out, &req.id, &target)),
    }
}

/// `params.uri`, or the error to answer.
pub(crate) fn uri_param<'a>(req: &Req<'a, '_>) -> Result<&'a str, RpcError> {
    req.str_param("uri")
        .ok_or_else(|| RpcError::invalid_params("params.uri (a string) is required"))
}

fn cursor_of<'a>(req: &Req<'a, '_>) -> Result<Option<&'a str>, RpcError> {
    match req.params.as_ref().and_then(|p| p.get("cursor")) {
        None => Ok(None),
        Some(c) if c.is_null() => Ok(None),
        Some(c) => c
            .into_string()
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params("invalid cursor")),
    }
}

/// One page of a list, as `(start, end, next cursor)`, for the request's
/// cursor; `member` names the list the cursor is for.
pub(crate) fn page_of(
    core: &Core,
    req: &Req<'_, '_>,
    len: usize,
    member: &str,
) -> Result<(usize, usize, Option<String>), RpcError> {
    let cursor = cursor_of(req)?;
    page(len, cursor, core.limits.page_size, member, &core.state_key)
}

/// Writes one page of a list result: `{"<member>":[...],"nextCursor":...}`,
/// cacheable in the modern era.
pub(crate) fn list<T>(
    core: &Core,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    member: &str,
    items: &[T],
    write_item: impl Fn(&T, &mut Vec<u8>),
    kind: MethodKind,
) -> Handled {
    let (start, end, next) = match page_of(core, req, items.len(), member) {
        Ok(p) => p,
        Err(e) => return Handled::err(kind, encode::rpc_error(out, &req.id, &e)),
    };
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items[start..end].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_item(item, out);
    }
    out.push(b']');
    if let Some(n) = next {
        out.extend_from_slice(b",\"nextCursor\":");
        json::write_str(out, &n);
    }
    encode::close_object(
        out,
        req.era,
        Close {
            cache_ttl_ms: Some(encode::CACHE_TTL_MS),
            ..Close::complete(true)
        },
    );
    jsonrpc::end_response(out);
    Handled::ok(kind)
}

/// Answers with `e`.
pub(crate) fn fail(
    kind: MethodKind,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    e: &RpcError,
) -> Handled {
    Handled::err(kind, encode::rpc_error(out, &req.id, e))
}
