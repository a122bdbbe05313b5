//! The one dispatch table: every request method, the eras that serve it,
//! what it names (for the access check), and its handler.
//!
//! A request goes through the same steps whatever its method, in this order:
//! the session's rate limit; the era (a modern version in `_meta`, or the
//! legacy lifecycle); the TCP/stdio token check; the method, parsed once;
//! the access check against the principal's roles, for every method that
//! names a tool, prompt, resource or template ([`Target`]); the era's
//! preconditions (modern: client capabilities in `_meta`; legacy:
//! `initialize` first); then the handler, one file per method family in
//! [`super::methods`]. Every request is audited (`--audit-log`) from the
//! answer's error code.

use std::rc::Rc;
use std::time::Instant;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::audit::AuditRecord;
use super::auth::Access;
use super::content::LogLevel;
use super::core::Core;
use super::ctx::{CallCtx, ClientCaps, LogSink};
use super::encode::{self, Era};
use super::methods::{
    completion, lifecycle, listen, logging, prompts, resources, skills, tasks, tools,
};
use super::session::{Phase, Session};
use super::tools::Progress;
use super::{Answer, Handled, SharedNotifier};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};
use crate::protocol::mcp::{self, meta};
use crate::protocol::method::Method;

/// One request being dispatched, borrowed from its message.
pub(crate) struct Req<'a, 'r> {
    pub id: Id<'a>,
    /// The method's name as sent.
    pub name: &'a str,
    /// The method, when tessera knows it.
    pub method: Option<Method>,
    pub params: Option<TapeValue<'a, 'a>>,
    /// `params._meta`, when present.
    pub meta: Option<TapeValue<'a, 'a>>,
    /// Decided by [`era_of`] before anything else looks at it.
    pub era: Era,
    pub started: Instant,
    pub related: Option<&'r SharedNotifier>,
}

impl<'a, 'r> Req<'a, 'r> {
    pub fn new(
        id: Id<'a>,
        name: &'a str,
        params: Option<TapeValue<'a, 'a>>,
        started: Instant,
        related: Option<&'r SharedNotifier>,
    ) -> Self {
        Self {
            id,
            name,
            method: Method::parse(name),
            meta: params.as_ref().and_then(|p| p.get("_meta")),
            params,
            era: Era::Legacy,
            started,
            related,
        }
    }

    /// `params.<key>` as a string.
    pub fn str_param(&self, key: &str) -> Option<&'a str> {
        self.params
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(|v| v.into_string())
    }

    /// The metrics bucket of this request.
    pub fn kind(&self) -> MethodKind {
        self.method
            .map_or(MethodKind::OtherRequest, |m| route(m).kind)
    }
}

/// The eras a method is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eras {
    Legacy,
    Modern,
    Both,
}

impl Eras {
    fn serves(self, era: Era) -> bool {
        match self {
            Eras::Both => true,
            Eras::Legacy => !era.is_modern(),
            Eras::Modern => era.is_modern(),
        }
    }
}

/// What a method names, so the principal's roles can be checked before the
/// handler runs. Every method that names a tool, prompt, resource or
/// template has a target here; there is no other place roles are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Names nothing (lists are filtered by their handlers).
    Nothing,
    /// `params.name` is a tool.
    Tool,
    /// `params.name` is a prompt.
    Prompt,
    /// `params.uri` is a resource (or a skill's directory or manifest).
    Resource,
    /// `params.ref` is `{type: "ref/prompt", name}` or
    /// `{type: "ref/resource", uri}` (a resource or a template).
    CompletionRef,
    /// `params.notifications.resourceSubscriptions` are resources.
    ListenFilter,
}

/// What one named item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Named {
    Tool,
    Prompt,
    Resource,
}

impl Named {
    fn word(self) -> &'static str {
        match self {
            Named::Tool => "tool",
            Named::Prompt => "prompt",
            Named::Resource => "resource",
        }
    }

    fn allowed(self, access: &Access, name: &str) -> bool {
        match self {
            Named::Tool => access.tool(name),
            Named::Prompt => access.prompt(name),
            Named::Resource => access.resource(name),
        }
    }
}

impl Target {
    /// Calls `f` with every item the request names; stops at the first
    /// `false` and returns that item.
    fn first_refused<'a>(
        self,
        params: &Option<TapeValue<'a, 'a>>,
        mut f: impl FnMut(Named, &str) -> bool,
    ) -> Option<(Named, &'a str)> {
        let p = params.as_ref()?;
        let string = |v: Option<TapeValue<'a, 'a>>| v.and_then(|v| v.into_string());
        let mut check =
            |what: Named, name: Option<&'a str>| name.filter(|n| !f(what, n)).map(|n| (what, n));
        match self {
            Target::Nothing => None,
            Target::Tool => check(Named::Tool, string(p.get("name"))),
            Target::Prompt => check(Named::Prompt, string(p.get("name"))),
            Target::Resource => check(Named::Resource, string(p.get("uri"))),
            Target::CompletionRef => {
                let r = p.get("ref")?;
                match string(r.get("type"))? {
                    "ref/prompt" => check(Named::Prompt, string(r.get("name"))),
                    "ref/resource" => check(Named::Resource, string(r.get("uri"))),
                    _ => None,
                }
            }
            Target::ListenFilter => {
                let list = p.get("notifications")?.get("resourceSubscriptions")?;
                list.as_array()?
                    .iter()
                    .find_map(|u| check(Named::Resource, u.into_string()))
            }
        }
    }
}

type Handler = fn(&mut Session, &Rc<Core>, &Req<'_, '_>, &mut Vec<u8>) -> Handled;

/// One row of the table.
struct Route {
    method: Method,
    kind: MethodKind,
    eras: Eras,
    /// Served only when the registry has skills (SEP-2640).
    needs_skills: bool,
    target: Target,
    handler: Handler,
}

const fn row(
    method: Method,
    kind: MethodKind,
    eras: Eras,
    target: Target,
    handler: Handler,
) -> Route {
    Route {
        method,
        kind,
        eras,
        needs_skills: false,
        target,
        handler,
    }
}

const fn skills_row(method: Method, target: Target, handler: Handler) -> Route {
    Route {
        method,
        kind: MethodKind::Resources,
        eras: Eras::Both,
        needs_skills: true,
        target,
        handler,
    }
}

use Eras::{Both, Legacy, Modern};
use MethodKind as K;

/// Every method, in `Method` order (a test keeps it so).
static ROUTES: [Route; Method::COUNT] = [
    row(
        Method::Initialize,
        K::Initialize,
        Legacy,
        Target::Nothing,
        lifecycle::initialize,
    ),
    row(
        Method::Ping,
        K::Ping,
        Legacy,
        Target::Nothing,
        lifecycle::ping,
    ),
    row(
        Method::Discover,
        K::Discover,
        Modern,
        Target::Nothing,
        lifecycle::discover,
    ),
    row(
        Method::LoggingSetLevel,
        K::OtherRequest,
        Legacy,
        Target::Nothing,
        logging::set_level,
    ),
    row(
        Method::ToolsList,
        K::ToolsList,
        Both,
        Target::Nothing,
        tools::list,
    ),
    row(
        Method::ToolsCall,
        K::ToolsCall,
        Both,
        Target::Tool,
        tools::call,
    ),
    row(
        Method::PromptsList,
        K::Prompts,
        Both,
        Target::Nothing,
        prompts::list,
    ),
    row(
        Method::PromptsGet,
        K::Prompts,
        Both,
        Target::Prompt,
        prompts::get,
    ),
    row(
        Method::ResourcesList,
        K::Resources,
        Both,
        Target::Nothing,
        resources::list,
    ),
    row(
        Method::ResourcesTemplatesList,
        K::Resources,
        Both,
        Target::Nothing,
        resources::list_templates,
    ),
    row(
        Method::ResourcesRead,
        K::Resources,
        Both,
        Target::Resource,
        resources::read,
    ),
    row(
        Method::ResourcesSubscribe,
        K::Subscribe,
        Legacy,
        Target::Resource,
        resources::subscribe,
    ),
    row(
        Method::ResourcesUnsubscribe,
        K::Subscribe,
        Legacy,
        Target::Resource,
        resources::unsubscribe,
    ),
    skills_row(
        Method::ResourcesDirectoryRead,
        Target::Resource,
        skills::directory,
    ),
    row(
        Method::CompletionComplete,
        K::OtherRequest,
        Both,
        Target::CompletionRef,
        completion::complete,
    ),
    row(
        Method::SubscriptionsListen,
        K::OtherRequest,
        Modern,
        Target::ListenFilter,
        listen::listen,
    ),
    row(
        Method::TasksGet,
        K::Tasks,
        Both,
        Target::Nothing,
        tasks::get,
    ),
    row(
        Method::TasksResult,
        K::Tasks,
        Legacy,
        Target::Nothing,
        tasks::result,
    ),
    row(
        Method::TasksList,
        K::Tasks,
        Legacy,
        Target::Nothing,
        tasks::list,
    ),
    row(
        Method::TasksCancel,
        K::Tasks,
        Both,
        Target::Nothing,
        tasks::cancel,
    ),
    row(
        Method::TasksUpdate,
        K::Tasks,
        Modern,
        Target::Nothing,
        tasks::update,
    ),
    skills_row(Method::SkillsList, Target::Nothing, skills::list),
    skills_row(Method::SkillsGet, Target::Resource, skills::get),
];

fn route(m: Method) -> &'static Route {
    let r = &ROUTES[m as usize];
    debug_assert_eq!(r.method, m, "the dispatch table is out of order");
    r
}

/// What `method` names, for the access check.
#[cfg(test)]
pub(crate) fn target_of(method: Method) -> Target {
    route(method).target
}

/// Serves one request; traces it (`--otlp-endpoint`) and audits it
/// (`--audit-log`) when those are on.
pub(crate) fn request(
    session: &mut Session,
    core: &Rc<Core>,
    req: Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    match core.tracer() {
        None => audited(session, core, req, out),
        Some(_) => traced::request(session, core, req, out),
    }
}

/// Serves one request and audits it (`--audit-log`).
fn audited(session: &mut Session, core: &Rc<Core>, req: Req<'_, '_>, out: &mut Vec<u8>) -> Handled {
    if core.audit.borrow().is_none() {
        return serve(session, core, req, out);
    }
    let name = req.str_param("name").or_else(|| req.str_param("uri"));
    let method = req.name;
    let started = req.started;
    let mut handled = serve(session, core, req, out);
    match handled.pending.as_mut() {
        // Answered now: written straight from the borrowed request.
        None => audit(
            core,
            session.principal().map(|p| &**p),
            session.label().map(|l| &**l),
            method,
            name,
            started,
            handled.error,
        ),
        Some(p) => {
            let principal = session.principal().cloned();
            let label = session.label().cloned();
            let method: Box<str> = method.into();
            let name: Option<Box<str>> = name.map(Into::into);
            let fut = std::mem::replace(&mut p.fut, Box::pin(async { Answer::default() }));
            let core = core.clone();
            p.fut = Box::pin(async move {
                let answer = fut.await;
                audit(
                    &core,
                    principal.as_deref(),
                    label.as_deref(),
                    &method,
                    name.as_deref(),
                    started,
                    answer.error,
                );
                answer
            });
        }
    }
    handled
}

/// Appends one request's audit line, counting a drop.
fn audit(
    core: &Core,
    principal: Option<&str>,
    session: Option<&str>,
    method: &str,
    name: Option<&str>,
    started: Instant,
    error: Option<i32>,
) {
    let mut sink = core.audit.borrow_mut();
    let Some(sink) = sink.as_mut() else { return };
    let written = sink.record(&AuditRecord {
        principal,
        session,
        method: Some(method),
        name,
        error,
        unauthorized: false,
        latency_us: started.elapsed().as_micros() as u64,
    });
    if !written {
        core.metrics.borrow_mut().counters.audit_dropped += 1;
    }
}

/// The steps every request goes through, in order (see the module docs).
fn serve(
    session: &mut Session,
    core: &Rc<Core>,
    mut req: Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    if let Err(wait) = session.take_rate(core, req.started) {
        core.metrics.borrow_mut().counters.rate_limited += 1;
        return Handled::err(req.kind(), encode::rate_limited(out, &req.id, wait));
    }
    req.era = match era_of(&req, out) {
        Ok(era) => era,
        Err(code) => return Handled::err(req.kind(), code),
    };
    if let Some(why) = session.recheck_identity(core) {
        core.metrics.borrow_mut().counters.auth_revoked += 1;
        log::info!("connection unbound from its principal: {why}");
    }
    if session.requires_token {
        if let Some(code) = check_token(session, core, &req, out) {
            return Handled::err(req.kind(), code);
        }
    }
    let route = req.method.map(route);
    if let (Some(r), Some(access)) = (route, session.access.as_deref()) {
        if let Some(code) = check_access(core, access, r.target, &req, out) {
            return Handled::err(r.kind, code);
        }
    }
    if let Some(code) = preconditions(session, &req, out) {
        return Handled::err(req.kind(), code);
    }
    match route {
        Some(r)
            if r.eras.serves(req.era)
                && (!r.needs_skills || !core.registry().skills.is_empty()) =>
        {
            (r.handler)(session, core, &req, out)
        }
        _ => {
            let msg = format!("Method not found: {}", req.name);
            let code = encode::error(out, &req.id, jsonrpc::METHOD_NOT_FOUND, &msg);
            Handled::err(MethodKind::OtherRequest, code)
        }
    }
}

/// The era a request is served in: a modern version in `_meta` makes it
/// modern; a legacy one, or none, leaves it to the session's lifecycle.
fn era_of(req: &Req<'_, '_>, out: &mut Vec<u8>) -> Result<Era, i32> {
    let Some(declared) = req
        .meta
        .as_ref()
        .and_then(|m| m.get(meta::PROTOCOL_VERSION))
    else {
        if req.method == Some(Method::Discover) {
            let msg =
                "server/discover needs params._meta[\"io.modelcontextprotocol/protocolVersion\"]";
            return Err(encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg));
        }
        return Ok(Era::Legacy);
    };
    let Some(v) = declared.into_string() else {
        let msg = "_meta[\"io.modelcontextprotocol/protocolVersion\"] must be a string";
        return Err(encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg));
    };
    match mcp::modern_version(v) {
        Some(m) => Ok(Era::Modern(m)),
        // A legacy version in `_meta` changes nothing: legacy requests are
        // governed by `initialize`.
        None if mcp::is_legacy_version(v) => Ok(Era::Legacy),
        None => Err(encode::unsupported_version(out, &req.id, v)),
    }
}

/// Checks a TCP/stdio request's `_meta.authorization` token: the first valid
/// one binds the connection to its principal; requests before it (other
/// than `ping`) and tokens of other principals are refused (-31014).
fn check_token(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Option<i32> {
    let auth = core
        .auth()
        .expect("a session requires a token only under --auth");
    let presented = req.meta.as_ref().and_then(|m| m.get(meta::AUTHORIZATION));
    let refused = match presented {
        None if session.identity().is_some() || req.method == Some(Method::Ping) => return None,
        None if auth.by_certificate() => {
            "this server authenticates clients by TLS certificate (--auth cert), and this connection's certificate names no principal it accepts".to_string()
        }
        None => "send a token in params._meta.authorization (\"Bearer <token>\")".to_string(),
        Some(v) => match v.into_string().and_then(super::auth::bearer) {
            None => "params._meta.authorization must be \"Bearer <token>\"".to_string(),
            Some(token) => {
                if core.chaos_auth_panic() {
                    panic!("chaos: injected panic in the token check (--chaos-auth-panic-rate)");
                }
                match auth.authenticate(token) {
                    Err(why) => why.to_string(),
                    Ok(who) => match session.identity() {
                        None => {
                            log::info!("authenticated as {} ({})", who.principal, req.name);
                            session.set_identity(core, who);
                            session.bind_token(token, auth.expires_at_s(token));
                            return None;
                        }
                        Some(me) if me.principal == who.principal => {
                            // A fresh token of the same caller replaces the
                            // one the connection was bound to.
                            session.bind_token(token, auth.expires_at_s(token));
                            return None;
                        }
                        Some(me) => format!(
                            "this connection is authenticated as {:?}, not {:?}",
                            me.principal, who.principal
                        ),
                    },
                }
            }
        },
    };
    core.metrics.borrow_mut().counters.auth_failures += 1;
    log::info!("unauthorized {}: {refused}", req.name);
    let msg = format!("Unauthorized: {refused}");
    Some(encode::error(out, &req.id, jsonrpc::UNAUTHORIZED, &msg))
}

/// Answers -31013 when the principal's roles do not grant everything the
/// request names; logs and counts it.
fn check_access(
    core: &Core,
    access: &Access,
    target: Target,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Option<i32> {
    let (what, name) =
        target.first_refused(&req.params, |what, name| what.allowed(access, name))?;
    core.metrics.borrow_mut().counters.auth_denied += 1;
    log::warn!(
        "denied: principal {} may not use {} {name:?} ({})",
        access.principal,
        what.word(),
        req.name
    );
    let msg = format!(
        "forbidden: principal {:?} may not use {} {name:?}",
        access.principal,
        what.word()
    );
    Some(encode::error(out, &req.id, jsonrpc::FORBIDDEN, &msg))
}

/// What each era requires before any method runs: modern requests carry the
/// client's capabilities; legacy sessions are initialized first (`ping` and
/// `initialize` excepted).
fn preconditions(session: &Session, req: &Req<'_, '_>, out: &mut Vec<u8>) -> Option<i32> {
    match req.era {
        Era::Modern(_) => {
            let caps = req
                .meta
                .as_ref()
                .and_then(|m| m.get(meta::CLIENT_CAPABILITIES));
            if caps.is_some_and(|c| c.is_object()) {
                return None;
            }
            let msg = "modern requests need params._meta[\"io.modelcontextprotocol/clientCapabilities\"] (an object)";
            Some(encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg))
        }
        Era::Legacy => {
            if matches!(req.method, Some(Method::Initialize | Method::Ping))
                || session.phase != Phase::AwaitingInitialize
            {
                return None;
            }
            let msg = "server not initialized: send initialize first";
            Some(encode::error(out, &req.id, jsonrpc::INVALID_REQUEST, msg))
        }
    }
}

/// What a handler may use to reach the client, per era: a modern request
/// brings its capabilities, log level and progress token in `_meta` and has
/// only its own stream; a legacy one uses what its session agreed, its
/// session's channel and its questions to the client.
pub(crate) fn call_ctx<'c>(
    session: &Session,
    core: &'c Rc<Core>,
    req: &Req<'_, '_>,
) -> CallCtx<'c> {
    let mut cx = CallCtx::new(core, req.era);
    cx.progress = progress_for(&req.meta, req.related);
    match req.era {
        Era::Modern(_) => {
            cx.caps = modern_caps(req);
            cx.related = req.related.cloned();
            let level = req
                .meta
                .as_ref()
                .and_then(|m| m.get(meta::LOG_LEVEL))
                .and_then(|l| l.into_string())
                .and_then(LogLevel::parse);
            if let (Some(min), Some(sink)) = (level, req.related) {
                cx.log = Some(LogSink {
                    min,
                    sink: sink.clone(),
                });
            }
        }
        Era::Legacy => {
            cx.caps = session.caps;
            let channel = req.related.or(session.unrelated.as_ref()).cloned();
            cx.related = channel.clone();
            cx.outbound = Some(session.outbound.clone());
            cx.session_scope = session.scope;
            cx.session_key = session.store_key.clone();
            if let (Some(min), Some(sink)) = (session.log_level, channel) {
                cx.log = Some(LogSink { min, sink });
            }
        }
    }
    cx
}

/// The client capabilities a modern request declares in its `_meta`.
pub(crate) fn modern_caps(req: &Req<'_, '_>) -> ClientCaps {
    ClientCaps::parse(
        req.meta
            .as_ref()
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES)),
    )
}

/// The progress sink for a request that asked for progress and has somewhere
/// to send it.
fn progress_for(
    req_meta: &Option<TapeValue<'_, '_>>,
    related: Option<&SharedNotifier>,
) -> Option<Progress> {
    let token = req_meta.as_ref()?.get(meta::PROGRESS_TOKEN)?;
    if !(token.is_str() || token.is_i64() || token.is_u64()) {
        return None;
    }
    let mut encoded = Vec::with_capacity(16);
    json::write_value(&mut encoded, token);
    Some(Progress::new(encoded.into_boxed_slice(), related?.clone()))
}

mod traced;

#[cfg(test)]
mod tests;
