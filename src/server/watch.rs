//! Resource subscriptions: who watches which URI, and how a change reaches
//! them on every shard.
//!
//! A subscription (legacy `resources/subscribe`, or a modern
//! `subscriptions/listen` with `resourceSubscriptions`) is a *watcher*: the
//! subscriber's shard and its id there. Watchers of a URI are kept by one
//! shard, [`owner`]: for `kv://` URIs the key's owner (where changes happen),
//! for any other URI a hash of it. A change is reported to the watch owner,
//! which sends one `Notify` per shard that has watchers (carrying all of that
//! shard's subscriber ids), so an update fans out with one mesh message per
//! shard, not per subscriber. A notification for a subscriber that is gone
//! makes its shard tell the owner to forget it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::core::Core;
use super::kv;
use super::msg::{self, hop_error, Msg, Reply};
use super::tools::RpcError;
use crate::protocol::json;

/// A subscriber somewhere in the server: its shard and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watcher {
    pub shard: usize,
    pub sub: u64,
}

/// The shard that keeps the watchers of `uri`.
pub(crate) fn owner(uri: &str, shards: usize) -> usize {
    match kv::key_of(uri) {
        Some(key) => kv::owner(&key, shards),
        None => kv::owner(uri, shards),
    }
}

/// Watchers of the URIs this shard owns, bounded per URI.
pub(crate) struct WatchTable {
    map: HashMap<Box<str>, Vec<Watcher>>,
    max_per_uri: usize,
}

impl WatchTable {
    pub fn new(max_per_uri: usize) -> Self {
        Self {
            map: HashMap::new(),
            max_per_uri,
        }
    }

    /// Err(max) at the bound.
    pub fn watch(&mut self, uri: &str, w: Watcher) -> Result<(), usize> {
        let list = self.map.entry(uri.into()).or_default();
        if list.contains(&w) {
            return Ok(());
        }
        if list.len() >= self.max_per_uri {
            return Err(self.max_per_uri);
        }
        list.push(w);
        Ok(())
    }

    pub fn unwatch(&mut self, uri: &str, w: Watcher) {
        if let Some(list) = self.map.get_mut(uri) {
            list.retain(|x| *x != w);
            if list.is_empty() {
                self.map.remove(uri);
            }
        }
    }

    pub fn watchers(&self, uri: &str) -> Vec<Watcher> {
        self.map.get(uri).cloned().unwrap_or_default()
    }
}

fn limit_error(max: usize) -> RpcError {
    RpcError::new(
        crate::protocol::jsonrpc::INVALID_REQUEST,
        format!("this resource already has {max} subscribers (max-watchers-per-key)"),
    )
}

/// A watch registration the owner has not answered yet.
pub(crate) type Registration = Pin<Box<dyn Future<Output = Result<(), RpcError>>>>;

/// Where a watch registration went.
pub(crate) enum WatchOp {
    Done(Result<(), RpcError>),
    Remote(Registration),
}

/// Registers subscriber `sub` of this shard as a watcher of `uri`.
pub(crate) fn watch(core: &Rc<Core>, uri: String, sub: u64) -> WatchOp {
    let w = Watcher {
        shard: core.id,
        sub,
    };
    let at = owner(&uri, core.shard_count);
    if at == core.id {
        let r = core
            .watches
            .borrow_mut()
            .watch(&uri, w)
            .map_err(limit_error);
        if r.is_err() {
            core.metrics.borrow_mut().counters.kv_full += 1;
        }
        return WatchOp::Done(r);
    }
    let timeout_ms = core.limits.mesh_timeout_ms;
    match core.call(at, Msg::Watch { uri, watcher: w }) {
        Ok(call) => WatchOp::Remote(Box::pin(async move {
            let reply = call.await.map_err(|e| hop_error(e, at, timeout_ms))?;
            let watched = msg::expect(
                reply,
                |r| match r {
                    Reply::Watched(w) => Some(w),
                    _ => None,
                },
                "watch",
            );
            watched.map_err(limit_error)
        })),
        Err(e) => WatchOp::Done(Err(hop_error(e, at, timeout_ms))),
    }
}

/// Drops subscriber `sub`'s watch on `uri` (no reply needed).
pub(crate) fn unwatch(core: &Rc<Core>, uri: &str, sub: u64) {
    let w = Watcher {
        shard: core.id,
        sub,
    };
    let at = owner(uri, core.shard_count);
    if at == core.id {
        core.watches.borrow_mut().unwatch(uri, w);
    } else {
        core.tell(
            at,
            Msg::Unwatch {
                uri: uri.to_owned(),
                watcher: w,
            },
        );
    }
}

/// Reports that `uri` changed here, from any shard: to this node's
/// watchers and (`--cluster`) to every other node's.
pub(crate) fn updated(core: &Rc<Core>, uri: &str) {
    let shared = core.shared.borrow().clone();
    if let Some(s) = shared {
        s.announce(super::shared::Announcement::Updated {
            uri: uri.to_owned(),
        });
    }
    updated_here(core, uri);
}

/// Reports that `uri` changed, to this node's watchers only (a change
/// another node announced).
pub(crate) fn updated_here(core: &Rc<Core>, uri: &str) {
    let at = owner(uri, core.shard_count);
    if at == core.id {
        notify_watchers(core, uri);
    } else {
        core.tell(
            at,
            Msg::Updated {
                uri: uri.to_owned(),
            },
        );
    }
}

/// On the watch owner, after `uri` changed: tells every watcher's shard.
pub(crate) fn notify_watchers(core: &Rc<Core>, uri: &str) {
    let watchers = core.watches.borrow().watchers(uri);
    if watchers.is_empty() {
        return;
    }
    let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); core.shard_count];
    for w in watchers {
        by_shard[w.shard].push(w.sub);
    }
    for (to, subs) in by_shard.into_iter().enumerate() {
        if subs.is_empty() {
            continue;
        }
        if to == core.id {
            deliver(core, uri, &subs);
        } else {
            core.tell(
                to,
                Msg::Notify {
                    uri: uri.to_owned(),
                    subscribers: subs,
                },
            );
        }
    }
}

/// On a subscriber's shard: sends `notifications/resources/updated` to each
/// live subscriber and has the owner forget the ones that are gone.
pub(crate) fn deliver(core: &Rc<Core>, uri: &str, subs: &[u64]) {
    let mut msg = Vec::with_capacity(96 + uri.len());
    msg.extend_from_slice(
        br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"#,
    );
    json::write_str(&mut msg, uri);
    msg.extend_from_slice(b"}}");
    for &sub in subs {
        let subscriber = core.subscribers.borrow().get(&sub).cloned();
        match subscriber {
            // Unsubscribed since: its unwatch is on its way to the owner.
            Some(s) if s.wants.as_ref().is_some_and(|w| !w.borrow().contains(uri)) => {}
            Some(s) => {
                s.notifier.notify(&msg);
                core.metrics.borrow_mut().counters.notifications_sent += 1;
            }
            None => unwatch(core, uri, sub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_table_is_bounded() {
        let mut t = WatchTable::new(2);
        let (a, b, c) = (
            Watcher { shard: 0, sub: 1 },
            Watcher { shard: 1, sub: 1 },
            Watcher { shard: 1, sub: 2 },
        );
        assert_eq!(t.watch("u", a), Ok(()));
        assert_eq!(t.watch("u", a), Ok(()));
        assert_eq!(t.watch("u", b), Ok(()));
        assert_eq!(t.watch("u", c), Err(2));
        assert_eq!(t.watchers("u"), vec![a, b]);
        t.unwatch("u", a);
        t.unwatch("u", b);
        assert!(t.watchers("u").is_empty());
        assert_eq!(owner("kv://k", 1), 0);
    }
}
