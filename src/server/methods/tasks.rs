//! `tasks/*` in both eras.
//!
//! Modern (`io.modelcontextprotocol/tasks`): `tasks/get`, `tasks/update`,
//! `tasks/cancel` for any task id, served by the task's owner (over the mesh
//! when another shard owns it). Legacy (2025-11-25 experimental): `tasks/get`,
//! `tasks/result`, `tasks/list`, `tasks/cancel` for the session's own tasks
//! on its shard.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::super::clock::now_ms;
use super::super::core::Core;
use super::super::dispatch::{self, Req};
use super::super::encode::{self, Close, Era};
use super::super::msg::{self, hop_error, Msg, Reply};
use super::super::session::Session;
use super::super::tasks::{self, owner_of, unknown_task, Status, TaskOp};
use super::super::tools::{CallError, RpcError};
use super::super::Handled;
use super::{fail, page_of, pend};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};

const KIND: MethodKind = MethodKind::Tasks;

/// `tasks/get`.
pub(crate) fn get(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    if req.era.is_modern() {
        return modern(session, core, req, out, TaskOp::Get);
    }
    match own_task(session, core, req) {
        Err(e) => fail(KIND, req, out, &e),
        Ok((id, _)) => write_task(core, req, out, &id),
    }
}

/// `tasks/cancel`.
pub(crate) fn cancel(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    if req.era.is_modern() {
        return modern(session, core, req, out, TaskOp::Cancel);
    }
    let (id, status) = match own_task(session, core, req) {
        Ok(t) => t,
        Err(e) => return fail(KIND, req, out, &e),
    };
    if status.is_terminal() {
        let e = RpcError::invalid_params(format!("task {id} already finished ({})", status.name()));
        return fail(KIND, req, out, &e);
    }
    tasks::cancel_local(core, &id);
    write_task(core, req, out, &id)
}

/// `tasks/update` (modern): answers for a task waiting in `input_required`.
pub(crate) fn update(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let answers = match req.params.as_ref().and_then(|p| p.get("inputResponses")) {
        Some(r) if r.is_object() => {
            let obj = r.as_object().expect("checked above");
            obj.iter()
                .map(|(k, v)| (k.to_owned(), json::encode_value(v)))
                .collect::<Vec<_>>()
        }
        _ => {
            let e =
                RpcError::invalid_params("tasks/update needs params.inputResponses (an object)");
            // Checked after the extension and the id, as the spec orders them.
            return match check_modern(req) {
                Err(first) => fail(KIND, req, out, &first),
                Ok(_) => fail(KIND, req, out, &e),
            };
        }
    };
    modern(session, core, req, out, move |id| {
        TaskOp::Update(id, answers)
    })
}

/// `tasks/result` (legacy): the tool's result once the task ends.
pub(crate) fn result(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let (id, status) = match own_task(session, core, req) {
        Ok(t) => t,
        Err(e) => return fail(KIND, req, out, &e),
    };
    let wait = (!status.is_terminal()).then(|| {
        let (tx, rx) = crate::runtime::local::oneshot();
        if let Some(t) = core.tasks.borrow_mut().tasks.get_mut(&id) {
            t.waiters.push(tx);
        }
        rx
    });
    let core2 = core.clone();
    let fut = Box::pin(async move {
        if let Some(rx) = wait {
            let _ = rx.await;
        }
        let table = core2.tasks.borrow();
        match table.tasks.get(&id) {
            None => Err(CallError::Rpc(unknown_task(&id))),
            Some(t) => match (t.status, &t.result, &t.error) {
                (Status::Completed, Some(r), _) => Ok(with_related_task(r, &id)),
                (_, _, Some(e)) => Err(CallError::Rpc(e.clone())),
                (s, _, _) => Err(CallError::Rpc(RpcError::new(
                    jsonrpc::INTERNAL_ERROR,
                    format!("task {id} ended {}", s.name()),
                ))),
            },
        }
    });
    let cancelled = Rc::new(Cell::new(false));
    pend(
        core,
        req,
        KIND,
        fut,
        &session.inflight,
        cancelled,
        |_, out, id, r| match r {
            Ok(obj) => {
                jsonrpc::begin_result(out, id);
                out.extend_from_slice(obj.as_bytes());
                jsonrpc::end_response(out);
                None
            }
            Err(CallError::Rpc(e)) => Some(encode::rpc_error(out, id, &e)),
            Err(CallError::InputRequired) => Some(encode::rpc_error(
                out,
                id,
                &RpcError::new(jsonrpc::INTERNAL_ERROR, "input required"),
            )),
        },
    )
}

/// `tasks/list` (legacy): the session's own tasks, oldest first, paged.
pub(crate) fn list(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let scope = session.scope();
    let mut table = core.tasks.borrow_mut();
    let n = table.sweep(now_ms());
    core.metrics.borrow_mut().counters.tasks_expired += n as u64;
    let mut mine: Vec<&tasks::Task> = table
        .tasks
        .values()
        .filter(|t| t.is_legacy_of(scope))
        .collect();
    mine.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let (start, end, next) = match page_of(core, req, mine.len(), "tasks") {
        Ok(p) => p,
        Err(e) => return fail(KIND, req, out, &e),
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
    Handled::ok(KIND)
}

/// The legacy session's task named by `params.taskId`, and its status.
fn own_task(
    session: &Session,
    core: &Core,
    req: &Req<'_, '_>,
) -> Result<(String, Status), RpcError> {
    let id = task_id_param(req)?;
    let mut table = core.tasks.borrow_mut();
    let n = table.sweep(now_ms());
    core.metrics.borrow_mut().counters.tasks_expired += n as u64;
    table
        .tasks
        .get(id)
        .filter(|t| t.is_legacy_of(session.scope()))
        .map(|t| (id.to_owned(), t.status))
        .ok_or_else(|| unknown_task(id))
}

fn write_task(core: &Core, req: &Req<'_, '_>, out: &mut Vec<u8>, id: &str) -> Handled {
    jsonrpc::begin_result(out, &req.id);
    out.extend_from_slice(core.tasks.borrow().tasks[id].to_json().as_bytes());
    jsonrpc::end_response(out);
    Handled::ok(KIND)
}

fn task_id_param<'a>(req: &Req<'a, '_>) -> Result<&'a str, RpcError> {
    req.str_param("taskId").ok_or_else(|| {
        RpcError::invalid_params(format!("{} needs params.taskId (a string)", req.name))
    })
}

/// What every modern task method checks first: the client declared the
/// extension, and `params.taskId` is there.
fn check_modern<'a>(req: &Req<'a, '_>) -> Result<&'a str, RpcError> {
    if !dispatch::modern_caps(req).tasks_extension {
        return Err(tasks::missing_extension());
    }
    task_id_param(req)
}

/// A modern task operation, at the task's owner.
fn modern(
    session: &Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
    op: impl FnOnce(String) -> TaskOp,
) -> Handled {
    let id = match check_modern(req) {
        Ok(id) => id.to_owned(),
        Err(e) => return fail(KIND, req, out, &e),
    };
    let node = core.tasks.borrow().node();
    let Some(owner) = owner_of(&id, core.shard_count, node.as_deref()) else {
        return fail(KIND, req, out, &unknown_task(&id));
    };
    let op = op(id);
    let era = req.era;
    let fut: Pin<Box<dyn Future<Output = Result<String, RpcError>>>> = if owner == core.id {
        match tasks::run(core, op) {
            tasks::Run::Now(r) => {
                return Handled::done(KIND, write_modern(out, &req.id, r, era));
            }
            tasks::Run::Later(fut) => fut,
        }
    } else {
        let timeout_ms = core.limits.mesh_timeout_ms;
        let call = match core.call(owner, Msg::Task(op)) {
            Err(e) => return fail(KIND, req, out, &hop_error(e, owner, timeout_ms)),
            Ok(call) => call,
        };
        Box::pin(async move {
            let reply = call.await.map_err(|e| hop_error(e, owner, timeout_ms))?;
            msg::expect(
                reply,
                |r| match r {
                    Reply::Task(t) => Some(t),
                    _ => None,
                },
                "task",
            )
        })
    };
    pend(
        core,
        req,
        KIND,
        fut,
        &session.inflight,
        Rc::new(Cell::new(false)),
        move |_, out, id, r| write_modern(out, id, r, era),
    )
}

/// A stored result object with
/// `_meta["io.modelcontextprotocol/related-task"]` added (2025-11-25
/// `tasks/result`): the result is parsed and the member set in its `_meta`
/// map, so a result that has a `_meta` of its own keeps it, merged.
fn with_related_task(result: &str, id: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(result).expect("task results are stored as valid JSON");
    let obj = v.as_object_mut().expect("a task result is a JSON object");
    let meta = obj
        .entry("_meta")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let meta = meta.as_object_mut().expect("a result's _meta is an object");
    meta.insert(
        crate::protocol::mcp::meta::RELATED_TASK.to_owned(),
        serde_json::json!({ "taskId": id }),
    );
    v.to_string()
}

/// Writes a modern task result (`resultType:"complete"`) or error.
fn write_modern(
    out: &mut Vec<u8>,
    id: &Id<'_>,
    r: Result<String, RpcError>,
    era: Era,
) -> Option<i32> {
    match r {
        Ok(members) => {
            jsonrpc::begin_result(out, id);
            out.push(b'{');
            out.extend_from_slice(members.as_bytes());
            encode::close_object(out, era, Close::complete(!members.is_empty()));
            jsonrpc::end_response(out);
            None
        }
        Err(e) => Some(encode::rpc_error(out, id, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn related_task_joins_a_results_own_meta() {
        let plain = with_related_task(r#"{"content":[]}"#, "t1");
        let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(
            v["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
            "t1"
        );
        let own = with_related_task(r#"{"content":[],"_meta":{"trace":"x"}}"#, "t2");
        let v: serde_json::Value = serde_json::from_str(&own).unwrap();
        assert_eq!(v["_meta"]["trace"], "x");
        assert_eq!(
            v["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
            "t2"
        );
    }
}
