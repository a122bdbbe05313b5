//! The MCP layer's cross-core messages, and the link that carries them.
//!
//! The server owns these types; the composition root wraps them in its own
//! mesh message and implements [`Link`] over the mesh, so this layer never
//! names the runtime's wire types and the runtime never names these.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::core::Core;
use super::kv::{KvOp, KvReply};
use super::registry::ListKind;
use super::tasks::{self, TaskOp};
use super::tools::RpcError;
use super::watch::{self, Watcher};
use crate::runtime::mesh::MeshError;

/// Work one shard's MCP service asks another's to do.
#[derive(Debug)]
pub(crate) enum Msg {
    /// An operation on a key the receiver owns. Answered with [`Reply::Kv`].
    Kv(KvOp),
    /// `uri` changed; tell these subscribers of the receiver. No reply.
    Notify { uri: String, subscribers: Vec<u64> },
    /// Add `watcher` to the watchers of `uri` the receiver keeps. Answered
    /// with [`Reply::Watched`].
    Watch { uri: String, watcher: Watcher },
    /// Forget `watcher` of `uri`. No reply.
    Unwatch { uri: String, watcher: Watcher },
    /// `uri` changed; the receiver keeps its watchers. No reply.
    Updated { uri: String },
    /// A `tasks/*` operation for a task the receiver owns. Answered with
    /// [`Reply::Task`].
    Task(TaskOp),
    /// Offer (`on`) or withdraw an item of the registry. Sent to shard 0,
    /// which applies it and forwards it (`broadcast: false`) to the others,
    /// so every shard sees changes in one order. No reply.
    SetEnabled {
        kind: ListKind,
        name: String,
        on: bool,
        broadcast: bool,
    },
    /// A modern task's status changed: tell the receiver's listen streams
    /// that follow it (`params`: the DetailedTask object). No reply.
    TaskStatus { id: String, params: String },
}

impl Msg {
    /// What the message asks, for a hop's span name.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Kv(_) => "kv",
            Msg::Notify { .. } => "notify",
            Msg::Watch { .. } => "watch",
            Msg::Unwatch { .. } => "unwatch",
            Msg::Updated { .. } => "updated",
            Msg::Task(_) => "task",
            Msg::SetEnabled { .. } => "set_enabled",
            Msg::TaskStatus { .. } => "task_status",
        }
    }
}

/// The receiver's answer to a [`Msg`] that wants one.
#[derive(Debug)]
pub(crate) enum Reply {
    Kv(KvReply),
    /// Answer to [`Msg::Watch`]: `Err(max)` at the per-URI bound.
    Watched(Result<(), usize>),
    /// Answer to [`Msg::Task`]: the result's members, or the error.
    Task(Result<String, RpcError>),
}

/// A reply on its way.
pub(crate) type LinkCall = Pin<Box<dyn Future<Output = Result<Reply, MeshError>>>>;

/// How the MCP layer reaches the other shards.
pub(crate) trait Link {
    /// Sends `msg` to shard `to`; errors at once when it cannot be queued.
    fn call(&self, to: usize, msg: Msg) -> Result<LinkCall, MeshError>;
    /// Sends `msg` to shard `to` without wanting a reply.
    fn tell(&self, to: usize, msg: Msg) -> Result<(), MeshError>;
}

/// How a shard answers a message: not at all, now, or later.
pub(crate) enum Served {
    NoReply,
    Now(Reply),
    /// The reply once this future ends (the carrier sends it then).
    Later(Pin<Box<dyn Future<Output = Reply>>>),
}

/// On the receiving shard: serves a message another shard sent.
pub(crate) fn serve(core: &Rc<Core>, msg: Msg) -> Served {
    let reply = match msg {
        Msg::Task(op) => {
            return match tasks::run(core, op) {
                tasks::Run::Now(r) => Served::Now(Reply::Task(r)),
                tasks::Run::Later(f) => {
                    Served::Later(Box::pin(async move { Reply::Task(f.await) }))
                }
            }
        }
        Msg::Kv(op) => Some(Reply::Kv(core.kv_execute(op))),
        Msg::Notify { uri, subscribers } => {
            watch::deliver(core, &uri, &subscribers);
            None
        }
        Msg::Watch { uri, watcher } => {
            let r = core.watches.borrow_mut().watch(&uri, watcher);
            if r.is_err() {
                core.metrics.borrow_mut().counters.kv_full += 1;
            }
            Some(Reply::Watched(r))
        }
        Msg::Unwatch { uri, watcher } => {
            core.watches.borrow_mut().unwatch(&uri, watcher);
            None
        }
        Msg::Updated { uri } => {
            watch::notify_watchers(core, &uri);
            None
        }
        Msg::SetEnabled {
            kind,
            name,
            on,
            broadcast,
        } => {
            super::registry::apply_enabled(core, kind, &name, on, broadcast);
            None
        }
        Msg::TaskStatus { id, params } => {
            tasks::deliver_status(core, &id, &params);
            None
        }
    };
    match reply {
        Some(r) => Served::Now(r),
        None => Served::NoReply,
    }
}

/// The reply a call expected, or a broken invariant: a shard answered a
/// message with a reply of another kind.
pub(crate) fn expect<T>(reply: Reply, pick: impl FnOnce(Reply) -> Option<T>, what: &str) -> T {
    pick(reply)
        .unwrap_or_else(|| panic!("a {what} message was answered with another kind of reply"))
}

/// The JSON-RPC error a client gets when a hop to shard `owner` failed.
pub(crate) fn hop_error(e: MeshError, owner: usize, timeout_ms: u64) -> RpcError {
    use crate::protocol::jsonrpc;
    match e {
        MeshError::Overloaded => RpcError::new(
            jsonrpc::SERVER_OVERLOADED,
            format!("server overloaded: the queue to shard {owner} is full; retry later"),
        ),
        MeshError::Timeout => RpcError::new(
            jsonrpc::SHARD_TIMEOUT,
            format!("shard {owner} did not answer within {timeout_ms} ms"),
        ),
        MeshError::PeerGone => RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            format!("shard {owner} is not running"),
        ),
    }
}
