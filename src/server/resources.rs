//! Resource subscriptions, and the `kv://{key}` resources.
//!
//! A subscription (legacy `resources/subscribe`, or a modern
//! `subscriptions/listen` with `resourceSubscriptions`) is a *watcher*: the
//! subscriber's shard and its id there. Watchers of a URI are kept by one
//! shard, `watch_owner(uri)`: for `kv://` URIs the key's owner (where changes
//! happen), for any other URI a hash of it. A change is reported to the
//! watch owner, which sends one `Notify` per shard that has watchers
//! (carrying all of that shard's subscriber ids), so an update fans out with
//! one mesh message per shard, not per subscriber. A notification for a
//! subscriber that is gone makes its shard tell the owner to forget it.

use std::collections::HashMap;
use std::rc::Rc;

use simd_json::prelude::*;

use super::ctx::CallCtx;
use super::kv::{self, mesh_error, KvOp, KvReply};
use super::registry::{JsonReply, ResourceTemplate, TemplateDescriptor};
use super::tools::{CallError, RpcError};
use super::Era;
use crate::protocol::json;
use crate::protocol::mcp::code;
use crate::runtime::mesh::{MeshError, Reply, Request};
use crate::runtime::shard::{Routed, Shard};

pub const URI_SCHEME: &str = "kv://";

/// `kv://` + the key with everything but RFC 3986 unreserved bytes
/// percent-encoded (RFC 6570 simple expansion).
pub fn uri_of(key: &str) -> String {
    let mut s = String::with_capacity(URI_SCHEME.len() + key.len());
    s.push_str(URI_SCHEME);
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The key a `kv://` URI names, if it is one.
pub fn key_of(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(URI_SCHEME)?;
    let key = super::registry::percent_decode(rest)?;
    (!key.is_empty()).then_some(key)
}

/// A subscriber somewhere in the server: its shard and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watcher {
    pub shard: usize,
    pub sub: u64,
}

/// The shard that keeps the watchers of `uri`.
pub fn watch_owner(uri: &str, shards: usize) -> usize {
    match key_of(uri) {
        Some(key) => kv::owner(&key, shards),
        None => kv::owner(uri, shards),
    }
}

/// Watchers of the URIs this shard owns, bounded per URI.
pub struct WatchTable {
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

fn watch_limit_error(max: usize) -> RpcError {
    RpcError::new(
        crate::protocol::jsonrpc::INVALID_REQUEST,
        format!("this resource already has {max} subscribers (max-watchers-per-key)"),
    )
}

/// Where a watch registration went.
pub enum WatchOp {
    Done(Result<(), RpcError>),
    Remote(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RpcError>>>>),
}

/// Registers subscriber `sub` of this shard as a watcher of `uri`.
pub fn watch(shard: &Rc<Shard>, uri: String, sub: u64) -> WatchOp {
    let w = Watcher {
        shard: shard.id,
        sub,
    };
    let owner = watch_owner(&uri, shard.shard_count);
    if owner == shard.id {
        let r = shard
            .watches
            .borrow_mut()
            .watch(&uri, w)
            .map_err(watch_limit_error);
        if r.is_err() {
            shard.metrics.borrow_mut().counters.kv_full += 1;
        }
        return WatchOp::Done(r);
    }
    let timeout_ms = shard.limits.mesh_timeout_ms;
    match shard.mesh_call(owner, Request::Watch { uri, watcher: w }) {
        Ok(call) => WatchOp::Remote(Box::pin(async move {
            match call.await {
                Ok(Reply::Watched(Ok(()))) => Ok(()),
                Ok(Reply::Watched(Err(max))) => Err(watch_limit_error(max)),
                Ok(_) => Err(mesh_error(MeshError::PeerGone, owner, timeout_ms)),
                Err(e) => Err(mesh_error(e, owner, timeout_ms)),
            }
        })),
        Err(e) => WatchOp::Done(Err(mesh_error(e, owner, timeout_ms))),
    }
}

/// Drops subscriber `sub`'s watch on `uri` (no reply needed).
pub fn unwatch(shard: &Rc<Shard>, uri: &str, sub: u64) {
    let w = Watcher {
        shard: shard.id,
        sub,
    };
    let owner = watch_owner(uri, shard.shard_count);
    if owner == shard.id {
        shard.watches.borrow_mut().unwatch(uri, w);
    } else {
        shard.tell(
            owner,
            Request::Unwatch {
                uri: uri.to_owned(),
                watcher: w,
            },
        );
    }
}

/// Reports that `uri` changed, from any shard.
pub fn updated(shard: &Rc<Shard>, uri: &str) {
    let owner = watch_owner(uri, shard.shard_count);
    if owner == shard.id {
        notify_watchers(shard, uri);
    } else {
        shard.tell(
            owner,
            Request::Updated {
                uri: uri.to_owned(),
            },
        );
    }
}

/// On the watch owner, after `uri` changed: tells every watcher's shard.
pub fn notify_watchers(shard: &Rc<Shard>, uri: &str) {
    let watchers = shard.watches.borrow().watchers(uri);
    if watchers.is_empty() {
        return;
    }
    let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); shard.shard_count];
    for w in watchers {
        if let Some(list) = by_shard.get_mut(w.shard) {
            list.push(w.sub);
        }
    }
    for (to, subs) in by_shard.into_iter().enumerate() {
        if subs.is_empty() {
            continue;
        }
        if to == shard.id {
            deliver(shard, uri, &subs);
        } else {
            shard.tell(
                to,
                Request::Notify {
                    uri: uri.to_owned(),
                    subscribers: subs,
                },
            );
        }
    }
}

/// On a subscriber's shard: sends `notifications/resources/updated` to each
/// live subscriber and has the owner forget the ones that are gone.
pub fn deliver(shard: &Rc<Shard>, uri: &str, subs: &[u64]) {
    let mut msg = Vec::with_capacity(96 + uri.len());
    msg.extend_from_slice(
        br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"#,
    );
    json::write_str(&mut msg, uri);
    msg.extend_from_slice(b"}}");
    for &sub in subs {
        let notifier = shard.subscribers.borrow().get(&sub).cloned();
        match notifier {
            Some(n) => {
                n.notify(&msg);
                shard.metrics.borrow_mut().counters.notifications_sent += 1;
            }
            None => unwatch(shard, uri, sub),
        }
    }
}

/// The "resource not found" error of the request's era (-32002 legacy,
/// -32602 modern, SEP-2164), naming the URI in `data`.
pub fn not_found(era: Era, uri: &str) -> RpcError {
    let mut data = Vec::with_capacity(16 + uri.len());
    data.extend_from_slice(b"{\"uri\":");
    json::write_str(&mut data, uri);
    data.push(b'}');
    let code = if era.is_modern() {
        crate::protocol::jsonrpc::INVALID_PARAMS
    } else {
        code::RESOURCE_NOT_FOUND
    };
    RpcError::new(code, "Resource not found")
        .with_data(String::from_utf8(data).expect("JSON is UTF-8"))
}

/// `{"contents":[{uri, mimeType, text}]}`.
pub fn text_contents(uri: &str, mime_type: &str, text: &str) -> String {
    let mut out = Vec::with_capacity(64 + text.len());
    out.extend_from_slice(b"{\"contents\":[{\"uri\":");
    json::write_str(&mut out, uri);
    out.extend_from_slice(b",\"mimeType\":");
    json::write_str(&mut out, mime_type);
    out.extend_from_slice(b",\"text\":");
    json::write_str(&mut out, text);
    out.extend_from_slice(b"}]}");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// `{"contents":[{uri, mimeType, blob}]}`.
pub fn blob_contents(uri: &str, mime_type: &str, blob_base64: &str) -> String {
    let mut out = Vec::with_capacity(64 + blob_base64.len());
    out.extend_from_slice(b"{\"contents\":[{\"uri\":");
    json::write_str(&mut out, uri);
    out.extend_from_slice(b",\"mimeType\":");
    json::write_str(&mut out, mime_type);
    out.extend_from_slice(b",\"blob\":");
    json::write_str(&mut out, blob_base64);
    out.extend_from_slice(b"}]}");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// The `kv://{key}` template: each entry of the sharded store.
pub struct KvTemplate {
    desc: TemplateDescriptor,
}

impl Default for KvTemplate {
    fn default() -> Self {
        Self {
            desc: TemplateDescriptor {
                uri_template: "kv://{key}".into(),
                name: "kv".into(),
                title: Some("Key-value entry".into()),
                description: Some(
                    "The JSON value stored under {key} by kv_set; subscribe to hear when it changes.".into(),
                ),
                mime_type: Some("application/json".into()),
            },
        }
    }
}

fn read_result(era: Era, uri: &str, reply: KvReply) -> Result<String, CallError> {
    match reply {
        KvReply::Get(Some(value)) => Ok(text_contents(uri, "application/json", &value)),
        _ => Err(CallError::Rpc(not_found(era, uri))),
    }
}

impl ResourceTemplate for KvTemplate {
    fn descriptor(&self) -> &TemplateDescriptor {
        &self.desc
    }

    fn read(&self, cx: &CallCtx<'_>, uri: &str, vars: &[(String, String)]) -> JsonReply {
        let era = cx.era;
        let Some((_, key)) = vars.iter().find(|(k, _)| k == "key") else {
            return JsonReply::Ready(Err(CallError::Rpc(not_found(era, uri))));
        };
        let shard = cx.shard;
        let uri = uri.to_owned();
        match shard.kv_route(KvOp::Get { key: key.clone() }) {
            Routed::Local(reply) => JsonReply::Ready(read_result(era, &uri, reply)),
            Routed::Failed(e, owner) => JsonReply::Ready(Err(CallError::Rpc(mesh_error(
                e,
                owner,
                shard.limits.mesh_timeout_ms,
            )))),
            Routed::Remote(call, owner) => {
                let timeout_ms = shard.limits.mesh_timeout_ms;
                JsonReply::Pending(Box::pin(async move {
                    match call.await {
                        Ok(reply) => read_result(era, &uri, reply),
                        Err(e) => Err(CallError::Rpc(mesh_error(e, owner, timeout_ms))),
                    }
                }))
            }
        }
    }
}

/// Reads `params.uri`.
pub fn uri_param<'a>(params: &Option<simd_json::tape::Value<'a, 'a>>) -> Result<&'a str, RpcError> {
    params
        .as_ref()
        .and_then(|p| p.get("uri"))
        .and_then(|u| u.into_string())
        .ok_or_else(|| RpcError::invalid_params("params.uri (a string) is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_any_key() {
        for key in ["a", "user:42/name", "sp ace", "ü✓", "%41", "a?b#c"] {
            let uri = uri_of(key);
            assert!(
                uri[URI_SCHEME.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_graphic()),
                "{uri}"
            );
            assert_eq!(key_of(&uri).as_deref(), Some(key), "{uri}");
        }
        assert_eq!(key_of("file:///x"), None);
        assert_eq!(key_of("kv://"), None);
        assert_eq!(key_of("kv://%zz"), None);
    }

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
        assert_eq!(watch_owner("kv://k", 1), 0);
    }
}
