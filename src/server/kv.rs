//! The sharded key-value store, its tools (`kv_set`, `kv_get`, `kv_delete`)
//! and its `kv://{key}` resources.
//!
//! Every key has exactly one owning shard, `owner(key)`: a pure function of the
//! key's bytes (FNV-1a, stable across processes and restarts) modulo the shard
//! count. A call for a key this shard owns is served in place with no hop; any
//! other key travels over the mesh to its owner and the reply comes back the
//! same way. Values are kept as compact JSON text, so nothing but bytes ever
//! crosses cores.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use super::content::text_contents;
use super::core::Core;
use super::ctx::CallCtx;
use super::encode::{resource_not_found, Era};
use super::msg::{self, hop_error, Msg, Reply};
use super::registry::{JsonReply, ResourceTemplate, TemplateDescriptor};
use super::tools::{
    arg_str, deny_unknown, ArgError, Args, CallError, Tool, ToolDescriptor, ToolReply, ToolResult,
};
use crate::protocol::json;
use crate::runtime::mesh::MeshError;

pub(crate) const URI_SCHEME: &str = "kv://";

/// `kv://` + the key with everything but RFC 3986 unreserved bytes
/// percent-encoded (RFC 6570 simple expansion).
pub(crate) fn uri_of(key: &str) -> String {
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
pub(crate) fn key_of(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(URI_SCHEME)?;
    let key = super::registry::percent_decode(rest)?;
    (!key.is_empty()).then_some(key)
}

/// Where a kv operation went.
pub(crate) enum Routed {
    /// This shard owns the key; the reply is here.
    Local(KvReply),
    /// The owner (second field) will reply.
    Remote(
        Pin<Box<dyn Future<Output = Result<KvReply, MeshError>>>>,
        usize,
    ),
    /// The hop to the owner (second field) could not even start.
    Failed(MeshError, usize),
    /// `--cluster`: the key lives in the cluster's shared store.
    Shared(Pin<Box<dyn Future<Output = Result<KvReply, String>>>>),
}

/// Runs a kv operation at the key's owner: here, synchronously, when this
/// shard owns it; otherwise over the mesh.
pub(crate) fn route(core: &Rc<Core>, op: KvOp) -> Routed {
    let shared = core.shared.borrow().clone();
    if let Some(shared) = shared {
        return Routed::Shared(shared_op(core, shared, op));
    }
    let owner = owner(op.key(), core.shard_count);
    if owner == core.id {
        return Routed::Local(core.kv_execute(op));
    }
    match core.call(owner, Msg::Kv(op)) {
        Ok(call) => Routed::Remote(
            Box::pin(async move {
                let reply = call.await?;
                Ok(msg::expect(
                    reply,
                    |r| match r {
                        Reply::Kv(k) => Some(k),
                        _ => None,
                    },
                    "kv",
                ))
            }),
            owner,
        ),
        Err(e) => Routed::Failed(e, owner),
    }
}

/// A kv operation on the cluster's store; a change is announced to this
/// node's watchers and, through the store's channel, to every other node's.
fn shared_op(
    core: &Rc<Core>,
    shared: Rc<dyn super::shared::Shared>,
    op: KvOp,
) -> Pin<Box<dyn Future<Output = Result<KvReply, String>>>> {
    let core = core.clone();
    let uri = uri_of(op.key());
    let writes = !matches!(op, KvOp::Get { .. });
    Box::pin(async move {
        let reply = shared.kv(op).await?;
        let changed = writes && matches!(reply, KvReply::Set { .. } | KvReply::Deleted(true));
        if changed {
            super::watch::updated(&core, &uri);
        }
        Ok(reply)
    })
}

/// -31010: the cluster's shared state could not be reached.
fn shared_error(why: String) -> CallError {
    CallError::Rpc(super::tools::RpcError::new(
        crate::protocol::jsonrpc::SERVER_OVERLOADED,
        why,
    ))
}

/// The shard that owns `key` among `shards`.
pub fn owner(key: &str, shards: usize) -> usize {
    assert!(shards > 0, "a server has at least one shard");
    if shards == 1 {
        return 0;
    }
    (super::placement::fnv1a(key.as_bytes()) % shards as u64) as usize
}

/// An operation on a key, as sent to its owner.
#[derive(Debug)]
pub(crate) enum KvOp {
    Set { key: String, value: Box<str> },
    Get { key: String },
    Delete { key: String },
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KvReply {
    Set {
        created: bool,
    },
    /// The owner already holds its maximum number of keys.
    Full {
        max_keys: usize,
    },
    Get(Option<Box<str>>),
    Deleted(bool),
}

/// The keys one shard owns. Bounded by `kv_max_keys_per_shard`.
pub(crate) struct KvStore {
    map: HashMap<Box<str>, Box<str>>,
    max_keys: usize,
}

impl KvStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            map: HashMap::new(),
            max_keys,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
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

    /// Applies `op`; the second value is true when the key's value changed
    /// (its watchers must hear of it).
    pub fn apply(&mut self, op: KvOp) -> (KvReply, bool) {
        match op {
            KvOp::Set { key, value } => {
                let r = self.set(&key, value);
                let changed = matches!(r, KvReply::Set { .. });
                (r, changed)
            }
            KvOp::Get { key } => (self.get(&key), false),
            KvOp::Delete { key } => {
                let r = self.delete(&key);
                let changed = r == KvReply::Deleted(true);
                (r, changed)
            }
        }
    }
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. } | KvOp::Get { key } | KvOp::Delete { key } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvKind {
    Set,
    Get,
    Delete,
}

/// One of the three kv tools.
pub(crate) struct KvTool(pub KvKind, ToolDescriptor);

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
        core: &Core,
        args: &Args<'a>,
    ) -> Result<(&'a str, Option<Box<str>>), ArgError> {
        let limits = &core.limits;
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
            return Err(ArgError(format!(
                "invalid arguments: `key` is {} bytes; the limit is {} (kv-max-key-bytes)",
                key.len(),
                limits.kv_max_key_bytes
            )));
        }
        if self.0 != KvKind::Set {
            return Ok((key, None));
        }
        let value = args
            .get("value")
            .ok_or("invalid arguments: missing required `value`")?;
        let encoded = json::encode_value(value);
        if encoded.len() > limits.kv_max_value_bytes {
            return Err(ArgError(format!(
                "invalid arguments: `value` is {} bytes as JSON; the limit is {} (kv-max-value-bytes)",
                encoded.len(),
                limits.kv_max_value_bytes
            )));
        }
        Ok((key, Some(encoded.into_boxed_str())))
    }
}

/// Turns the owner's reply into the tool result.
fn render(reply: KvReply, served_by: usize, owner: usize) -> ToolResult<'static> {
    let meta = format!("\"tessera/shard\":{{\"served_by\":{served_by},\"owner\":{owner}}}");
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
    };
    r.with_meta(meta)
}

impl KvTool {
    pub fn new(kind: KvKind) -> Self {
        let (name, description, input, output) = match kind {
            KvKind::Set => (
                "kv_set",
                "Stores any JSON `value` under `key` in the server's sharded key-value store.",
                SET_SCHEMA,
                r#"{"type":"object","properties":{"created":{"type":"boolean"}},"required":["created"]}"#,
            ),
            KvKind::Get => (
                "kv_get",
                "Returns the JSON value stored under `key` (`found: false` when absent).",
                KEY_ONLY_SCHEMA,
                r#"{"type":"object","properties":{"found":{"type":"boolean"},"value":{}},"required":["found","value"]}"#,
            ),
            KvKind::Delete => (
                "kv_delete",
                "Removes `key` from the key-value store.",
                KEY_ONLY_SCHEMA,
                r#"{"type":"object","properties":{"deleted":{"type":"boolean"}},"required":["deleted"]}"#,
            ),
        };
        Self(
            kind,
            ToolDescriptor::new(name, description, input).output_schema(output),
        )
    }
}

impl Tool for KvTool {
    fn descriptor(&self) -> &ToolDescriptor {
        &self.1
    }

    fn call<'a>(&self, cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        let core = cx.core;
        let (key, value) = match self.parse(core, &args) {
            Ok(kv) => kv,
            Err(e) => return ToolReply::Ready(Ok(ToolResult::error(e.0))),
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
        let me = core.id;
        let timeout_ms = core.limits.mesh_timeout_ms;
        match route(core, op) {
            Routed::Local(reply) => ToolReply::Ready(Ok(render(reply, me, me))),
            Routed::Failed(e, owner) => {
                ToolReply::Ready(Err(CallError::Rpc(hop_error(e, owner, timeout_ms))))
            }
            Routed::Remote(call, owner) => ToolReply::Pending(Box::pin(async move {
                match call.await {
                    Ok(reply) => Ok(render(reply, me, owner)),
                    Err(e) => Err(CallError::Rpc(hop_error(e, owner, timeout_ms))),
                }
            })),
            Routed::Shared(call) => ToolReply::Pending(Box::pin(async move {
                match call.await {
                    Ok(reply) => Ok(render(reply, me, me)),
                    Err(e) => Err(shared_error(e)),
                }
            })),
        }
    }
}

/// The `kv://{key}` template: each entry of the sharded store.
pub(crate) struct KvTemplate {
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

fn read_result(era: Era, uri: &str, reply: KvReply) -> super::registry::JsonOutcome {
    match reply {
        KvReply::Get(Some(value)) => Ok(text_contents(uri, "application/json", &value)),
        _ => Err(CallError::Rpc(resource_not_found(era, uri))),
    }
}

impl ResourceTemplate for KvTemplate {
    fn descriptor(&self) -> &TemplateDescriptor {
        &self.desc
    }

    fn read(&self, cx: &CallCtx<'_>, uri: &str, vars: &[(String, String)]) -> JsonReply {
        let era = cx.era;
        let Some((_, key)) = vars.iter().find(|(k, _)| k == "key") else {
            return JsonReply::Ready(Err(CallError::Rpc(resource_not_found(era, uri))));
        };
        let core = cx.core;
        let timeout_ms = core.limits.mesh_timeout_ms;
        let uri = uri.to_owned();
        match route(core, KvOp::Get { key: key.clone() }) {
            Routed::Local(reply) => JsonReply::Ready(read_result(era, &uri, reply)),
            Routed::Failed(e, owner) => {
                JsonReply::Ready(Err(CallError::Rpc(hop_error(e, owner, timeout_ms))))
            }
            Routed::Remote(call, owner) => JsonReply::Pending(Box::pin(async move {
                match call.await {
                    Ok(reply) => read_result(era, &uri, reply),
                    Err(e) => Err(CallError::Rpc(hop_error(e, owner, timeout_ms))),
                }
            })),
            Routed::Shared(call) => JsonReply::Pending(Box::pin(async move {
                match call.await {
                    Ok(reply) => read_result(era, &uri, reply),
                    Err(e) => Err(shared_error(e)),
                }
            })),
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
        assert_eq!(
            owner("a", 2),
            (super::super::placement::fnv1a(b"a") % 2) as usize
        );
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner(&format!("key-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }

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
    fn store_is_bounded() {
        let mut s = KvStore::new(1);
        assert_eq!(s.set("a", "1".into()), KvReply::Set { created: true });
        assert_eq!(s.set("a", "2".into()), KvReply::Set { created: false });
        assert_eq!(s.set("b", "3".into()), KvReply::Full { max_keys: 1 });
        assert_eq!(s.get("a"), KvReply::Get(Some("2".into())));
        assert_eq!(s.delete("a"), KvReply::Deleted(true));
        assert_eq!(s.delete("a"), KvReply::Deleted(false));
        assert_eq!(s.len(), 0);
    }
}
