//! What the store keeps of a task (`--data-dir`, or Redis with
//! `--cluster`): its record, the changes handed to the store at each flush,
//! and bringing tasks back: at start from a shard's file, one at a time
//! when a cluster node takes a task (or its session) over, and dropping one
//! another node took.

use std::rc::Rc;

use super::super::clock::now_ms;
use super::super::core::Core;
use super::super::ctx::ClientCaps;
use super::super::encode::Era;
use super::super::store::{Op, TaskWrite};
use super::super::tools::RpcError;
use super::{owner_of, LegacyLink, Status, Task};
use crate::protocol::jsonrpc;

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
    /// The stored legacy session it belongs to.
    #[serde(default)]
    session: Option<String>,
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
            session: self.session().map(|s| s.to_string()),
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
pub(crate) fn flush_store(core: &Core) {
    let ops: Vec<Op> = {
        let mut table = core.tasks.borrow_mut();
        let Some(dirty) = table.dirty.as_mut().filter(|d| !d.is_empty()) else {
            return;
        };
        let ids: Vec<(String, Option<Rc<str>>)> = dirty.drain().collect();
        ids.into_iter()
            .map(|(id, session)| match table.tasks.get(&id) {
                Some(t) => Op::PutTask(TaskWrite {
                    session: t.session().map(|s| s.to_string()),
                    expires_at_ms: t.expires_at_ms(),
                    record: t.record(),
                    id,
                }),
                None => Op::DelTask {
                    id,
                    session: session.map(|s| s.to_string()),
                },
            })
            .collect()
    };
    for op in ops {
        core.persist(op);
    }
}

/// Brings back a shard's stored tasks: finished ones as they were, ones
/// waiting for input still waiting; ones that were running when the server
/// stopped have lost their handler and are failed, saying so. Returns how
/// many were restored.
pub(crate) fn restore(core: &Core, records: Vec<(String, Vec<u8>)>) -> usize {
    let node = core.tasks.borrow().node();
    let mut restored = 0;
    for (id, bytes) in records {
        if owner_of(&id, core.shard_count, node.as_deref()) != Some(core.id) {
            core.tasks.borrow_mut().touch(&id);
            continue;
        }
        if revive(
            core,
            id,
            &bytes,
            "the server restarted while the task was running",
        ) {
            restored += 1;
        }
    }
    restored
}

/// Takes over a task another node made (it died, or its session moved
/// here): false when the record is unreadable, expired, or has no room.
/// A task already held here is kept as it is.
pub(crate) fn adopt(core: &Core, id: &str, record: &[u8]) -> bool {
    if core.tasks.borrow().tasks.contains_key(id) {
        return true;
    }
    let adopted = revive(
        core,
        id.to_owned(),
        record,
        "the node running the task stopped",
    );
    if adopted {
        core.metrics.borrow_mut().counters.cluster_tasks_adopted += 1;
        log::info!("shard {}: took task {id} over", core.id);
    }
    adopted
}

/// One stored task back in the table; `lost` says why one that was running
/// failed. A record that cannot come back is deleted from the store.
fn revive(core: &Core, id: String, bytes: &[u8], lost: &str) -> bool {
    let now = now_ms();
    let mut table = core.tasks.borrow_mut();
    let rec: TaskRecord = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(_) => {
            table.touch(&id);
            return false;
        }
    };
    let registry = core.registry();
    let tool = registry.tool(&rec.tool).map(|e| e.tool.clone());
    let era = match rec.era.as_deref() {
        None => Some(Era::Legacy),
        Some(v) => crate::protocol::mcp::modern_version(v).map(Era::Modern),
    };
    let (Some(tool), Some(era)) = (tool, era) else {
        table.touch(&id); // its tool or era is gone: forget it
        return false;
    };
    if now >= rec.created_ms.saturating_add(rec.ttl_ms) || table.tasks.len() >= table.max {
        table.touch(&id);
        return false;
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
    let lost_handler = status == Status::Working;
    if lost_handler {
        status = Status::Failed;
        message = Some(lost.to_owned());
        error = Some(RpcError::new(jsonrpc::INTERNAL_ERROR, lost));
    }
    let [sampling, elicitation, roots, tasks_extension] = rec.caps;
    table.tasks.insert(
        id.clone(),
        Task {
            id: id.clone(),
            era,
            status,
            status_message: message,
            created_ms: rec.created_ms,
            updated_ms: if lost_handler { now } else { rec.updated_ms },
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
                session: rec.session.map(Rc::from),
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
    if lost_handler {
        table.touch(&id);
    }
    true
}

/// Drops a task another node took over (a write of its was fenced): its
/// handler stops, and nothing of it is written from here again.
pub(crate) fn forget(core: &Core, id: &str) {
    let removed = core.tasks.borrow_mut().tasks.remove(id);
    if let Some(t) = removed {
        if let Some(h) = t.running {
            h.cancel();
        }
        core.metrics.borrow_mut().counters.cluster_tasks_fenced += 1;
    }
}

/// Writes every task again at the next flush (after the store lost them,
/// e.g. a Redis restart).
pub(crate) fn republish(core: &Core) {
    let mut table = core.tasks.borrow_mut();
    let ids: Vec<String> = table.tasks.keys().cloned().collect();
    for id in ids {
        table.touch(&id);
    }
}
