//! `prompts/list` and `prompts/get`.

use std::rc::Rc;

use simd_json::prelude::*;

use super::super::core::Core;
use super::super::dispatch::{self, Req};
use super::super::encode;
use super::super::registry::PromptEntry;
use super::super::session::Session;
use super::super::Handled;
use super::{load_rounds, run_json};
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc;

/// `prompts/list`: the enabled prompts the principal may use.
pub(crate) fn list(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let access = session.access.as_deref();
    let registry = core.registry();
    let enabled: Vec<&PromptEntry> = registry
        .prompts
        .iter()
        .filter(|e| e.enabled.get())
        .filter(|e| access.is_none_or(|a| a.prompt(&e.prompt.descriptor().name)))
        .collect();
    super::list(
        core,
        req,
        out,
        "prompts",
        &enabled,
        |e, out| e.prompt.descriptor().write_json(out),
        MethodKind::Prompts,
    )
}

/// `prompts/get`: checks the arguments (strings; required ones present) and
/// runs the prompt.
pub(crate) fn get(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::Prompts;
    let invalid = |out: &mut Vec<u8>, msg: &str| {
        Handled::err(
            kind,
            encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg),
        )
    };
    let Some(name) = req.str_param("name") else {
        return invalid(out, "prompts/get needs params.name (a string)");
    };
    let registry = core.registry();
    let Some(entry) = registry.prompt(name) else {
        return invalid(out, &format!("Unknown prompt: {name}"));
    };
    let mut args: Vec<(String, String)> = Vec::new();
    if let Some(a) = req
        .params
        .as_ref()
        .and_then(|p| p.get("arguments"))
        .filter(|a| !a.is_null())
    {
        let Some(obj) = a.as_object() else {
            return invalid(out, "params.arguments must be an object");
        };
        for (k, v) in obj.iter() {
            let Some(s) = v.into_string() else {
                return invalid(out, &format!("prompt argument `{k}` must be a string"));
            };
            args.push((k.to_owned(), s.to_owned()));
        }
    }
    let prompt = entry.prompt.clone();
    for a in &prompt.descriptor().arguments {
        if a.required && !args.iter().any(|(k, _)| k == &a.name) {
            return invalid(
                out,
                &format!("missing required prompt argument `{}`", a.name),
            );
        }
    }
    let target = format!("prompts/get:{name}");
    let mut cx = dispatch::call_ctx(session, core, req);
    if let Err(code) = load_rounds(core, req, &mut cx, &target, out) {
        return Handled::err(kind, code);
    }
    let inflight = session.inflight.clone();
    run_json(core, req, out, &cx, &inflight, kind, target, None, |cx| {
        prompt.get(cx, &args)
    })
}
