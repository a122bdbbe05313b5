//! Node membership on Redis: who is in the cluster and who is alive.
//!
//! Each node has a hash `{prefix}:node:{id}` (its advertised address, shard
//! count, start time, version, and one `s{shard}` field per shard holding
//! that shard's session count) whose TTL is the heartbeat TTL; every shard
//! refreshes its own field and the TTL every third of the TTL, so the key
//! lives while any shard of the node beats. A node is *live* while its key
//! exists (Redis's clock decides, not the nodes'). The sorted set
//! `{prefix}:nodes` indexes every node by last heartbeat (milliseconds since
//! the epoch) so the list needs no `SCAN`; entries silent for
//! [`FORGET_AFTER_MS`] are removed.
//!
//! Bounds: at most [`NODES_MAX`] nodes are listed. Per beat (a third of the
//! TTL), each shard sends 2 commands (its field and the TTL) in one round
//! trip; shard 0 also refreshes the index (2) and reads the list (1 + 2 per
//! node, one more round trip). So a node of S shards in a cluster of N nodes
//! sends 3 × (2S + 3 + 2N) commands per TTL.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::Value;
use futures::future::try_join_all;
use futures_lite::future::try_zip;

use super::{ClusterError, Purpose, Redis};

/// Nodes listed at most (membership reads and `tessera cluster status`).
pub const NODES_MAX: i64 = 1024;
/// A node whose last heartbeat is this old leaves the index.
pub const FORGET_AFTER_MS: u64 = 60 * 60 * 1000;

pub(crate) fn node_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:node:{id}")
}

pub(crate) fn nodes_key(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One node as the membership keys describe it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub live: bool,
    /// Where other nodes reach its HTTP listener.
    pub advertise: String,
    pub shards: usize,
    /// Sessions held, by shard (from the shards that beat recently).
    pub sessions: BTreeMap<usize, u64>,
    pub started_ms: u64,
    pub version: String,
    /// Milliseconds since its last heartbeat (by the beating node's clock).
    pub last_heartbeat_age_ms: u64,
    /// Milliseconds before its key expires; 0 once dead.
    pub ttl_ms: u64,
}

/// What a shard writes on each beat.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    pub shard: usize,
    pub shards: usize,
    pub advertise: String,
    pub started_ms: u64,
}

/// This shard's copy of the live-node list, refreshed on every beat.
#[derive(Debug, Default)]
pub(crate) struct LiveNodes {
    pub nodes: Vec<NodeInfo>,
}

impl LiveNodes {
    pub fn live_count(&self) -> u64 {
        self.nodes.iter().filter(|n| n.live).count() as u64
    }
}

/// Writes this shard's heartbeat: its session count, the node's fields,
/// the TTL, and the index entry. One pipeline.
pub(crate) async fn beat(redis: &Redis, beat: &Beat, sessions: u64) -> Result<(), ClusterError> {
    let cfg = &redis.cfg;
    let key = node_key(&cfg.key_prefix, &cfg.node_id);
    let fields: Vec<(String, String)> = vec![
        ("advertise".into(), beat.advertise.clone()),
        ("shards".into(), beat.shards.to_string()),
        ("started_ms".into(), beat.started_ms.to_string()),
        ("version".into(), env!("CARGO_PKG_VERSION").into()),
        (format!("s{}", beat.shard), sessions.to_string()),
    ];
    let c = redis.client();
    let own = || {
        try_zip(
            c.hset::<(), _, _>(&key, fields.clone()),
            c.pexpire::<(), _>(&key, cfg.heartbeat_ttl_ms as i64, None),
        )
    };
    if beat.shard != 0 {
        return redis
            .call(Purpose::Heartbeat, 2, async { own().await.map(drop) })
            .await;
    }
    // Shard 0 also keeps the index. Sent together: fred writes concurrent
    // commands to the connection in one batch (auto-pipelining), so this is
    // one round trip.
    let now = now_ms();
    let index = nodes_key(&cfg.key_prefix);
    redis
        .call(Purpose::Heartbeat, 4, async {
            try_zip(
                own(),
                try_zip(
                    c.zadd::<(), _, _>(
                        &index,
                        None,
                        None,
                        false,
                        false,
                        (now as f64, cfg.node_id.as_str()),
                    ),
                    c.zremrangebyscore::<(), _, _, _>(
                        &index,
                        f64::NEG_INFINITY,
                        now.saturating_sub(FORGET_AFTER_MS) as f64,
                    ),
                ),
            )
            .await
            .map(drop)
        })
        .await
}

/// Every indexed node, live or dead, newest heartbeat first.
pub(crate) async fn list(redis: &Redis, purpose: Purpose) -> Result<Vec<NodeInfo>, ClusterError> {
    let prefix = redis.cfg.key_prefix.clone();
    let index: Vec<(String, f64)> = redis
        .call(purpose, 1, async {
            redis
                .client()
                .zrange(nodes_key(&prefix), 0, NODES_MAX - 1, None, true, None, true)
                .await
        })
        .await?;
    if index.is_empty() {
        return Ok(Vec::new());
    }
    let c = redis.client();
    // Concurrent, so auto-pipelined: one round trip for every node.
    let replies: Vec<(Value, Value)> = redis
        .call(purpose, 2 * index.len() as u64, async {
            try_join_all(index.iter().map(|(id, _)| {
                let key = node_key(&prefix, id);
                async move { try_zip(c.hgetall::<Value, _>(&key), c.pttl::<Value, _>(&key)).await }
            }))
            .await
        })
        .await?;
    let now = now_ms();
    let nodes = index
        .iter()
        .zip(&replies)
        .map(|((id, seen), (fields, pttl))| node_info(id, *seen, fields, pttl, now))
        .collect();
    Ok(nodes)
}

fn node_info(id: &str, seen_ms: f64, fields: &Value, pttl: &Value, now: u64) -> NodeInfo {
    let mut n = NodeInfo {
        id: id.to_string(),
        live: false,
        advertise: String::new(),
        shards: 0,
        sessions: BTreeMap::new(),
        started_ms: 0,
        version: String::new(),
        last_heartbeat_age_ms: now.saturating_sub(seen_ms as u64),
        ttl_ms: 0,
    };
    if let Value::Map(map) = fields {
        for (k, v) in map.clone().inner() {
            let (Some(k), Some(v)) = (k.as_str(), v.as_string()) else {
                continue;
            };
            match k {
                "advertise" => n.advertise = v,
                "shards" => n.shards = v.parse().unwrap_or(0),
                "started_ms" => n.started_ms = v.parse().unwrap_or(0),
                "version" => n.version = v,
                s => {
                    if let (Some(shard), Ok(count)) = (
                        s.strip_prefix('s').and_then(|i| i.parse().ok()),
                        v.parse::<u64>(),
                    ) {
                        n.sessions.insert(shard, count);
                    }
                }
            }
        }
    }
    if let Some(ttl) = pttl.as_i64().filter(|t| *t > 0) {
        n.live = !n.advertise.is_empty();
        n.ttl_ms = ttl as u64;
    }
    n
}

/// Beats every third of the TTL for as long as the shard runs, and refreshes
/// `live` after each beat. A beat that fails is logged once per outage; the
/// next one comes on schedule (or at once after a reconnect, via `kick`).
pub(crate) async fn heartbeat_loop(
    redis: Rc<Redis>,
    beat_with: Beat,
    sessions: impl Fn() -> u64,
    live: Rc<RefCell<LiveNodes>>,
    kick: Rc<crate::runtime::local::Flag>,
) {
    let every = Duration::from_millis(redis.cfg.heartbeat_ttl_ms / 3);
    let mut failing = false;
    // The first beat comes with the first connection.
    kick.wait().await;
    loop {
        // Shard 0 reads the list for the node; the others only beat.
        let result = async {
            beat(&redis, &beat_with, sessions()).await?;
            if beat_with.shard == 0 {
                list(&redis, Purpose::Heartbeat).await.map(Some)
            } else {
                Ok(None)
            }
        }
        .await;
        match result {
            Ok(nodes) => {
                if failing {
                    log::info!(
                        "shard {}: cluster heartbeat restored (node {})",
                        beat_with.shard,
                        redis.cfg.node_id
                    );
                }
                failing = false;
                if let Some(nodes) = nodes {
                    live.borrow_mut().nodes = nodes;
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("shard {}: cluster heartbeat failed: {e}", beat_with.shard);
                }
                failing = true;
            }
        }
        kick.lower();
        let _ = glommio::timer::timeout(every, async {
            kick.wait().await;
            Ok(())
        })
        .await;
    }
}

/// `started_ms` for a node starting now.
pub(crate) fn started_now_ms() -> u64 {
    now_ms()
}

/// Removes this node's heartbeat key (a clean stop): it is dead to the
/// others at once.
pub(crate) async fn leave(redis: &Redis) -> Result<(), ClusterError> {
    let key = node_key(&redis.cfg.key_prefix, &redis.cfg.node_id);
    redis
        .call(Purpose::Heartbeat, 1, async {
            redis.client().del::<i64, _>(&key).await.map(drop)
        })
        .await
}
