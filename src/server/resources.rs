//! Resources: every kv entry is the resource `kv://{key}` (key
//! percent-encoded), readable with `resources/read` and, in the legacy era,
//! watchable with `resources/subscribe`.
//!
//! Subscriptions live with the key's owner: the subscribing session's shard
//! registers a [`Watcher`] (its shard and subscriber id) at `owner(key)`.
//! When the owner applies a change it sends one `Notify` per shard that has
//! watchers (carrying all of that shard's subscriber ids), so an update fans
//! out with one mesh message per shard, not per subscriber. The subscriber's
//! shard turns it into `notifications/resources/updated` on each session's
//! notifier. A notification for a subscriber that is gone makes its shard
//! tell the owner to forget it.

use std::rc::Rc;
use std::time::Instant;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::kv::{mesh_error, KvOp, KvReply, Watcher};
use super::{close_result, Era, Handled, PendingResponse, CACHE_TTL_MS};
use crate::metrics::MethodKind;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};
use crate::protocol::mcp::code;
use crate::runtime::mesh::Request;
use crate::runtime::shard::{Routed, Shard};

pub const URI_SCHEME: &str = "kv://";

const TEMPLATES_MEMBER: &str = r#""resourceTemplates":[{"uriTemplate":"kv://{key}","name":"kv","title":"Key-value entry","description":"The JSON value stored under {key} by kv_set; subscribe to hear when it changes.","mimeType":"application/json"}]"#;

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
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let key = String::from_utf8(out).ok()?;
    (!key.is_empty()).then_some(key)
}

/// Reads `params.uri` and returns the kv key it names.
pub fn key_param(params: &Option<TapeValue<'_, '_>>) -> Result<String, String> {
    let uri = params
        .as_ref()
        .and_then(|p| p.get("uri"))
        .and_then(|u| u.into_string())
        .ok_or("params.uri (a string) is required")?;
    key_of(uri)
        .ok_or_else(|| format!("unknown resource URI {uri:?}: this server serves kv://{{key}}"))
}

/// `resources/list`, `resources/templates/list`, `resources/read`.
pub fn handle(
    shard: &Rc<Shard>,
    name: &str,
    id: Id<'_>,
    params: Option<TapeValue<'_, '_>>,
    out: &mut Vec<u8>,
    started: Instant,
    era: Era,
) -> Handled {
    let kind = MethodKind::Resources;
    let done = |is_error| Handled {
        kind,
        pending: None,
        is_error,
    };
    if name != "resources/read" {
        if params
            .as_ref()
            .and_then(|p| p.get("cursor"))
            .is_some_and(|c| !c.is_null())
        {
            jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, "invalid cursor");
            return done(true);
        }
        jsonrpc::begin_result(out, &id);
        // Keys are spread over every shard and may be many; they are reached
        // through the template rather than enumerated.
        out.extend_from_slice(if name == "resources/list" {
            br#"{"resources":[]"#
        } else {
            b"{"
        });
        if name != "resources/list" {
            out.extend_from_slice(TEMPLATES_MEMBER.as_bytes());
        }
        if era.is_modern() {
            out.extend_from_slice(b",\"ttlMs\":");
            json::write_u64(out, CACHE_TTL_MS);
            out.extend_from_slice(b",\"cacheScope\":\"public\"");
        }
        close_result(out, era);
        jsonrpc::end_response(out);
        return done(false);
    }

    let key = match key_param(&params) {
        Ok(k) => k,
        Err(e) => {
            jsonrpc::write_error(out, &id, jsonrpc::INVALID_PARAMS, &e);
            return done(true);
        }
    };
    let uri = uri_of(&key);
    match shard.kv_route(KvOp::Get { key }) {
        Routed::Local(reply) => done(write_read(out, &id, &uri, reply, era)),
        Routed::Failed(e, owner) => {
            let e = mesh_error(e, owner, shard.limits.mesh_timeout_ms);
            jsonrpc::write_error(out, &id, e.code, &e.message);
            done(true)
        }
        Routed::Remote(call, owner) => {
            let id = id.to_owned_bytes();
            let shard = shard.clone();
            let pending: PendingResponse = Box::pin(async move {
                let mut out = Vec::with_capacity(256);
                let id = Id::Encoded(&id);
                let is_error = match call.await {
                    Ok(reply) => write_read(&mut out, &id, &uri, reply, era),
                    Err(e) => {
                        let e = mesh_error(e, owner, shard.limits.mesh_timeout_ms);
                        jsonrpc::write_error(&mut out, &id, e.code, &e.message);
                        true
                    }
                };
                let mut m = shard.metrics.borrow_mut();
                m.record(kind, started.elapsed());
                m.counters.error_responses += is_error as u64;
                out
            });
            Handled {
                kind,
                pending: Some(pending),
                is_error: false,
            }
        }
    }
}

/// Writes a `resources/read` response; returns whether it is an error.
fn write_read(out: &mut Vec<u8>, id: &Id<'_>, uri: &str, reply: KvReply, era: Era) -> bool {
    match reply {
        KvReply::Get(Some(value)) => {
            jsonrpc::begin_result(out, id);
            out.extend_from_slice(br#"{"contents":[{"uri":"#);
            json::write_str(out, uri);
            out.extend_from_slice(br#","mimeType":"application/json","text":"#);
            json::write_str(out, &value);
            out.extend_from_slice(b"}]");
            if era.is_modern() {
                // Values change whenever anyone writes them.
                out.extend_from_slice(b",\"ttlMs\":0,\"cacheScope\":\"public\"");
            }
            close_result(out, era);
            jsonrpc::end_response(out);
            false
        }
        _ => {
            let mut data = Vec::with_capacity(64);
            data.extend_from_slice(b"{\"uri\":");
            json::write_str(&mut data, uri);
            data.push(b'}');
            // 2026-07-28 replaced -32002 with -32602 for unknown resources.
            let code = if era.is_modern() {
                jsonrpc::INVALID_PARAMS
            } else {
                code::RESOURCE_NOT_FOUND
            };
            jsonrpc::write_error_with_data(out, id, code, "Resource not found", Some(&data));
            true
        }
    }
}

/// Registers subscriber `sub` of this shard as a watcher of `key` at its
/// owner; writes the `resources/subscribe` response or returns it pending.
pub fn watch(
    shard: &Rc<Shard>,
    key: String,
    sub: u64,
    id: Id<'_>,
    out: &mut Vec<u8>,
) -> Option<PendingResponse> {
    let watcher = Watcher {
        shard: shard.id,
        sub,
    };
    match shard.kv_route(KvOp::Watch { key, watcher }) {
        Routed::Local(reply) => {
            write_watch(out, &id, reply);
            None
        }
        Routed::Failed(e, owner) => {
            let e = mesh_error(e, owner, shard.limits.mesh_timeout_ms);
            jsonrpc::write_error(out, &id, e.code, &e.message);
            None
        }
        Routed::Remote(call, owner) => {
            let id = id.to_owned_bytes();
            let shard = shard.clone();
            let started = Instant::now();
            Some(Box::pin(async move {
                let mut out = Vec::with_capacity(128);
                let id = Id::Encoded(&id);
                match call.await {
                    Ok(reply) => write_watch(&mut out, &id, reply),
                    Err(e) => {
                        let e = mesh_error(e, owner, shard.limits.mesh_timeout_ms);
                        jsonrpc::write_error(&mut out, &id, e.code, &e.message);
                    }
                }
                shard
                    .metrics
                    .borrow_mut()
                    .record(MethodKind::Subscribe, started.elapsed());
                out
            }))
        }
    }
}

fn write_watch(out: &mut Vec<u8>, id: &Id<'_>, reply: KvReply) {
    match reply {
        KvReply::WatchersFull { max } => {
            let msg = format!("this resource already has {max} subscribers (max-watchers-per-key)");
            jsonrpc::write_error(out, id, jsonrpc::INVALID_REQUEST, &msg);
        }
        _ => {
            jsonrpc::begin_result(out, id);
            out.extend_from_slice(b"{}");
            jsonrpc::end_response(out);
        }
    }
}

/// Drops subscriber `sub`'s watch on `key` at the owner (no reply needed).
pub fn unwatch(shard: &Rc<Shard>, key: &str, sub: u64) {
    let watcher = Watcher {
        shard: shard.id,
        sub,
    };
    shard.kv_tell(KvOp::Unwatch {
        key: key.to_owned(),
        watcher,
    });
}

/// On the owner, after `key` changed: tells every watcher's shard.
pub fn notify_watchers(shard: &Rc<Shard>, key: &str, watchers: &[Watcher]) {
    if watchers.is_empty() {
        return;
    }
    let uri = uri_of(key);
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
            deliver(shard, &uri, &subs);
        } else {
            shard.tell(
                to,
                Request::Notify {
                    uri: uri.clone(),
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
            None => {
                if let Some(key) = key_of(uri) {
                    unwatch(shard, &key, sub);
                }
            }
        }
    }
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
}
