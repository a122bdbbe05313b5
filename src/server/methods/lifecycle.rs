//! `initialize` and `ping` (legacy lifecycle), `server/discover` (modern).

use std::rc::Rc;

use simd_json::prelude::*;

use super::super::core::Core;
use super::super::ctx::ClientCaps;
use super::super::dispatch::Req;
use super::super::encode::{self, Era, CACHE_TTL_MS};
use super::super::session::{Phase, Session};
use super::super::tasks;
use super::super::Handled;
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc;
use crate::protocol::mcp;

/// `initialize`: negotiates the version, records the client's capabilities,
/// and from then on the session hears about list changes.
pub(crate) fn initialize(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::Initialize;
    let id = &req.id;
    if session.phase != Phase::AwaitingInitialize {
        let code = encode::error(out, id, jsonrpc::INVALID_REQUEST, "already initialized");
        return Handled::err(kind, code);
    }
    let Some(requested) = req.str_param("protocolVersion") else {
        let msg = "initialize needs params.protocolVersion (a string)";
        return Handled::err(kind, encode::error(out, id, jsonrpc::INVALID_PARAMS, msg));
    };
    for member in ["capabilities", "clientInfo"] {
        if let Some(v) = req.params.as_ref().and_then(|p| p.get(member)) {
            if !v.is_object() {
                let msg = format!("initialize: params.{member} must be an object");
                return Handled::err(kind, encode::error(out, id, jsonrpc::INVALID_PARAMS, &msg));
            }
        }
    }
    session.caps = ClientCaps::parse(req.params.as_ref().and_then(|p| p.get("capabilities")));
    let version = mcp::negotiate(requested);
    session.phase = Phase::Ready { version };
    session.hear_list_changes(core);
    session.changed();
    jsonrpc::begin_result(out, id);
    out.extend_from_slice(b"{\"protocolVersion\":\"");
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\",\"capabilities\":");
    write_capabilities(core, out, Era::Legacy);
    out.extend_from_slice(b",\"serverInfo\":");
    out.extend_from_slice(mcp::SERVER_INFO_JSON.as_bytes());
    out.extend_from_slice(b",\"instructions\":");
    write_instructions(core, out);
    out.push(b'}');
    jsonrpc::end_response(out);
    Handled::ok(kind)
}

/// `ping`: `{}`, even before `initialize`.
pub(crate) fn ping(_: &mut Session, _: &Rc<Core>, req: &Req<'_, '_>, out: &mut Vec<u8>) -> Handled {
    encode::empty_result(out, &req.id, Era::Legacy);
    Handled::ok(MethodKind::Ping)
}

/// `server/discover` (2026-07-28): versions, capabilities, instructions.
pub(crate) fn discover(
    _: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(b"{\"supportedVersions\":");
    out.extend_from_slice(mcp::ALL_VERSIONS_JSON.as_bytes());
    out.extend_from_slice(b",\"capabilities\":");
    write_capabilities(core, out, req.era);
    out.extend_from_slice(b",\"instructions\":");
    write_instructions(core, out);
    encode::close_object(
        out,
        req.era,
        encode::Close {
            cache_ttl_ms: Some(CACHE_TTL_MS),
            ..encode::Close::complete(true)
        },
    );
    jsonrpc::end_response(out);
    Handled::ok(MethodKind::Discover)
}

fn write_instructions(core: &Core, out: &mut Vec<u8>) {
    let registry = core.registry();
    let text = registry
        .instructions
        .as_deref()
        .unwrap_or(mcp::INSTRUCTIONS);
    json::write_str(out, text)
}

/// The capabilities this server implements, per era.
fn write_capabilities(core: &Core, out: &mut Vec<u8>, era: Era) {
    let r = core.registry();
    out.extend_from_slice(b"{\"tools\":{\"listChanged\":true}");
    if r.has_resources() {
        out.extend_from_slice(b",\"resources\":{\"subscribe\":true,\"listChanged\":true}");
    }
    if r.has_prompts() {
        out.extend_from_slice(b",\"prompts\":{\"listChanged\":true}");
    }
    out.extend_from_slice(b",\"completions\":{},\"logging\":{}");
    if era == Era::Legacy {
        tasks::write_legacy_capability(out);
    }
    let mut exts: Vec<(&str, &str)> = r
        .extensions
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if era.is_modern() {
        exts.push((tasks::EXTENSION, "{}"));
    }
    if !exts.is_empty() {
        out.extend_from_slice(b",\"extensions\":{");
        for (i, (k, v)) in exts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::write_str(out, k);
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b'}');
}
