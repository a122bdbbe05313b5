//! Tasks: tool calls that outlive their request, in both spec eras.
//!
//! - 2025-11-25 (experimental, `capabilities.tasks`): the client asks for a
//!   task with `params.task` on `tools/call`; `tasks/get`, `tasks/result`
//!   (waits for the end), `tasks/list` (this session's tasks), `tasks/cancel`,
//!   and `notifications/tasks/status` on every status change.
//! - 2026-07-28 (`io.modelcontextprotocol/tasks` extension, SEP-2663): the
//!   server decides; a task-supporting tool called by a client that declared
//!   the extension answers `resultType:"task"`. `tasks/get` inlines the
//!   result or error, `tasks/update` delivers `inputResponses` for a task
//!   parked in `input_required`, `tasks/cancel` acknowledges.
//!
//! A task is owned by the shard that created it and its id names that shard
//! (`{shard:04x}-{random}`, and `.{node}` in a cluster), so any shard routes
//! `tasks/*` to the owner over the mesh with no shared table
//! (`server::placement`).
//!
//! In a cluster (`--cluster`) every task is written behind to the cluster's
//! store: a legacy task with its session (it moves with the session when
//! another node takes the session over), a modern one under its own id. A
//! modern `tasks/*` for a task another node made is relayed there by the
//! transport while that node lives; once it is dead the task's owner shard
//! here takes the task over ([`run`]). A task taken over, or restored after
//! a restart, that was still running has lost its handler: it is failed,
//! saying so. Each shard holds at most
//! `max_tasks_per_shard` tasks; a task lives `ttl_ms` (the client's wish,
//! capped by `task_ttl_ms`) and is then removed, running or not. At the
//! bound, expired tasks are swept first; if none, creation is refused with
//! -31010 and counted (`tasks_rejected`).
//!
//! Input inside a task (modern era) reuses the multi-round machinery: the
//! handler runs with the answers gathered so far; when it needs more, the
//! task parks in `input_required` with the open requests, and once
//! `tasks/update` has answered all of them the handler runs again with
//! every answer. Legacy-era tasks ask the client with real requests on the
//! session, like any handler.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::FutureExt;
use simd_json::prelude::*;

use super::clock::{iso8601, now_ms};
use super::core::Core;
use super::ctx::{Ask, CallCtx, ClientCaps, Outbound, Rounds};
use super::dispatch::Req;
use super::encode::{self, Close, Era};
use super::placement;
use super::registry::ToolEntry;
use super::shared::Claimed;
use super::tools::{Args, CallError, RpcError, TaskSupport, Tool, ToolReply, ToolResult};
use super::{Handled, SharedNotifier};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc;
use crate::protocol::mcp::code;
use crate::runtime::local::OneshotSender;

pub(crate) const EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// How often clients are told to poll `tasks/get`.
pub(crate) const POLL_INTERVAL_MS: u64 = 250;

/// `capabilities.tasks` of the 2025-11-25 experimental surface.
pub(crate) fn write_legacy_capability(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b",\"tasks\":{\"list\":{},\"cancel\":{},\"requests\":{\"tools\":{\"call\":{}}}}",
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Working,
    InputRequired,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Working => "working",
            Status::InputRequired => "input_required",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// Where a legacy task's status notifications and questions go.
#[derive(Clone)]
struct LegacyLink {
    scope: u64,
    /// The key the session is stored under, if it is stored.
    session: Option<Rc<str>>,
    notifier: Option<SharedNotifier>,
    outbound: Option<Rc<Outbound>>,
}

pub(crate) struct Task {
    pub(crate) id: String,
    era: Era,
    pub(crate) status: Status,
    status_message: Option<String>,
    pub(crate) created_ms: u64,
    updated_ms: u64,
    ttl_ms: u64,
    tool: Rc<dyn Tool>,
    /// The call's arguments, as JSON text (a task outlives its request).
    args: String,
    caps: ClientCaps,
    legacy: Option<LegacyLink>,
    /// Answers gathered so far (modern), by input key.
    responses: HashMap<String, String>,
    /// Open input requests (modern `input_required`), by key.
    input_requests: Vec<(String, String)>,
    /// State the handler asked to keep between rounds.
    state: Option<String>,
    /// The tool result (completed), as a JSON object (legacy encoding).
    pub(crate) result: Option<String>,
    pub(crate) error: Option<RpcError>,
    running: Option<glommio::task::JoinHandle<()>>,
    /// Woken when the task reaches a terminal status (`tasks/result`).
    pub(crate) waiters: Vec<OneshotSender<()>>,
}

impl Task {
    /// The Task members (without braces), in the era's field names.
    fn write_members(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"taskId\":");
        json::write_str(out, &self.id);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(self.status.name().as_bytes());
        out.push(b'"');
        if let Some(m) = &self.status_message {
            out.extend_from_slice(b",\"statusMessage\":");
            json::write_str(out, m);
        }
        out.extend_from_slice(b",\"createdAt\":");
        json::write_str(out, &iso8601(self.created_ms));
        out.extend_from_slice(b",\"lastUpdatedAt\":");
        json::write_str(out, &iso8601(self.updated_ms));
        if self.era.is_modern() {
            out.extend_from_slice(b",\"ttlMs\":");
            json::write_u64(out, self.ttl_ms);
            out.extend_from_slice(b",\"pollIntervalMs\":");
        } else {
            out.extend_from_slice(b",\"ttl\":");
            json::write_u64(out, self.ttl_ms);
            out.extend_from_slice(b",\"pollInterval\":");
        }
        json::write_u64(out, POLL_INTERVAL_MS);
    }

    /// The task object on its own.
    pub(crate) fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        self.write_members(&mut out);
        out.push(b'}');
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// The modern `tasks/get` DetailedTask members: the task plus whatever
    /// its status carries.
    fn detailed_members(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_members(&mut out);
        match self.status {
            Status::InputRequired => {
                out.extend_from_slice(b",\"inputRequests\":{");
                for (i, (k, r)) in self.input_requests.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json::write_str(&mut out, k);
                    out.push(b':');
                    out.extend_from_slice(r.as_bytes());
                }
                out.push(b'}');
            }
            Status::Completed => {
                if let Some(r) = &self.result {
                    out.extend_from_slice(b",\"result\":");
                    out.extend_from_slice(r.as_bytes());
                }
            }
            Status::Failed => {
                if let Some(e) = &self.error {
                    out.extend_from_slice(b",\"error\":");
                    write_error_object(&mut out, e);
                }
            }
            _ => {}
        }
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// The stored legacy session the task belongs to.
    fn session(&self) -> Option<&Rc<str>> {
        self.legacy.as_ref().and_then(|l| l.session.as_ref())
    }

    fn expires_at_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.ttl_ms)
    }

    pub(crate) fn is_legacy_of(&self, scope: u64) -> bool {
        self.legacy.as_ref().is_some_and(|l| l.scope == scope)
    }

    fn expired(&self, now: u64) -> bool {
        now >= self.created_ms.saturating_add(self.ttl_ms)
    }
}

fn write_error_object(out: &mut Vec<u8>, e: &RpcError) {
    out.extend_from_slice(b"{\"code\":");
    json::write_i64(out, e.code as i64);
    out.extend_from_slice(b",\"message\":");
    json::write_str(out, &e.message);
    if let Some(d) = &e.data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(d.as_bytes());
    }
    out.push(b'}');
}

/// The tasks one shard owns. Bounded; see the module docs.
pub(crate) struct TaskTable {
    shard: usize,
    max: usize,
    ttl_max_ms: u64,
    pub(crate) tasks: HashMap<String, Task>,
    /// With a store: tasks changed or removed since the last flush, with
    /// the stored session each belongs to.
    dirty: Option<HashMap<String, Option<Rc<str>>>>,
    /// The node this shard belongs to (`--cluster`): task ids name it.
    node: Option<Rc<str>>,
}

impl TaskTable {
    pub fn new(shard: usize, max: usize, ttl_max_ms: u64) -> Self {
        Self {
            shard,
            max,
            ttl_max_ms,
            tasks: HashMap::new(),
            dirty: None,
            node: None,
        }
    }

    /// Joins a cluster as node `node`: ids made from now on name it.
    pub fn set_node(&mut self, node: &str) {
        assert!(placement::valid_node(node), "node id {node:?}");
        self.node = Some(node.into());
    }

    pub fn node(&self) -> Option<Rc<str>> {
        self.node.clone()
    }

    /// Records which tasks change, for the store (`--data-dir`).
    pub fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(Default::default);
    }

    fn touch(&mut self, id: &str) {
        let session = self.tasks.get(id).and_then(|t| t.session().cloned());
        if let Some(d) = self.dirty.as_mut() {
            let known = d.entry(id.to_owned()).or_insert(None);
            if session.is_some() {
                *known = session;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Removes tasks past their TTL (stopping any still running); returns
    /// how many.
    pub(crate) fn sweep(&mut self, now: u64) -> usize {
        let expired: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.expired(now))
            .map(|t| t.id.clone())
            .collect();
        for id in &expired {
            self.touch(id);
            if let Some(t) = self.tasks.remove(id) {
                if let Some(h) = t.running {
                    h.cancel();
                }
            }
        }
        expired.len()
    }

    /// A fresh id naming this shard: `{shard:04x}-` and 96 random bits
    /// (and `.{node}` in a cluster).
    fn new_id(&self) -> String {
        let local = format!("{:04x}-{}", self.shard, crate::runtime::random::hex::<12>());
        placement::name(local, self.node.as_deref())
    }
}

mod stored;

pub(crate) use stored::{adopt, flush_store, forget, republish, restore};

/// The shard of this node (`node`, in a cluster) that owns task `id`, if
/// the id is well-formed (see `server::placement`).
pub(crate) fn owner_of(id: &str, shard_count: usize, node: Option<&str>) -> Option<usize> {
    let (local, _) = placement::split(id);
    let (prefix, rest) = local.split_once('-')?;
    if prefix.len() != 4 || rest.len() != 24 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shard = usize::from_str_radix(prefix, 16).ok()?;
    placement::owner(id, shard, shard_count, node)
}

pub(crate) fn unknown_task(id: &str) -> RpcError {
    let mut data = Vec::with_capacity(32 + id.len());
    data.extend_from_slice(b"{\"taskId\":");
    json::write_str(&mut data, id);
    data.push(b'}');
    RpcError::invalid_params(format!("Unknown task: {id}"))
        .with_data(String::from_utf8(data).expect("UTF-8"))
}

pub(crate) fn missing_extension() -> RpcError {
    RpcError::new(
        code::MISSING_REQUIRED_CLIENT_CAPABILITY,
        format!("Missing required client capability: the {EXTENSION} extension"),
    )
    .with_data(format!(
        "{{\"requiredCapabilities\":{{\"extensions\":{{\"{EXTENSION}\":{{}}}}}}}}"
    ))
}

/// Sends `notifications/tasks/status` (legacy) for a task that changed.
fn announce(task: &Task) {
    let Some(n) = task.legacy.as_ref().and_then(|l| l.notifier.as_ref()) else {
        return;
    };
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tasks/status\",\"params\":",
    );
    m.extend_from_slice(task.to_json().as_bytes());
    m.push(b'}');
    n.notify(&m);
}

/// Tells the listen streams following a modern task, on every shard and
/// every node, that its status changed.
fn announce_modern(core: &Core, task: &Task) {
    let params = format!("{{{}}}", task.detailed_members());
    let shared = core.shared.borrow().clone();
    if let Some(s) = shared {
        s.announce(super::shared::Announcement::TaskStatus {
            id: task.id.clone(),
            params: params.clone(),
        });
    }
    status_here(core, &task.id, &params);
}

/// A task's status change, to this node's listen streams (one another node
/// announced, or this one's).
pub(crate) fn status_here(core: &Core, id: &str, params: &str) {
    for to in (0..core.shard_count).filter(|&s| s != core.id) {
        core.tell(
            to,
            super::msg::Msg::TaskStatus {
                id: id.to_owned(),
                params: params.to_owned(),
            },
        );
    }
    deliver_status(core, id, params);
}

/// On one shard: `notifications/tasks/status` to the listen streams that
/// follow task `id`.
pub(crate) fn deliver_status(core: &Core, id: &str, params: &str) {
    let sinks: Vec<SharedNotifier> = core
        .listeners
        .borrow()
        .values()
        .filter(|l| l.filter.task_ids.iter().any(|t| t == id))
        .map(|l| l.sink.clone())
        .collect();
    if sinks.is_empty() {
        return;
    }
    let msg = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tasks/status\",\"params\":{params}}}"
    );
    for s in sinks {
        s.notify(msg.as_bytes());
    }
}

/// Moves task `id` to `status` (and tells whoever waits for the end).
fn set_status(core: &Core, id: &str, status: Status, message: Option<String>) {
    let mut table = core.tasks.borrow_mut();
    let Some(t) = table.tasks.get_mut(id) else {
        return;
    };
    if t.status.is_terminal() {
        return;
    }
    t.status = status;
    t.status_message = message;
    t.updated_ms = now_ms().max(t.updated_ms);
    if status.is_terminal() {
        t.running = None;
        for w in t.waiters.drain(..) {
            w.send(());
        }
    }
    announce(t);
    if t.era.is_modern() {
        announce_modern(core, t);
    }
    table.touch(id);
}

/// Runs one round of task `id`'s handler on this shard.
fn run_round(core: &Rc<Core>, id: &str) {
    let (tool, args, era, caps, legacy, rounds) = {
        let table = core.tasks.borrow();
        let Some(t) = table.tasks.get(id) else { return };
        let rounds = t
            .era
            .is_modern()
            .then(|| Rounds::new(t.responses.clone(), t.state.clone()));
        (
            t.tool.clone(),
            t.args.clone(),
            t.era,
            t.caps,
            t.legacy.clone(),
            rounds,
        )
    };
    let core2 = core.clone();
    let task_id = id.to_owned();
    let handle = glommio::spawn_local(async move {
        let core = core2;
        let mut cx = CallCtx::new(&core, era);
        cx.caps = caps;
        if let Some(l) = &legacy {
            cx.related = l.notifier.clone();
            cx.outbound = l.outbound.clone();
        }
        *cx.rounds.get_mut() = rounds;
        let mut bytes = args.into_bytes();
        let outcome = match simd_json::to_tape(&mut bytes) {
            Err(e) => Err(CallError::Rpc(RpcError::new(
                jsonrpc::INTERNAL_ERROR,
                format!("task arguments: {e}"),
            ))),
            Ok(tape) => {
                let run =
                    std::panic::catch_unwind(AssertUnwindSafe(|| tool.call(&cx, tape.as_value())));
                match run {
                    Ok(ToolReply::Ready(o)) => o.map(ToolResult::into_owned),
                    Ok(ToolReply::Pending(fut)) => match AssertUnwindSafe(fut).catch_unwind().await
                    {
                        Ok(o) => o,
                        Err(_) => Err(panic_error(&core, &task_id)),
                    },
                    Err(_) => Err(panic_error(&core, &task_id)),
                }
            }
        };
        finish_round(&core, &task_id, &cx, outcome);
    })
    .detach();
    if let Some(t) = core.tasks.borrow_mut().tasks.get_mut(id) {
        t.running = Some(handle);
    }
}

fn panic_error(core: &Core, id: &str) -> CallError {
    core.metrics.borrow_mut().counters.handler_panics += 1;
    log::error!(
        "shard {}: task {id}: handler panicked; task failed with -32603",
        core.id
    );
    CallError::Rpc(RpcError::new(
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the handler failed unexpectedly",
    ))
}

fn finish_round(
    core: &Rc<Core>,
    id: &str,
    cx: &CallCtx<'_>,
    outcome: Result<ToolResult<'static>, CallError>,
) {
    match outcome {
        Ok(r) => {
            let mut out = Vec::with_capacity(256);
            r.write_json(&mut out, Era::Legacy);
            if let Some(t) = core.tasks.borrow_mut().tasks.get_mut(id) {
                t.result = Some(String::from_utf8(out).expect("JSON is UTF-8"));
            }
            set_status(core, id, Status::Completed, None);
        }
        Err(CallError::InputRequired) => {
            let made = cx.made();
            let rounds = made.as_ref().and_then(|c| c.rounds());
            let requested = rounds.map(|r| r.requested()).unwrap_or_default();
            let next_state = rounds.and_then(|r| r.next_state());
            if requested.is_empty() {
                let e = RpcError::new(
                    jsonrpc::INTERNAL_ERROR,
                    "handler asked for input but recorded no input request",
                );
                fail(core, id, e);
                return;
            }
            if let Some(t) = core.tasks.borrow_mut().tasks.get_mut(id) {
                t.input_requests = requested
                    .into_iter()
                    .filter(|(k, _)| !t.responses.contains_key(k))
                    .collect();
                t.state = next_state;
                t.running = None;
            }
            set_status(
                core,
                id,
                Status::InputRequired,
                Some("waiting for client input".into()),
            );
        }
        Err(CallError::Rpc(e)) => fail(core, id, e),
    }
}

fn fail(core: &Core, id: &str, e: RpcError) {
    let msg = e.message.clone();
    if let Some(t) = core.tasks.borrow_mut().tasks.get_mut(id) {
        t.error = Some(e);
    }
    set_status(core, id, Status::Failed, Some(msg));
}

/// `tools/call` on a task-supporting tool: creates the task when the era and
/// the client call for one; `None` runs the call synchronously.
pub(crate) fn intercept_call(
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    cx: &CallCtx<'_>,
    entry: &ToolEntry,
    args: Args<'_>,
) -> Option<Handled> {
    let desc = entry.tool.descriptor();
    let support = desc.task_support;
    let kind = MethodKind::ToolsCall;
    let requested_ttl = match cx.era {
        Era::Modern(_) => {
            if support == TaskSupport::Forbidden {
                return None;
            }
            if !cx.caps.tasks_extension {
                if support == TaskSupport::Required {
                    let code = encode::rpc_error(out, &req.id, &missing_extension());
                    return Some(Handled::err(kind, code));
                }
                return None;
            }
            // Input the tool gathers by multi-round requests before it
            // becomes a task.
            if !desc.pre_task_inputs.is_empty() {
                let responses = req.params.as_ref().and_then(|p| p.get("inputResponses"));
                let missing: Vec<&(Ask, String, String)> = desc
                    .pre_task_inputs
                    .iter()
                    .filter(|(_, k, _)| {
                        responses.as_ref().and_then(|r| r.get(k.as_str())).is_none()
                    })
                    .collect();
                if !missing.is_empty() {
                    jsonrpc::begin_result(out, &req.id);
                    out.extend_from_slice(b"{\"inputRequests\":{");
                    for (i, (ask, k, params)) in missing.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json::write_str(out, k);
                        out.extend_from_slice(b":{\"method\":");
                        json::write_str(out, ask.method());
                        out.extend_from_slice(b",\"params\":");
                        out.extend_from_slice(params.as_bytes());
                        out.push(b'}');
                    }
                    out.push(b'}');
                    encode::close_object(
                        out,
                        cx.era,
                        Close {
                            result_type: "input_required",
                            ..Close::complete(true)
                        },
                    );
                    jsonrpc::end_response(out);
                    return Some(Handled::ok(kind));
                }
            }
            None
        }
        Era::Legacy => {
            let task = req
                .params
                .as_ref()
                .and_then(|p| p.get("task"))
                .filter(|t| !t.is_null());
            match (support, task) {
                (TaskSupport::Required, None) => {
                    let e = RpcError::new(
                        jsonrpc::METHOD_NOT_FOUND,
                        format!("tool {} must be called as a task (params.task)", desc.name),
                    );
                    return Some(Handled::err(kind, encode::rpc_error(out, &req.id, &e)));
                }
                (TaskSupport::Forbidden, _) | (_, None) => return None,
                (_, Some(t)) => t.get("ttl").and_then(|v| v.as_u64()),
            }
        }
    };
    let mut responses = HashMap::new();
    if let Some(r) = req
        .params
        .as_ref()
        .and_then(|p| p.get("inputResponses"))
        .and_then(|r| r.as_object())
    {
        for (k, v) in r.iter() {
            responses.insert(k.to_owned(), json::encode_value(v));
        }
    }
    let legacy = (!cx.era.is_modern()).then(|| LegacyLink {
        scope: cx.session_scope,
        session: cx.session_key.clone(),
        notifier: cx.related.clone(),
        outbound: cx.outbound.clone(),
    });
    let created = create(
        core,
        entry.tool.clone(),
        json::encode_value(args),
        cx.era,
        cx.caps,
        legacy,
        responses,
        requested_ttl,
    );
    match created {
        Err(e) => Some(Handled::err(kind, encode::rpc_error(out, &req.id, &e))),
        Ok(task_json_members) => {
            jsonrpc::begin_result(out, &req.id);
            if cx.era.is_modern() {
                out.push(b'{');
                out.extend_from_slice(task_json_members.as_bytes());
                encode::close_object(
                    out,
                    cx.era,
                    Close {
                        result_type: "task",
                        ..Close::complete(true)
                    },
                );
            } else {
                out.extend_from_slice(b"{\"task\":{");
                out.extend_from_slice(task_json_members.as_bytes());
                out.extend_from_slice(b"}}");
            }
            jsonrpc::end_response(out);
            Some(Handled::ok(kind))
        }
    }
}

/// Creates a task on this shard and starts its first round; returns its
/// Task members.
#[allow(clippy::too_many_arguments)]
fn create(
    core: &Rc<Core>,
    tool: Rc<dyn Tool>,
    args: String,
    era: Era,
    caps: ClientCaps,
    legacy: Option<LegacyLink>,
    responses: HashMap<String, String>,
    requested_ttl_ms: Option<u64>,
) -> Result<String, RpcError> {
    let now = now_ms();
    let id = {
        let mut table = core.tasks.borrow_mut();
        if table.tasks.len() >= table.max {
            let n = table.sweep(now);
            core.metrics.borrow_mut().counters.tasks_expired += n as u64;
        }
        if table.tasks.len() >= table.max {
            core.metrics.borrow_mut().counters.tasks_rejected += 1;
            return Err(RpcError::new(
                jsonrpc::SERVER_OVERLOADED,
                format!(
                    "too many tasks on this shard ({} max, max-tasks-per-shard); retry later",
                    table.max
                ),
            ));
        }
        let ttl_ms = requested_ttl_ms
            .unwrap_or(table.ttl_max_ms)
            .clamp(1, table.ttl_max_ms);
        let id = table.new_id();
        table.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                era,
                status: Status::Working,
                status_message: None,
                created_ms: now,
                updated_ms: now,
                ttl_ms,
                tool,
                args,
                caps,
                legacy,
                responses,
                input_requests: Vec::new(),
                state: None,
                result: None,
                error: None,
                running: None,
                waiters: Vec::new(),
            },
        );
        table.touch(&id);
        id
    };
    core.metrics.borrow_mut().counters.tasks_created += 1;
    let members = {
        let table = core.tasks.borrow();
        let t = &table.tasks[&id];
        let mut out = Vec::with_capacity(256);
        t.write_members(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    };
    run_round(core, &id);
    Ok(members)
}

/// A `tasks/*` operation, run at the task's owner.
#[derive(Debug, Clone)]
pub(crate) enum TaskOp {
    Get(String),
    Update(String, Vec<(String, String)>),
    Cancel(String),
}

impl TaskOp {
    pub(crate) fn id(&self) -> &str {
        match self {
            TaskOp::Get(id) | TaskOp::Update(id, _) | TaskOp::Cancel(id) => id,
        }
    }
}

/// A task operation's outcome: now, or once the task is taken over.
pub(crate) enum Run {
    Now(Result<String, RpcError>),
    Later(Pin<Box<dyn Future<Output = Result<String, RpcError>>>>),
}

/// Runs a modern task operation on the owning shard (this one): at once,
/// unless the task is not here and was made by another node of the
/// cluster; then it is claimed from the cluster's store first (its maker is
/// dead: the transport relays to a live one) and runs once it is here.
pub(crate) fn run(core: &Rc<Core>, op: TaskOp) -> Run {
    let foreign = {
        let table = core.tasks.borrow();
        !table.tasks.contains_key(op.id())
            && placement::node_of(op.id()).is_some_and(|n| Some(n) != table.node.as_deref())
    };
    let shared = core.shared.borrow().clone();
    let Some(shared) = shared.filter(|_| foreign) else {
        return Run::Now(execute(core, op));
    };
    let core = core.clone();
    Run::Later(Box::pin(async move {
        match shared.claim_task(op.id().to_owned()).await {
            Err(why) => Err(RpcError::new(jsonrpc::SERVER_OVERLOADED, why)),
            Ok(Claimed::Gone) => Err(unknown_task(op.id())),
            Ok(Claimed::Held) => execute(&core, op),
            Ok(Claimed::Taken(record)) => {
                adopt(&core, op.id(), &record);
                execute(&core, op)
            }
        }
    }))
}

/// Runs a modern task operation on the owning shard: the members of the
/// result object (without `resultType`), or the error.
pub(crate) fn execute(core: &Rc<Core>, op: TaskOp) -> Result<String, RpcError> {
    let now = now_ms();
    {
        let mut table = core.tasks.borrow_mut();
        let n = table.sweep(now);
        if n > 0 {
            core.metrics.borrow_mut().counters.tasks_expired += n as u64;
        }
        match table.tasks.get(op.id()) {
            Some(t) if t.era.is_modern() => {}
            _ => return Err(unknown_task(op.id())),
        }
    }
    match op {
        TaskOp::Get(id) => Ok(core.tasks.borrow().tasks[&id].detailed_members()),
        TaskOp::Update(id, answers) => {
            let ready = {
                let mut table = core.tasks.borrow_mut();
                let t = table.tasks.get_mut(&id).expect("checked above");
                let ready = if t.status != Status::InputRequired {
                    // Answers for a task not waiting are acknowledged and kept
                    // for its next round.
                    t.responses.extend(answers);
                    false
                } else {
                    for (k, v) in answers {
                        t.input_requests.retain(|(key, _)| *key != k);
                        t.responses.insert(k, v);
                    }
                    t.updated_ms = now.max(t.updated_ms);
                    t.input_requests.is_empty()
                };
                table.touch(&id);
                ready
            };
            if ready {
                set_status(core, &id, Status::Working, None);
                run_round(core, &id);
            }
            Ok(String::new())
        }
        TaskOp::Cancel(id) => {
            cancel_local(core, &id);
            Ok(String::new())
        }
    }
}

/// Stops a task's handler and marks it cancelled (terminal tasks stay as
/// they are).
pub(crate) fn cancel_local(core: &Core, id: &str) {
    let handle = {
        let mut table = core.tasks.borrow_mut();
        match table.tasks.get_mut(id) {
            Some(t) if !t.status.is_terminal() => t.running.take(),
            _ => return,
        }
    };
    if let Some(h) = handle {
        h.cancel();
    }
    core.metrics.borrow_mut().counters.requests_cancelled += 1;
    set_status(
        core,
        id,
        Status::Cancelled,
        Some("cancelled by the client".into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_shard() {
        let t = TaskTable::new(3, 10, 1000);
        let id = t.new_id();
        assert_eq!(owner_of(&id, 4, None), Some(3));
        // A shard the node no longer has: its ids go to `3 mod 3`.
        assert_eq!(owner_of(&id, 3, None), Some(0));
        assert_eq!(owner_of("nope", 4, None), None);
        assert_ne!(id, t.new_id());
        let mut t = TaskTable::new(1, 10, 1000);
        t.set_node("n1");
        let id = t.new_id();
        assert!(id.ends_with(".n1"), "{id}");
        assert_eq!(owner_of(&id, 4, Some("n1")), Some(1));
        assert_eq!(owner_of(&id, 4, None), None);
        let elsewhere = owner_of(&id, 4, Some("n2")).expect("a shard on another node");
        assert!(elsewhere < 4);
    }
}
