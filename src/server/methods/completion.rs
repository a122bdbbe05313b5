//! `completion/complete`: values for a prompt's argument or a resource
//! template's variable.

use std::rc::Rc;

use simd_json::prelude::*;

use super::super::core::Core;
use super::super::dispatch::Req;
use super::super::encode::{self, resource_not_found};
use super::super::session::Session;
use super::super::Handled;
use super::fail;
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc;

/// Values returned at most (MCP caps a completion at 100; `hasMore` says
/// when there were more).
const VALUES_MAX: usize = 100;

pub(crate) fn complete(
    _: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::OtherRequest;
    let invalid = |out: &mut Vec<u8>, msg: &str| {
        Handled::err(
            kind,
            encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg),
        )
    };
    let p = req.params.as_ref();
    let (Some(r), Some(arg)) = (
        p.and_then(|p| p.get("ref")),
        p.and_then(|p| p.get("argument")),
    ) else {
        return invalid(
            out,
            "completion/complete needs params.ref and params.argument",
        );
    };
    let arg_name = arg.get("name").and_then(|n| n.into_string()).unwrap_or("");
    let prefix = arg.get("value").and_then(|n| n.into_string()).unwrap_or("");
    let values = match r.get("type").and_then(|t| t.into_string()) {
        Some("ref/prompt") => {
            let name = r.get("name").and_then(|n| n.into_string()).unwrap_or("");
            match core.registry().prompt(name) {
                Some(e) => e.prompt.complete(arg_name, prefix),
                None => return invalid(out, &format!("Unknown prompt: {name}")),
            }
        }
        Some("ref/resource") => {
            let uri = r.get("uri").and_then(|n| n.into_string()).unwrap_or("");
            match core.registry().template_named(uri) {
                Some(t) => t.complete(arg_name, prefix),
                None if core.registry().resource(uri).is_some() => Vec::new(),
                None => return fail(kind, req, out, &resource_not_found(req.era, uri)),
            }
        }
        _ => return invalid(out, "params.ref.type must be ref/prompt or ref/resource"),
    };
    let total = values.len();
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(b"{\"completion\":{\"values\":[");
    for (i, v) in values.iter().take(VALUES_MAX).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, v);
    }
    out.extend_from_slice(b"],\"total\":");
    json::write_u64(out, total as u64);
    out.extend_from_slice(if total > VALUES_MAX {
        b",\"hasMore\":true}"
    } else {
        b",\"hasMore\":false}"
    });
    encode::close_result(out, req.era);
    jsonrpc::end_response(out);
    Handled::ok(kind)
}
