//! `skills/list`, `skills/get` and `resources/directory/read` (the skills
//! extension, SEP-2640); served only when the server has skills.

use std::rc::Rc;

use super::super::core::Core;
use super::super::dispatch::Req;
use super::super::encode;
use super::super::session::Session;
use super::super::skills::{self, Skill};
use super::super::Handled;
use super::{fail, uri_param};
use crate::metrics::MethodKind;
use crate::protocol::json;

const KIND: MethodKind = MethodKind::Resources;

/// `skills/list`: the skills whose manifest the principal may read.
pub(crate) fn list(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let access = session.access.as_deref();
    let registry = core.registry();
    let visible: Vec<&Skill> = registry
        .skills
        .iter()
        .filter(|s| access.is_none_or(|a| a.resource(&s.manifest_uri)))
        .collect();
    super::list(
        core,
        req,
        out,
        "skills",
        &visible,
        |s, out| out.extend_from_slice(s.entry_json.as_bytes()),
        KIND,
    )
}

/// `skills/get`: one skill's entry, by its manifest or directory URI.
pub(crate) fn get(
    _: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    match skills::get(&core.registry().skills, &req.params) {
        Ok(r) => {
            jsonrpc_result(out, req, &r);
            Handled::ok(KIND)
        }
        Err(e) => fail(KIND, req, out, &e),
    }
}

fn jsonrpc_result(out: &mut Vec<u8>, req: &Req<'_, '_>, r: &encode::JsonResult) {
    encode::json_result(
        out,
        &req.id,
        r,
        req.era,
        Some(encode::CACHE_TTL_MS).filter(|_| req.era.is_modern()),
    );
}

/// `resources/directory/read`: a skill directory's children the principal
/// may read.
pub(crate) fn directory(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let uri = match uri_param(req) {
        Ok(u) => u,
        Err(e) => return fail(KIND, req, out, &e),
    };
    let registry = core.registry();
    let children = match skills::directory(&registry.skills, uri) {
        Ok(c) => c,
        Err(e) => return fail(KIND, req, out, &e),
    };
    let access = session.access.as_deref();
    let visible: Vec<&(String, String, String)> = children
        .iter()
        .filter(|(uri, _, _)| access.is_none_or(|a| a.resource(uri)))
        .collect();
    super::list(
        core,
        req,
        out,
        "resources",
        &visible,
        |(uri, name, mime), out| {
            out.extend_from_slice(b"{\"uri\":");
            json::write_str(out, uri);
            out.extend_from_slice(b",\"name\":");
            json::write_str(out, name);
            out.extend_from_slice(b",\"mimeType\":");
            json::write_str(out, mime);
            out.push(b'}');
        },
        KIND,
    )
}
