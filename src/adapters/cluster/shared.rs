//! The kv store and resource-change announcements shared by every node
//! (`--cluster`), on Redis.
//!
//! - kv: key `K` is `{prefix}:kv:K`, a string holding the value's compact
//!   JSON (Redis Cluster shards the keys by slot). `kv_set` is one
//!   `SET ... GET` (the old value says whether the key was created),
//!   `kv_get` one `GET`, `kv_delete` one `DEL`: one round trip each, on the
//!   request path (that is what sharing the data costs). The number of keys
//!   is bounded by the Redis server's `maxmemory`, not per shard.
//! - announcements: a change of a resource URI on a node is published on
//!   the channel `{prefix}:updated` as `{"from": node, "uri": ...}`, a
//!   change of the offered set (`set_enabled`) as `{"from", "list", "name",
//!   "on"}` (every node then offers the same entries and tells its clients
//!   `list_changed`; two nodes changing one entry at once may disagree until
//!   the next change), a modern task's status change as `{"from", "task",
//!   "status"}` (for listen streams following it); each
//!   node keeps one subscriber connection (on shard 0) and hands what other
//!   nodes announce to its own watchers, which fan it out to their shards
//!   over the mesh. Pub/sub is at-most-once: an announcement made while a
//!   node's subscriber is reconnecting is not delivered to it.
//! - `--rate-limit-scope cluster`: one token bucket per principal,
//!   `{prefix}:rl:{principal}`, taken by one script (one round trip, no
//!   read-modify-write race), refilled by Redis's clock.
//! - tasks: a modern task another node made is claimed by the script that
//!   takes sessions over (`sessions.rs`), once its maker is dead.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use std::time::Duration;

use fred::prelude::{ClientLike, EventInterface, KeysInterface, LuaInterface, PubsubInterface};
use fred::types::SetOptions;

use super::sessions::{self, RedisStore};
use super::{ClusterError, Purpose, Redis};
use crate::server::kv::{KvOp, KvReply};
use crate::server::registry::ListKind;
use crate::server::shared::{Announcement, Claimed, Shared};

fn kv_key(prefix: &str, key: &str) -> String {
    format!("{prefix}:kv:{key}")
}

fn channel(prefix: &str) -> String {
    format!("{prefix}:updated")
}

/// A token bucket per principal, refilled by Redis's own clock, taken
/// atomically: returns 0 to go ahead or the milliseconds to wait. The key
/// expires once a full bucket would have refilled.
const TAKE_TOKEN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait";

/// One shard's view of the shared state.
pub(crate) struct RedisShared {
    redis: Rc<Redis>,
    /// The shard's store, which must know the epoch of a task it claims.
    store: Rc<RedisStore>,
    rate_limits: bool,
}

impl RedisShared {
    pub fn new(redis: Rc<Redis>, store: Rc<RedisStore>) -> Rc<Self> {
        let rate_limits = redis.cfg.rate_limit_cluster;
        Rc::new(Self {
            redis,
            store,
            rate_limits,
        })
    }
}

impl Shared for RedisShared {
    fn claim_task(&self, id: String) -> Pin<Box<dyn Future<Output = Result<Claimed, String>>>> {
        let (redis, store) = (self.redis.clone(), self.store.clone());
        Box::pin(async move { sessions::claim_task(&redis, &store, &id).await })
    }

    fn kv(&self, op: KvOp) -> Pin<Box<dyn Future<Output = Result<KvReply, String>>>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            let c = redis.client();
            let prefix = &redis.cfg.key_prefix;
            let reply = match op {
                KvOp::Set { key, value } => {
                    let old: Option<String> = redis
                        .call(Purpose::Request, 1, async {
                            c.set(
                                kv_key(prefix, &key),
                                &*value,
                                None,
                                None::<SetOptions>,
                                true,
                            )
                            .await
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    KvReply::Set {
                        created: old.is_none(),
                    }
                }
                KvOp::Get { key } => {
                    let v: Option<String> = redis
                        .call(Purpose::Request, 1, async {
                            c.get(kv_key(prefix, &key)).await
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    KvReply::Get(v.map(String::into_boxed_str))
                }
                KvOp::Delete { key } => {
                    let n: i64 = redis
                        .call(Purpose::Request, 1, async {
                            c.del(kv_key(prefix, &key)).await
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    KvReply::Deleted(n > 0)
                }
            };
            Ok(reply)
        })
    }

    fn shares_rate_limits(&self) -> bool {
        self.rate_limits
    }

    fn rate_check(
        &self,
        principal: String,
        rate: u32,
        burst: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Duration>, String>>>> {
        let redis = self.redis.clone();
        Box::pin(async move {
            let key = format!("{}:rl:{principal}", redis.cfg.key_prefix);
            let args: Vec<String> = vec![rate.to_string(), burst.to_string()];
            let wait_ms: i64 = redis
                .call(Purpose::Request, 1, async {
                    redis.client().eval(TAKE_TOKEN, vec![key], args).await
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
        })
    }

    fn announce(&self, what: Announcement) {
        let redis = self.redis.clone();
        let from = &redis.cfg.node_id;
        let msg = match what {
            Announcement::Updated { uri } => serde_json::json!({ "from": from, "uri": uri }),
            Announcement::Enabled { kind, name, on } => {
                serde_json::json!({ "from": from, "list": kind.name(), "name": name, "on": on })
            }
            Announcement::TaskStatus { id, params } => {
                let params: serde_json::Value =
                    serde_json::from_str(&params).expect("a task status is a JSON object");
                serde_json::json!({ "from": from, "task": id, "status": params })
            }
        }
        .to_string();
        glommio::spawn_local(async move {
            let ch = channel(&redis.cfg.key_prefix);
            let sent: Result<i64, ClusterError> = redis
                .call(Purpose::Background, 1, async {
                    redis.client().publish(ch, msg).await
                })
                .await;
            if let Err(e) = sent {
                log::debug!("announcing a resource change: {e}");
            }
        })
        .detach();
    }
}

/// An announcement as it travels, if it is one and not from `me`.
fn parse_announcement(text: &str, me: &str) -> Option<Announcement> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["from"].as_str()? == me {
        return None;
    }
    if let Some(id) = v["task"].as_str() {
        let status = v.get("status").filter(|s| s.is_object())?;
        return Some(Announcement::TaskStatus {
            id: id.to_owned(),
            params: status.to_string(),
        });
    }
    if let Some(uri) = v["uri"].as_str() {
        return Some(Announcement::Updated {
            uri: uri.to_owned(),
        });
    }
    Some(Announcement::Enabled {
        kind: ListKind::from_name(v["list"].as_str()?)?,
        name: v["name"].as_str()?.to_owned(),
        on: v["on"].as_bool()?,
    })
}

/// The node's one subscriber connection: hands what other nodes announce
/// to `on_announced`. Re-subscribes after each reconnect. Runs for the life
/// of the shard that started it.
pub(crate) fn subscribe(
    cfg: &super::ClusterConfig,
    on_announced: impl Fn(Announcement) + 'static,
) -> Result<Rc<fred::prelude::Client>, ClusterError> {
    let client = Rc::new(cfg.client()?);
    let ch = channel(&cfg.key_prefix);
    let me = cfg.node_id.clone();
    let sub = client.clone();
    let ch_again = ch.clone();
    client.on_reconnect(move |_| {
        let (sub, ch) = (sub.clone(), ch_again.clone());
        glommio::spawn_local(async move {
            if let Err(e) = sub.subscribe(ch).await {
                log::warn!("subscribing to cluster announcements: {e}");
            }
        })
        .detach();
        async { Ok(()) }
    });
    client.on_message(move |m| {
        let text = m.value.as_string().unwrap_or_default();
        if let Some(a) = parse_announcement(&text, &me) {
            on_announced(a);
        }
        async { Ok(()) }
    });
    drop(client.connect());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_from_other_nodes_parse_and_ours_are_ignored() {
        let up = r#"{"from":"b","uri":"kv://x"}"#;
        assert_eq!(
            parse_announcement(up, "a"),
            Some(Announcement::Updated {
                uri: "kv://x".into()
            })
        );
        assert_eq!(parse_announcement(up, "b"), None);
        let en = r#"{"from":"b","list":"prompts","name":"p","on":false}"#;
        assert_eq!(
            parse_announcement(en, "a"),
            Some(Announcement::Enabled {
                kind: ListKind::Prompts,
                name: "p".into(),
                on: false
            })
        );
        assert_eq!(
            parse_announcement(r#"{"from":"b","list":"x","name":"p","on":true}"#, "a"),
            None
        );
        assert_eq!(parse_announcement("not json", "a"), None);
    }
}
