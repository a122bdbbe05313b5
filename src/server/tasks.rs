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
//! (`{shard:04x}-{random}`), so any shard routes `tasks/*` to the owner over
//! the mesh with no shared table. Each shard holds at most
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

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_lite::FutureExt;
use simd_json::prelude::*;

use super::ctx::{CallCtx, ClientCaps, Outbound, Rounds};
use super::registry::ToolEntry;
use super::tools::{Args, CallError, RpcError, TaskSupport, Tool, ToolReply, ToolResult};
use super::{close_result, write_rpc_error, Era, Handled, Inflight, Req, SharedNotifier};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};
use crate::protocol::mcp::code;
use crate::runtime::mesh::{Reply, Request};
use crate::runtime::shard::Shard;

pub const EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// How often clients are told to poll `tasks/get`.
pub const POLL_INTERVAL_MS: u64 = 250;

/// Task methods served in `era`.
pub fn is_task_method(name: &str, era: Era) -> bool {
    match era {
        Era::Modern(_) => matches!(name, "tasks/get" | "tasks/update" | "tasks/cancel"),
        Era::Legacy => matches!(
            name,
            "tasks/get" | "tasks/result" | "tasks/list" | "tasks/cancel"
        ),
    }
}

/// `capabilities.tasks` of the 2025-11-25 experimental surface.
pub fn write_legacy_capability(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b",\"tasks\":{\"list\":{},\"cancel\":{},\"requests\":{\"tools\":{\"call\":{}}}}",
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Where a legacy task's status notifications and questions go.
#[derive(Clone)]
struct LegacyLink {
    scope: u64,
    notifier: Option<SharedNotifier>,
    outbound: Option<Rc<Outbound>>,
}

struct Task {
    id: String,
    era: Era,
    status: Status,
    status_message: Option<String>,
    created_ms: u64,
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
    /// The tool result (completed), as a JSON object.
    result: Option<String>,
    error: Option<RpcError>,
    running: Option<glommio::task::JoinHandle<()>>,
    /// Woken when the task reaches a terminal status (`tasks/result`).
    waiters: Vec<crate::runtime::local::OneshotSender<()>>,
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
    fn to_json(&self) -> String {
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
pub struct TaskTable {
    shard: usize,
    max: usize,
    ttl_max_ms: u64,
    tasks: HashMap<String, Task>,
    /// With `--data-dir`: tasks changed or removed since the last flush.
    dirty: Option<std::collections::HashSet<String>>,
}

impl TaskTable {
    pub fn new(shard: usize, max: usize, ttl_max_ms: u64) -> Self {
        Self {
            shard,
            max,
            ttl_max_ms,
            tasks: HashMap::new(),
            dirty: None,
        }
    }

    /// Records which tasks change, for the store (`--data-dir`).
    pub fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(Default::default);
    }

    fn touch(&mut self, id: &str) {
        if let Some(d) = self.dirty.as_mut() {
            d.insert(id.to_owned());
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Removes tasks past their TTL (stopping any still running); returns
    /// how many.
    fn sweep(&mut self, now: u64) -> usize {
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

    fn new_id(&self) -> String {
        let mut r = [0u8; 12];
        let mut filled = 0;
        while filled < r.len() {
            // SAFETY: getrandom writes at most the given length into our buffer.
            let n =
                unsafe { libc::getrandom(r[filled..].as_mut_ptr().cast(), r.len() - filled, 0) };
            assert!(
                n > 0,
                "getrandom failed: {}",
                std::io::Error::last_os_error()
            );
            filled += n as usize;
        }
        let mut id = format!("{:04x}-", self.shard);
        for b in r {
            id.push_str(&format!("{b:02x}"));
        }
        id
    }
}

/// What the store keeps of a task (`--data-dir`).
#[derive(serde::Serialize, serde::Deserialize)]
struct TaskRecord {
    era: Option<String>,
    status: String,
    status_message: Option<String>,
    created_ms: u64,
    updated_ms: u64,
    ttl_ms: u64,
    tool: String,
    args: String,
    caps: [bool; 4],
    /// The legacy session scope that may list it.
    scope: Option<u64>,
    responses: Vec<(String, String)>,
    input_requests: Vec<(String, String)>,
    state: Option<String>,
    result: Option<String>,
    error: Option<(i32, String, Option<String>)>,
}

impl Task {
    fn record(&self) -> Vec<u8> {
        let rec = TaskRecord {
            era: match self.era {
                Era::Legacy => None,
                Era::Modern(v) => Some(v.to_owned()),
            },
            status: self.status.name().to_owned(),
            status_message: self.status_message.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            ttl_ms: self.ttl_ms,
            tool: self.tool.descriptor().name.clone(),
            args: self.args.clone(),
            caps: [
                self.caps.sampling,
                self.caps.elicitation,
                self.caps.roots,
                self.caps.tasks_extension,
            ],
            scope: self.legacy.as_ref().map(|l| l.scope),
            responses: self
                .responses
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            input_requests: self.input_requests.clone(),
            state: self.state.clone(),
            result: self.result.clone(),
            error: self
                .error
                .as_ref()
                .map(|e| (e.code, e.message.clone(), e.data.clone())),
        };
        serde_json::to_vec(&rec).expect("a task record encodes")
    }
}

/// Hands the tasks changed since the last call to the store.
pub fn flush_store(shard: &Shard) {
    let ops: Vec<crate::runtime::store::Op> = {
        let mut table = shard.tasks.borrow_mut();
        let Some(dirty) = table.dirty.as_mut().filter(|d| !d.is_empty()) else {
            return;
        };
        let ids: Vec<String> = dirty.drain().collect();
        ids.into_iter()
            .map(|id| match table.tasks.get(&id) {
                Some(t) => crate::runtime::store::Op::PutTask(id, t.record()),
                None => crate::runtime::store::Op::DelTask(id),
            })
            .collect()
    };
    let mut store = shard.store.borrow_mut();
    if let Some(s) = store.as_mut() {
        for op in ops {
            if !s.push(op) {
                shard.metrics.borrow_mut().counters.store_dropped += 1;
            }
        }
    }
}

/// Brings back a shard's stored tasks: finished ones as they were, ones
/// waiting for input still waiting; ones that were running when the server
/// stopped have lost their handler and are failed, saying so. Returns how
/// many were restored.
pub fn restore(shard: &Shard, records: Vec<(String, Vec<u8>)>) -> usize {
    let now = now_ms();
    let mut restored = 0;
    let mut table = shard.tasks.borrow_mut();
    for (id, bytes) in records {
        let rec: TaskRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(_) => {
                table.touch(&id);
                continue;
            }
        };
        let tool = shard.registry.tool(&rec.tool).map(|e| e.tool.clone());
        let era = match rec.era.as_deref() {
            None => Some(Era::Legacy),
            Some(v) => crate::protocol::mcp::modern_version(v).map(Era::Modern),
        };
        let (Some(tool), Some(era)) = (tool, era) else {
            table.touch(&id); // its tool or era is gone: forget it
            continue;
        };
        if owner_of(&id, shard.shard_count) != Some(shard.id)
            || now >= rec.created_ms.saturating_add(rec.ttl_ms)
            || table.tasks.len() >= table.max
        {
            table.touch(&id);
            continue;
        }
        let mut status = match rec.status.as_str() {
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "input_required" => Status::InputRequired,
            _ => Status::Working,
        };
        let mut message = rec.status_message;
        let mut error = rec.error.map(|(code, message, data)| RpcError {
            code,
            message,
            data,
        });
        if status == Status::Working {
            status = Status::Failed;
            let m = "the server restarted while the task was running";
            message = Some(m.to_owned());
            error = Some(RpcError::new(jsonrpc::INTERNAL_ERROR, m));
            table.touch(&id);
        }
        let [sampling, elicitation, roots, tasks_extension] = rec.caps;
        table.tasks.insert(
            id.clone(),
            Task {
                id,
                era,
                status,
                status_message: message,
                created_ms: rec.created_ms,
                updated_ms: rec.updated_ms,
                ttl_ms: rec.ttl_ms,
                tool,
                args: rec.args,
                caps: ClientCaps {
                    sampling,
                    elicitation,
                    roots,
                    tasks_extension,
                },
                legacy: rec.scope.map(|scope| LegacyLink {
                    scope,
                    notifier: None,
                    outbound: None,
                }),
                responses: rec.responses.into_iter().collect(),
                input_requests: rec.input_requests,
                state: rec.state,
                result: rec.result,
                error,
                running: None,
                waiters: Vec::new(),
            },
        );
        restored += 1;
    }
    restored
}

/// The shard that owns task `id`, if the id is one of ours.
pub fn owner_of(id: &str, shard_count: usize) -> Option<usize> {
    let (prefix, rest) = id.split_once('-')?;
    if prefix.len() != 4 || rest.len() != 24 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shard = usize::from_str_radix(prefix, 16).ok()?;
    (shard < shard_count).then_some(shard)
}

fn unknown_task(id: &str) -> RpcError {
    let mut data = Vec::with_capacity(32 + id.len());
    data.extend_from_slice(b"{\"taskId\":");
    json::write_str(&mut data, id);
    data.push(b'}');
    RpcError::invalid_params(format!("Unknown task: {id}"))
        .with_data(String::from_utf8(data).expect("UTF-8"))
}

fn missing_extension() -> RpcError {
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

/// Moves task `id` to `status` (and tells whoever waits for the end).
fn set_status(shard: &Shard, id: &str, status: Status, message: Option<String>) {
    let mut table = shard.tasks.borrow_mut();
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
    table.touch(id);
}

/// Runs one round of task `id`'s handler on this shard.
fn run_round(shard: &Rc<Shard>, id: &str) {
    let (tool, args, era, caps, legacy, rounds) = {
        let table = shard.tasks.borrow();
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
    let shard2 = shard.clone();
    let task_id = id.to_owned();
    let handle = glommio::spawn_local(async move {
        let shard = shard2;
        let mut cx = CallCtx::new(&shard, era);
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
                        Err(_) => Err(panic_error(&shard, &task_id)),
                    },
                    Err(_) => Err(panic_error(&shard, &task_id)),
                }
            }
        };
        finish_round(&shard, &task_id, &cx, outcome);
    })
    .detach();
    if let Some(t) = shard.tasks.borrow_mut().tasks.get_mut(id) {
        t.running = Some(handle);
    }
}

fn panic_error(shard: &Shard, id: &str) -> CallError {
    shard.metrics.borrow_mut().counters.handler_panics += 1;
    log::error!(
        "shard {}: task {id}: handler panicked; task failed with -32603",
        shard.id
    );
    CallError::Rpc(RpcError::new(
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the handler failed unexpectedly",
    ))
}

fn finish_round(
    shard: &Rc<Shard>,
    id: &str,
    cx: &CallCtx<'_>,
    outcome: Result<ToolResult<'static>, CallError>,
) {
    match outcome {
        Ok(r) => {
            let mut out = Vec::with_capacity(256);
            r.write_json(&mut out, Era::Legacy);
            if let Some(t) = shard.tasks.borrow_mut().tasks.get_mut(id) {
                t.result = Some(String::from_utf8(out).expect("JSON is UTF-8"));
            }
            set_status(shard, id, Status::Completed, None);
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
                fail(shard, id, e);
                return;
            }
            if let Some(t) = shard.tasks.borrow_mut().tasks.get_mut(id) {
                t.input_requests = requested
                    .into_iter()
                    .filter(|(k, _)| !t.responses.contains_key(k))
                    .collect();
                t.state = next_state;
                t.running = None;
            }
            set_status(
                shard,
                id,
                Status::InputRequired,
                Some("waiting for client input".into()),
            );
        }
        Err(CallError::Rpc(e)) => fail(shard, id, e),
    }
}

fn fail(shard: &Shard, id: &str, e: RpcError) {
    let msg = e.message.clone();
    if let Some(t) = shard.tasks.borrow_mut().tasks.get_mut(id) {
        t.error = Some(e);
    }
    set_status(shard, id, Status::Failed, Some(msg));
}

/// `tools/call` on a task-supporting tool: creates the task when the era and
/// the client call for one; `None` runs the call synchronously.
pub fn intercept_call(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    cx: &CallCtx<'_>,
    entry: &ToolEntry,
    args: Args<'_>,
    _inflight: &Rc<Inflight>,
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
                    write_rpc_error(out, &req.id, &missing_extension());
                    return Some(Handled::done(kind, true));
                }
                return None;
            }
            // Input the tool gathers by multi-round requests before it
            // becomes a task.
            if !desc.pre_task_inputs.is_empty() {
                let responses = req.params.as_ref().and_then(|p| p.get("inputResponses"));
                let missing: Vec<&(super::ctx::Ask, String, String)> = desc
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
                    out.extend_from_slice(b"},\"resultType\":\"input_required\",");
                    out.extend_from_slice(super::SERVER_INFO_META.as_bytes());
                    out.push(b'}');
                    jsonrpc::end_response(out);
                    return Some(Handled::done(kind, false));
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
                    write_rpc_error(out, &req.id, &e);
                    return Some(Handled::done(kind, true));
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
        notifier: cx.related.clone(),
        outbound: cx.outbound.clone(),
    });
    let created = create(
        shard,
        entry.tool.clone(),
        json::encode_value(args),
        cx.era,
        cx.caps,
        legacy,
        responses,
        requested_ttl,
    );
    match created {
        Err(e) => {
            write_rpc_error(out, &req.id, &e);
            Some(Handled::done(kind, true))
        }
        Ok(task_json_members) => {
            jsonrpc::begin_result(out, &req.id);
            if cx.era.is_modern() {
                out.push(b'{');
                out.extend_from_slice(task_json_members.as_bytes());
                out.extend_from_slice(b",\"resultType\":\"task\",");
                out.extend_from_slice(super::SERVER_INFO_META.as_bytes());
                out.push(b'}');
            } else {
                out.extend_from_slice(b"{\"task\":{");
                out.extend_from_slice(task_json_members.as_bytes());
                out.extend_from_slice(b"}}");
            }
            jsonrpc::end_response(out);
            Some(Handled::done(kind, false))
        }
    }
}

/// Creates a task on this shard and starts its first round; returns its
/// Task members.
#[allow(clippy::too_many_arguments)]
fn create(
    shard: &Rc<Shard>,
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
        let mut table = shard.tasks.borrow_mut();
        if table.tasks.len() >= table.max {
            let n = table.sweep(now);
            shard.metrics.borrow_mut().counters.tasks_expired += n as u64;
        }
        if table.tasks.len() >= table.max {
            shard.metrics.borrow_mut().counters.tasks_rejected += 1;
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
    shard.metrics.borrow_mut().counters.tasks_created += 1;
    let members = {
        let table = shard.tasks.borrow();
        let t = &table.tasks[&id];
        let mut out = Vec::with_capacity(256);
        t.write_members(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    };
    run_round(shard, &id);
    Ok(members)
}

/// A `tasks/*` operation, run at the task's owner.
#[derive(Debug)]
pub enum TaskOp {
    Get(String),
    Update(String, Vec<(String, String)>),
    Cancel(String),
}

impl TaskOp {
    fn id(&self) -> &str {
        match self {
            TaskOp::Get(id) | TaskOp::Update(id, _) | TaskOp::Cancel(id) => id,
        }
    }
}

/// Runs a modern task operation on the owning shard: the members of the
/// result object (without `resultType`), or the error.
pub fn execute(shard: &Rc<Shard>, op: TaskOp) -> Result<String, RpcError> {
    let now = now_ms();
    {
        let mut table = shard.tasks.borrow_mut();
        let n = table.sweep(now);
        if n > 0 {
            shard.metrics.borrow_mut().counters.tasks_expired += n as u64;
        }
        match table.tasks.get(op.id()) {
            Some(t) if t.era.is_modern() => {}
            _ => return Err(unknown_task(op.id())),
        }
    }
    match op {
        TaskOp::Get(id) => Ok(shard.tasks.borrow().tasks[&id].detailed_members()),
        TaskOp::Update(id, answers) => {
            let ready = {
                let mut table = shard.tasks.borrow_mut();
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
                set_status(shard, &id, Status::Working, None);
                run_round(shard, &id);
            }
            Ok(String::new())
        }
        TaskOp::Cancel(id) => {
            cancel_local(shard, &id);
            Ok(String::new())
        }
    }
}

/// Stops a task's handler and marks it cancelled (terminal tasks stay as
/// they are).
fn cancel_local(shard: &Shard, id: &str) {
    let handle = {
        let mut table = shard.tasks.borrow_mut();
        match table.tasks.get_mut(id) {
            Some(t) if !t.status.is_terminal() => t.running.take(),
            _ => return,
        }
    };
    if let Some(h) = handle {
        h.cancel();
    }
    shard.metrics.borrow_mut().counters.requests_cancelled += 1;
    set_status(
        shard,
        id,
        Status::Cancelled,
        Some("cancelled by the client".into()),
    );
}

fn task_id_param<'a>(req: &Req<'a, '_>) -> Result<&'a str, RpcError> {
    req.params
        .as_ref()
        .and_then(|p| p.get("taskId"))
        .and_then(|t| t.into_string())
        .ok_or_else(|| {
            RpcError::invalid_params(format!("{} needs params.taskId (a string)", req.name))
        })
}

/// Serves `tasks/*`.
pub fn handle(
    shard: &Rc<Shard>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    cx: CallCtx<'_>,
    _inflight: &Rc<Inflight>,
) -> Handled {
    let kind = MethodKind::Tasks;
    let fail = |out: &mut Vec<u8>, e: RpcError| {
        write_rpc_error(out, &req.id, &e);
        Handled::done(kind, true)
    };
    if cx.era.is_modern() {
        if !cx.caps.tasks_extension {
            return fail(out, missing_extension());
        }
        let id = match task_id_param(req) {
            Ok(id) => id.to_owned(),
            Err(e) => return fail(out, e),
        };
        let op = match req.name {
            "tasks/get" => TaskOp::Get(id),
            "tasks/cancel" => TaskOp::Cancel(id),
            _ => {
                let mut answers = Vec::new();
                match req.params.as_ref().and_then(|p| p.get("inputResponses")) {
                    Some(r) if r.is_object() => {
                        for (k, v) in r.as_object().expect("checked").iter() {
                            answers.push((k.to_owned(), json::encode_value(v)));
                        }
                    }
                    _ => {
                        return fail(
                            out,
                            RpcError::invalid_params(
                                "tasks/update needs params.inputResponses (an object)",
                            ),
                        )
                    }
                }
                TaskOp::Update(id, answers)
            }
        };
        let era = cx.era;
        let Some(owner) = owner_of(op.id(), shard.shard_count) else {
            return fail(out, unknown_task(op.id()));
        };
        if owner == shard.id {
            let r = execute(shard, op);
            let is_error = write_modern(out, &req.id, r, era);
            return Handled::done(kind, is_error);
        }
        let timeout_ms = shard.limits.mesh_timeout_ms;
        return match shard.mesh_call(owner, Request::Task(op)) {
            Err(e) => fail(out, super::kv::mesh_error(e, owner, timeout_ms)),
            Ok(call) => {
                let fut = Box::pin(async move {
                    match call.await {
                        Ok(Reply::Task(r)) => r,
                        Ok(_) => Err(super::kv::mesh_error(
                            crate::runtime::mesh::MeshError::PeerGone,
                            owner,
                            timeout_ms,
                        )),
                        Err(e) => Err(super::kv::mesh_error(e, owner, timeout_ms)),
                    }
                });
                super::pend(
                    shard,
                    req,
                    kind,
                    fut,
                    _inflight,
                    Rc::new(Cell::new(false)),
                    req.name.to_owned(),
                    move |_shard, out, id, r| write_modern(out, id, r, era),
                )
            }
        };
    }

    // Legacy (2025-11-25 experimental): the session's own tasks, on its shard.
    let scope = cx.session_scope;
    if req.name == "tasks/list" {
        let now = now_ms();
        let mut table = shard.tasks.borrow_mut();
        let n = table.sweep(now);
        shard.metrics.borrow_mut().counters.tasks_expired += n as u64;
        let mut mine: Vec<&Task> = table
            .tasks
            .values()
            .filter(|t| t.legacy.as_ref().is_some_and(|l| l.scope == scope))
            .collect();
        mine.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        let cursor = match req.params.as_ref().and_then(|p| p.get("cursor")) {
            None => None,
            Some(c) if c.is_null() => None,
            Some(c) => match c.into_string() {
                Some(c) => Some(c),
                None => return fail(out, RpcError::invalid_params("invalid cursor")),
            },
        };
        let (start, end, next) = match super::registry::page(
            mine.len(),
            cursor,
            shard.limits.page_size,
            "tasks",
            &shard.state_key,
        ) {
            Ok(p) => p,
            Err(e) => return fail(out, e),
        };
        jsonrpc::begin_result(out, &req.id);
        out.extend_from_slice(b"{\"tasks\":[");
        for (i, t) in mine[start..end].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(t.to_json().as_bytes());
        }
        out.push(b']');
        if let Some(n) = next {
            out.extend_from_slice(b",\"nextCursor\":");
            json::write_str(out, &n);
        }
        out.push(b'}');
        jsonrpc::end_response(out);
        return Handled::done(kind, false);
    }
    let id = match task_id_param(req) {
        Ok(id) => id.to_owned(),
        Err(e) => return fail(out, e),
    };
    let mine = {
        let mut table = shard.tasks.borrow_mut();
        let n = table.sweep(now_ms());
        shard.metrics.borrow_mut().counters.tasks_expired += n as u64;
        table
            .tasks
            .get(&id)
            .filter(|t| t.legacy.as_ref().is_some_and(|l| l.scope == scope))
            .map(|t| t.status)
    };
    let Some(status) = mine else {
        return fail(out, unknown_task(&id));
    };
    match req.name {
        "tasks/get" => {
            jsonrpc::begin_result(out, &req.id);
            out.extend_from_slice(shard.tasks.borrow().tasks[&id].to_json().as_bytes());
            jsonrpc::end_response(out);
            Handled::done(kind, false)
        }
        "tasks/cancel" => {
            if status.is_terminal() {
                return fail(
                    out,
                    RpcError::invalid_params(format!(
                        "task {id} already finished ({})",
                        status.name()
                    )),
                );
            }
            cancel_local(shard, &id);
            jsonrpc::begin_result(out, &req.id);
            out.extend_from_slice(shard.tasks.borrow().tasks[&id].to_json().as_bytes());
            jsonrpc::end_response(out);
            Handled::done(kind, false)
        }
        _ => {
            // tasks/result: the tool's result once the task ends.
            let wait = if status.is_terminal() {
                None
            } else {
                let (tx, rx) = crate::runtime::local::oneshot();
                if let Some(t) = shard.tasks.borrow_mut().tasks.get_mut(&id) {
                    t.waiters.push(tx);
                }
                Some(rx)
            };
            let shard2 = shard.clone();
            let task_id = id.clone();
            let fut = Box::pin(async move {
                if let Some(rx) = wait {
                    let _ = rx.await;
                }
                let table = shard2.tasks.borrow();
                match table.tasks.get(&task_id) {
                    None => Err(CallError::Rpc(unknown_task(&task_id))),
                    Some(t) => match (t.status, &t.result, &t.error) {
                        (Status::Completed, Some(r), _) => Ok(with_related_task(r, &task_id)),
                        (_, _, Some(e)) => Err(CallError::Rpc(e.clone())),
                        (s, _, _) => Err(CallError::Rpc(RpcError::new(
                            jsonrpc::INTERNAL_ERROR,
                            format!("task {task_id} ended {}", s.name()),
                        ))),
                    },
                }
            });
            super::pend(
                shard,
                req,
                kind,
                fut,
                _inflight,
                cx.cancelled(),
                req.name.to_owned(),
                |_shard, out, id, r: Result<String, CallError>| match r {
                    Ok(obj) => {
                        jsonrpc::begin_result(out, id);
                        out.extend_from_slice(obj.as_bytes());
                        jsonrpc::end_response(out);
                        false
                    }
                    Err(CallError::Rpc(e)) => {
                        write_rpc_error(out, id, &e);
                        true
                    }
                    Err(CallError::InputRequired) => {
                        write_rpc_error(
                            out,
                            id,
                            &RpcError::new(jsonrpc::INTERNAL_ERROR, "input required"),
                        );
                        true
                    }
                },
            )
        }
    }
}

/// A stored result object with `_meta["io.modelcontextprotocol/related-task"]`
/// (2025-11-25 `tasks/result`).
fn with_related_task(result: &str, id: &str) -> String {
    let body = result.trim();
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("");
    let mut out = Vec::with_capacity(body.len() + 96);
    out.push(b'{');
    out.extend_from_slice(inner.as_bytes());
    out.extend_from_slice(b",\"_meta\":{\"io.modelcontextprotocol/related-task\":{\"taskId\":");
    json::write_str(&mut out, id);
    out.extend_from_slice(b"}}}");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Writes a modern task result (`resultType:"complete"`) or error.
fn write_modern(out: &mut Vec<u8>, id: &Id<'_>, r: Result<String, RpcError>, era: Era) -> bool {
    match r {
        Ok(members) => {
            jsonrpc::begin_result(out, id);
            out.push(b'{');
            out.extend_from_slice(members.as_bytes());
            if members.is_empty() {
                // close_result adds `,"resultType"...`; an empty object needs none.
                out.extend_from_slice(b"\"resultType\":\"complete\",");
                out.extend_from_slice(super::SERVER_INFO_META.as_bytes());
                out.push(b'}');
            } else {
                close_result(out, era);
            }
            jsonrpc::end_response(out);
            false
        }
        Err(e) => {
            write_rpc_error(out, id, &e);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_795_305_600_000), "2026-11-22T00:00:00.000Z");
    }

    #[test]
    fn ids_name_their_shard() {
        let t = TaskTable::new(3, 10, 1000);
        let id = t.new_id();
        assert_eq!(owner_of(&id, 4), Some(3));
        assert_eq!(owner_of(&id, 3), None);
        assert_eq!(owner_of("nope", 4), None);
        assert_ne!(id, t.new_id());
    }
}
