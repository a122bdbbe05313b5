//! `resources/list`, `resources/templates/list`, `resources/read`, and the
//! legacy `resources/subscribe` / `resources/unsubscribe`.

use std::rc::Rc;

use super::super::core::Core;
use super::super::ctx::CallCtx;
use super::super::dispatch::{self, Req};
use super::super::encode::{self, resource_not_found, Era, CACHE_TTL_MS};
use super::super::kv;
use super::super::registry::{JsonReply, ResourceDescriptor, TemplateDescriptor};
use super::super::session::Session;
use super::super::{Answer, Handled, Pending};
use super::{fail, load_rounds, run_json, uri_param};
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc::Id;

const KIND: MethodKind = MethodKind::Resources;

/// `resources/list`: fixed resources, then every source's (files), those the
/// principal may read.
pub(crate) fn list(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let access = session.access.as_deref();
    let registry = core.registry();
    let from_sources: Vec<ResourceDescriptor> = registry
        .sources
        .iter()
        .flat_map(|s| s.descriptors())
        .collect();
    let registry = core.registry();
    let enabled: Vec<&ResourceDescriptor> = registry
        .resources
        .iter()
        .filter(|e| e.enabled.get())
        .map(|e| e.resource.descriptor())
        .chain(from_sources.iter())
        .filter(|d| access.is_none_or(|a| a.resource(&d.uri)))
        .collect();
    super::list(
        core,
        req,
        out,
        "resources",
        &enabled,
        |d, out| d.write_json(out),
        KIND,
    )
}

/// `resources/templates/list`: the templates the principal may read.
pub(crate) fn list_templates(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let access = session.access.as_deref();
    let registry = core.registry();
    let all: Vec<&TemplateDescriptor> = registry
        .templates
        .iter()
        .map(|(t, _)| t.descriptor())
        .filter(|d| access.is_none_or(|a| a.resource(&d.uri_template)))
        .collect();
    super::list(
        core,
        req,
        out,
        "resourceTemplates",
        &all,
        |d, out| d.write_json(out),
        KIND,
    )
}

/// Reads one resource, whoever serves it.
type Reader<'u> = Box<dyn FnOnce(&CallCtx<'_>) -> JsonReply + 'u>;

/// `resources/read`: a fixed resource, a file, or a template's match.
pub(crate) fn read(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let uri = match uri_param(req) {
        Ok(u) => u.to_owned(),
        Err(e) => return fail(KIND, req, out, &e),
    };
    let target = format!("resources/read:{uri}");
    let mut cx = dispatch::call_ctx(session, core, req);
    if let Err(code) = load_rounds(core, req, &mut cx, &target, out) {
        return Handled::err(KIND, code);
    }
    // kv:// values change at any time; other resources may be cached.
    let ttl = if uri.starts_with(kv::URI_SCHEME) {
        0
    } else {
        CACHE_TTL_MS
    };
    let u = uri.as_str();
    let r = core.registry();
    let reader: Option<(u64, Reader<'_>)> = if let Some(entry) = r.resource(u) {
        let res = entry.resource.clone();
        Some((ttl, Box::new(move |cx: &CallCtx<'_>| res.read(cx, u))))
    } else if let Some(source) = r.source_for(u) {
        let source = source.clone();
        // Files change on disk: no caching hint.
        Some((0, Box::new(move |cx: &CallCtx<'_>| source.read(cx, u))))
    } else if let Some((t, vars)) = r.template_for(u) {
        let t = t.clone();
        Some((ttl, Box::new(move |cx: &CallCtx<'_>| t.read(cx, u, &vars))))
    } else {
        None
    };
    let Some((ttl, read)) = reader else {
        return fail(KIND, req, out, &resource_not_found(req.era, &uri));
    };
    let inflight = session.inflight.clone();
    run_json(
        core,
        req,
        out,
        &cx,
        &inflight,
        KIND,
        target,
        Some(ttl),
        read,
    )
}

/// `resources/subscribe`: the session hears `notifications/resources/updated`
/// for the URI until it unsubscribes or closes.
pub(crate) fn subscribe(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::Subscribe;
    let uri = match existing_uri(core, req) {
        Ok(u) => u,
        Err(e) => return fail(kind, req, out, &e),
    };
    match session.subscribe(core, uri) {
        Err(e) => fail(kind, req, out, &e),
        Ok(None) => {
            encode::empty_result(out, &req.id, Era::Legacy);
            Handled::ok(kind)
        }
        Ok(Some(registration)) => {
            let id = req.id.to_owned_bytes();
            let core = core.clone();
            let started = req.started;
            let fut = Box::pin(async move {
                let mut bytes = Vec::with_capacity(96);
                let error = match registration.await {
                    Ok(()) => {
                        encode::empty_result(&mut bytes, &Id::Encoded(&id), Era::Legacy);
                        None
                    }
                    Err(e) => Some(encode::rpc_error(&mut bytes, &Id::Encoded(&id), &e)),
                };
                let answer = Answer { bytes, error };
                super::super::session::record_answer(&core, kind, started, &answer);
                answer
            });
            Handled::later(
                kind,
                Pending {
                    fut,
                    id: None,
                    long_lived: false,
                },
            )
        }
    }
}

/// `resources/unsubscribe`.
pub(crate) fn unsubscribe(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::Subscribe;
    let uri = match existing_uri(core, req) {
        Ok(u) => u,
        Err(e) => return fail(kind, req, out, &e),
    };
    match session.unsubscribe(core, &uri) {
        Err(e) => fail(kind, req, out, &e),
        Ok(()) => {
            encode::empty_result(out, &req.id, Era::Legacy);
            Handled::ok(kind)
        }
    }
}

/// `params.uri` of a resource this server serves right now.
fn existing_uri(core: &Core, req: &Req<'_, '_>) -> Result<String, super::super::tools::RpcError> {
    let uri = uri_param(req)?;
    if !core.registry().resource_exists(uri) {
        return Err(resource_not_found(Era::Legacy, uri));
    }
    Ok(uri.to_owned())
}
