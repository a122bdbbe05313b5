//! State shared between nodes (`--cluster`), as the MCP layer sees it: kv
//! operations that run against the cluster's store instead of this node's
//! shards, and resource changes announced to every node. The store and the
//! announcement channel are an adapter's (Redis); nothing here does I/O.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::kv::{KvOp, KvReply};

/// The cluster's shared state, reached from every shard.
pub(crate) trait Shared {
    /// Runs a kv operation on the shared store; an error names why the
    /// cluster state could not be reached.
    fn kv(&self, op: KvOp) -> Pin<Box<dyn Future<Output = Result<KvReply, String>>>>;
    /// Tells the other nodes that `uri` changed here (fire and forget).
    fn announce_updated(&self, uri: &str);
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
