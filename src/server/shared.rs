//! State shared between nodes (`--cluster`), as the MCP layer sees it: kv
//! operations that run against the cluster's store instead of this node's
//! shards, and resource changes and changes of the offered set announced to
//! every node. The store and the
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
}
