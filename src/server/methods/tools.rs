//! `tools/list` and `tools/call`.

use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::super::core::Core;
use super::super::ctx::Ctx;
use super::super::dispatch::{self, Req};
use super::super::encode::{self, Era};
use super::super::registry::ToolEntry;
use super::super::session::Session;
use super::super::tasks;
use super::super::tools::{ToolOutcome, ToolReply, ToolResult};
use super::super::Handled;
use super::{call_error, load_rounds, panicked, pend};
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc::{self, Id};

/// `tools/list`: the enabled tools the principal may use.
pub(crate) fn list(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let access = session.access.as_deref();
    let registry = core.registry();
    let enabled: Vec<&ToolEntry> = registry
        .tools
        .iter()
        .filter(|e| e.enabled.get())
        .filter(|e| access.is_none_or(|a| a.tool(&e.tool.descriptor().name)))
        .collect();
    super::list(
        core,
        req,
        out,
        "tools",
        &enabled,
        |e, out| e.tool.descriptor().write_json(out),
        MethodKind::ToolsList,
    )
}

/// `tools/call`: checks the params and arguments, runs the tool under the
/// supervisor (a panic costs this request only), and writes or defers the
/// response.
pub(crate) fn call(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::ToolsCall;
    let id = &req.id;
    let invalid = |out: &mut Vec<u8>, msg: &str| {
        Handled::err(kind, encode::error(out, id, jsonrpc::INVALID_PARAMS, msg))
    };
    let Some(params) = req.params.filter(|p| p.is_object()) else {
        return invalid(out, "tools/call needs params {name, arguments}");
    };
    let Some(name) = params.get("name").and_then(|n| n.into_string()) else {
        return invalid(out, "tools/call needs params.name (a string)");
    };
    let args = match params.get("arguments") {
        None => TapeValue::null(),
        Some(a) if a.is_object() => a,
        Some(a) if a.is_null() => TapeValue::null(),
        Some(_) => return invalid(out, "params.arguments must be an object"),
    };
    let registry = core.registry();
    let Some(entry) = registry.tool(name) else {
        return invalid(out, &format!("Unknown tool: {name}"));
    };
    let era = req.era;
    if let Err(e) = entry.validator.validate(&args) {
        let result = ToolResult::error(format!("invalid arguments: {e}"));
        jsonrpc::begin_result(out, id);
        result.write_json(out, era);
        jsonrpc::end_response(out);
        return Handled::ok(kind);
    }
    let mut cx = dispatch::call_ctx(session, core, req);
    if let Some(h) = tasks::intercept_call(core, req, out, &cx, entry, args) {
        return h;
    }
    // Only the modern era names the call in requestState; legacy calls skip
    // the allocation.
    let target = if era.is_modern() {
        format!("tools/call:{name}")
    } else {
        String::new()
    };
    if let Err(code) = load_rounds(core, req, &mut cx, &target, out) {
        return Handled::err(kind, code);
    }
    let tool = entry.tool.clone();
    let reply = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if core.chaos_tool_panic() {
            panic!("chaos: injected tool panic (--chaos-panic-rate)");
        }
        tool.call(&cx, args)
    }));
    match reply {
        Ok(ToolReply::Ready(outcome)) => {
            let error = write_outcome(core, out, id, outcome, era, cx.made().as_ref(), &target);
            Handled::done(kind, error)
        }
        Ok(ToolReply::Pending(fut)) => {
            let ctx = cx.made();
            let inflight = session.inflight.clone();
            pend(
                core,
                req,
                kind,
                fut,
                &inflight,
                cx.cancelled(),
                move |core, out, id, o| write_outcome(core, out, id, o, era, ctx.as_ref(), &target),
            )
        }
        Err(_) => Handled::err(kind, panicked(core, out, id, name)),
    }
}

/// Writes a tool's outcome; the error code when it was a JSON-RPC error.
fn write_outcome(
    core: &Core,
    out: &mut Vec<u8>,
    id: &Id<'_>,
    outcome: ToolOutcome<'_>,
    era: Era,
    ctx: Option<&Ctx>,
    target: &str,
) -> Option<i32> {
    match outcome {
        Ok(result) => {
            jsonrpc::begin_result(out, id);
            result.write_json(out, era);
            jsonrpc::end_response(out);
            None
        }
        Err(e) => call_error(core, out, id, e, era, ctx, target),
    }
}
