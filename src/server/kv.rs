//! The sharded key-value store and its tools (`kv_set`, `kv_get`,
//! `kv_delete`).
//!
//! Every key has exactly one owning shard, `owner(key)`: a pure function of the
//! key's bytes (FNV-1a, stable across processes and restarts) modulo the shard
//! count. A call for a key this shard owns is served in place with no hop; any
//! other key travels over the mesh to its owner and the reply comes back the
//! same way. Values are kept as compact JSON text, so nothing but bytes ever
//! crosses cores.

use std::collections::HashMap;

use super::tools::{arg_str, deny_unknown, Args, RpcError, Tool, ToolCtx, ToolReply, ToolResult};
use crate::protocol::{json, jsonrpc};
use crate::runtime::mesh::MeshError;
use crate::runtime::shard::{Routed, Shard};

/// The shard that owns `key` among `shards`.
pub fn owner(key: &str, shards: usize) -> usize {
    debug_assert!(shards > 0);
    if shards == 1 {
        return 0;
    }
    (fnv1a64(key.as_bytes()) % shards as u64) as usize
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// An operation on a key, as sent to its owner.
#[derive(Debug)]
pub enum KvOp {
    Set {
        key: String,
        value: Box<str>,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// Subscriber `sub` on shard `shard` wants `notifications/resources/updated`
    /// when the key changes.
    Watch {
        key: String,
        watcher: Watcher,
    },
    Unwatch {
        key: String,
        watcher: Watcher,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum KvReply {
    Set {
        created: bool,
    },
    /// The owner already holds its maximum number of keys.
    Full {
        max_keys: usize,
    },
    Get(Option<Box<str>>),
    Deleted(bool),
    Watched,
    /// The key already has its maximum number of watchers.
    WatchersFull {
        max: usize,
    },
}

/// A subscriber somewhere in the server: the shard it lives on and its id
/// in that shard's subscriber table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watcher {
    pub shard: usize,
    pub sub: u64,
}

/// The keys one shard owns, and who watches them. Bounded by
/// `kv_max_keys_per_shard` and `max_watchers_per_key`.
pub struct KvStore {
    map: HashMap<Box<str>, Box<str>>,
    max_keys: usize,
    watchers: HashMap<Box<str>, Vec<Watcher>>,
    max_watchers_per_key: usize,
}

impl KvStore {
    pub fn new(max_keys: usize, max_watchers_per_key: usize) -> Self {
        Self {
            map: HashMap::new(),
            max_keys,
            watchers: HashMap::new(),
            max_watchers_per_key,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn set(&mut self, key: &str, value: Box<str>) -> KvReply {
        if let Some(v) = self.map.get_mut(key) {
            *v = value;
            return KvReply::Set { created: false };
        }
        if self.map.len() >= self.max_keys {
            return KvReply::Full {
                max_keys: self.max_keys,
            };
        }
        self.map.insert(key.into(), value);
        KvReply::Set { created: true }
    }

    pub fn get(&self, key: &str) -> KvReply {
        KvReply::Get(self.map.get(key).cloned())
    }

    pub fn delete(&mut self, key: &str) -> KvReply {
        KvReply::Deleted(self.map.remove(key).is_some())
    }

    pub fn watch(&mut self, key: &str, w: Watcher) -> KvReply {
        let list = self.watchers.entry(key.into()).or_default();
        if list.contains(&w) {
            return KvReply::Watched;
        }
        if list.len() >= self.max_watchers_per_key {
            return KvReply::WatchersFull {
                max: self.max_watchers_per_key,
            };
        }
        list.push(w);
        KvReply::Watched
    }

    pub fn unwatch(&mut self, key: &str, w: Watcher) {
        if let Some(list) = self.watchers.get_mut(key) {
            list.retain(|x| *x != w);
            if list.is_empty() {
                self.watchers.remove(key);
            }
        }
    }

    /// Removes a subscriber that no longer exists from every key.
    pub fn forget_watcher(&mut self, w: Watcher) {
        self.watchers.retain(|_, list| {
            list.retain(|x| *x != w);
            !list.is_empty()
        });
    }

    pub fn watchers(&self, key: &str) -> &[Watcher] {
        self.watchers.get(key).map_or(&[], Vec::as_slice)
    }

    /// Applies `op`; the second value is true when the key's value changed
    /// (its watchers must hear of it).
    pub fn apply(&mut self, op: &KvOp) -> (KvReply, bool) {
        match op {
            KvOp::Set { key, value } => {
                let r = self.set(key, value.clone());
                let changed = matches!(r, KvReply::Set { .. });
                (r, changed)
            }
            KvOp::Get { key } => (self.get(key), false),
            KvOp::Delete { key } => {
                let r = self.delete(key);
                let changed = r == KvReply::Deleted(true);
                (r, changed)
            }
            KvOp::Watch { key, watcher } => (self.watch(key, *watcher), false),
            KvOp::Unwatch { key, watcher } => {
                self.unwatch(key, *watcher);
                (KvReply::Watched, false)
            }
        }
    }
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. }
            | KvOp::Get { key }
            | KvOp::Delete { key }
            | KvOp::Watch { key, .. }
            | KvOp::Unwatch { key, .. } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvKind {
    Set,
    Get,
    Delete,
}

/// One of the three kv tools.
pub struct KvTool(pub KvKind);

/// The `key` property shared by all three input schemas. A macro so the
/// schemas stay compile-time strings, published verbatim by tools/list.
macro_rules! key_property {
    () => {
        r#""key":{"type":"string","minLength":1,"description":"Key; its owning shard is a pure function of the key"}"#
    };
}

const SET_SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"#,
    key_property!(),
    r#","value":{"description":"Any JSON value"}},"required":["key","value"],"additionalProperties":false}"#
);

const KEY_ONLY_SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"#,
    key_property!(),
    r#"},"required":["key"],"additionalProperties":false}"#
);

impl KvTool {
    /// Reads and checks the arguments, returning the key and (for `kv_set`)
    /// the value as compact JSON.
    fn parse<'a>(
        &self,
        shard: &Shard,
        args: &Args<'a>,
    ) -> Result<(&'a str, Option<Box<str>>), String> {
        let limits = &shard.limits;
        let known: &[&str] = if self.0 == KvKind::Set {
            &["key", "value"]
        } else {
            &["key"]
        };
        deny_unknown(args, known)?;
        let key = arg_str(args, "key")?;
        if key.is_empty() {
            return Err("invalid arguments: `key` must not be empty".into());
        }
        if key.len() > limits.kv_max_key_bytes {
            return Err(format!(
                "invalid arguments: `key` is {} bytes; the limit is {} (kv-max-key-bytes)",
                key.len(),
                limits.kv_max_key_bytes
            ));
        }
        if self.0 != KvKind::Set {
            return Ok((key, None));
        }
        let value = args
            .get("value")
            .ok_or("invalid arguments: missing required `value`")?;
        let encoded = json::encode_value(value);
        if encoded.len() > limits.kv_max_value_bytes {
            return Err(format!(
                "invalid arguments: `value` is {} bytes as JSON; the limit is {} (kv-max-value-bytes)",
                encoded.len(),
                limits.kv_max_value_bytes
            ));
        }
        Ok((key, Some(encoded.into_boxed_str())))
    }
}

/// Turns the owner's reply into the tool result.
fn render(reply: KvReply, served_by: usize, owner: usize) -> ToolResult<'static> {
    let meta = format!("{{\"tessera/shard\":{{\"served_by\":{served_by},\"owner\":{owner}}}}}");
    let r = match reply {
        KvReply::Set { created } => {
            ToolResult::text("OK").with_structured(format!("{{\"created\":{created}}}"))
        }
        KvReply::Full { max_keys } => ToolResult::error(format!(
            "kv store full: shard {owner} already holds {max_keys} keys (kv-max-keys-per-shard)"
        )),
        KvReply::Get(Some(v)) => {
            let structured = format!("{{\"found\":true,\"value\":{v}}}");
            ToolResult::text(String::from(v)).with_structured(structured)
        }
        KvReply::Get(None) => {
            ToolResult::text("null").with_structured("{\"found\":false,\"value\":null}".into())
        }
        KvReply::Deleted(d) => ToolResult::text(if d { "deleted" } else { "not found" })
            .with_structured(format!("{{\"deleted\":{d}}}")),
        KvReply::Watched | KvReply::WatchersFull { .. } => {
            ToolResult::error("unexpected reply from the key's owner")
        }
    };
    r.with_meta(meta)
}

pub fn mesh_error(e: MeshError, owner: usize, timeout_ms: u64) -> RpcError {
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

impl Tool for KvTool {
    fn name(&self) -> &str {
        match self.0 {
            KvKind::Set => "kv_set",
            KvKind::Get => "kv_get",
            KvKind::Delete => "kv_delete",
        }
    }

    fn description(&self) -> &str {
        match self.0 {
            KvKind::Set => {
                "Stores any JSON `value` under `key` in the server's sharded key-value store."
            }
            KvKind::Get => {
                "Returns the JSON value stored under `key` (`found: false` when absent)."
            }
            KvKind::Delete => "Removes `key` from the key-value store.",
        }
    }

    fn input_schema(&self) -> &str {
        match self.0 {
            KvKind::Set => SET_SCHEMA,
            KvKind::Get | KvKind::Delete => KEY_ONLY_SCHEMA,
        }
    }

    fn output_schema(&self) -> Option<&str> {
        Some(match self.0 {
            KvKind::Set => {
                r#"{"type":"object","properties":{"created":{"type":"boolean"}},"required":["created"]}"#
            }
            KvKind::Get => {
                r#"{"type":"object","properties":{"found":{"type":"boolean"},"value":{}},"required":["found","value"]}"#
            }
            KvKind::Delete => {
                r#"{"type":"object","properties":{"deleted":{"type":"boolean"}},"required":["deleted"]}"#
            }
        })
    }

    fn call<'a>(&self, cx: &ToolCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        let shard = cx.shard;
        let (key, value) = match self.parse(shard, &args) {
            Ok(kv) => kv,
            Err(e) => return ToolReply::Ready(Ok(ToolResult::error(e))),
        };
        let key = key.to_owned();
        let op = match self.0 {
            KvKind::Set => KvOp::Set {
                key,
                value: value.expect("parsed for kv_set"),
            },
            KvKind::Get => KvOp::Get { key },
            KvKind::Delete => KvOp::Delete { key },
        };
        let me = shard.id;
        match shard.kv_route(op) {
            Routed::Local(reply) => ToolReply::Ready(Ok(render(reply, me, me))),
            Routed::Failed(e, owner) => {
                ToolReply::Ready(Err(mesh_error(e, owner, shard.limits.mesh_timeout_ms)))
            }
            Routed::Remote(call, owner) => {
                let timeout_ms = shard.limits.mesh_timeout_ms;
                ToolReply::Pending(Box::pin(async move {
                    match call.await {
                        Ok(reply) => Ok(render(reply, me, owner)),
                        Err(e) => Err(mesh_error(e, owner, timeout_ms)),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spreads() {
        assert_eq!(owner("anything", 1), 0);
        // FNV-1a is fixed, so these never change between builds or hosts.
        assert_eq!(owner("a", 2), (fnv1a64(b"a") % 2) as usize);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner(&format!("key-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }

    #[test]
    fn store_is_bounded() {
        let mut s = KvStore::new(1, 2);
        assert_eq!(s.set("a", "1".into()), KvReply::Set { created: true });
        assert_eq!(s.set("a", "2".into()), KvReply::Set { created: false });
        assert_eq!(s.set("b", "3".into()), KvReply::Full { max_keys: 1 });
        assert_eq!(s.get("a"), KvReply::Get(Some("2".into())));
        assert_eq!(s.delete("a"), KvReply::Deleted(true));
        assert_eq!(s.delete("a"), KvReply::Deleted(false));
        assert!(s.is_empty());
        let (a, b, c) = (
            Watcher { shard: 0, sub: 1 },
            Watcher { shard: 1, sub: 1 },
            Watcher { shard: 1, sub: 2 },
        );
        assert_eq!(s.watch("k", a), KvReply::Watched);
        assert_eq!(s.watch("k", a), KvReply::Watched);
        assert_eq!(s.watch("k", b), KvReply::Watched);
        assert_eq!(s.watch("k", c), KvReply::WatchersFull { max: 2 });
        assert_eq!(s.watchers("k"), &[a, b]);
        s.forget_watcher(a);
        s.unwatch("k", b);
        assert!(s.watchers("k").is_empty());
    }
}
