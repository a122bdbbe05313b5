//! State shared between nodes (`--cluster`), as the MCP layer sees it: kv
//! operations that run against the cluster's store instead of this node's
//! shards, resource changes and changes of the offered set announced to
//! every node, and tasks claimed from a dead node. The store and the
//! announcement channel are an adapter's (Redis); nothing here does I/O.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::kv::{KvOp, KvReply};
use super::registry::ListKind;

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// A resource URI changed.
    Updated { uri: String },
    /// An entry was offered or withdrawn (`set_enabled`).
    Enabled {
        kind: ListKind,
        name: String,
        on: bool,
    },
    /// A modern task's status changed (`params`: the DetailedTask object).
    TaskStatus { id: String, params: String },
}

/// What claiming another node's task gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// No such task in the cluster (never made, expired, or ended).
    Gone,
    /// This shard holds it already (another request claimed it first).
    Held,
    /// It is this shard's now: restore it from this record.
    Taken(Vec<u8>),
}

/// The cluster's shared state, reached from every shard.
pub(crate) trait Shared {
    /// Runs a kv operation on the shared store; an error names why the
    /// cluster state could not be reached.
    fn kv(&self, op: KvOp) -> Pin<Box<dyn Future<Output = Result<KvReply, String>>>>;
    /// Tells the other nodes (fire and forget).
    fn announce(&self, what: Announcement);
    /// Whether rate limits are counted across the cluster
    /// (`--rate-limit-scope cluster`).
    fn shares_rate_limits(&self) -> bool;
    /// Takes one request from `principal`'s cluster-wide token bucket
    /// (`rate` per second, `burst` deep): None to go ahead, or how long to
    /// wait; an error when the cluster state cannot be reached.
    fn rate_check(
        &self,
        principal: String,
        rate: u32,
        burst: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Duration>, String>>>>;
    /// Claims task `id`, made by another node, for this shard: atomically,
    /// so one shard of one node holds it. An error when the cluster state
    /// cannot be read, or a live node holds the task.
    fn claim_task(&self, id: String) -> Pin<Box<dyn Future<Output = Result<Claimed, String>>>>;
}
