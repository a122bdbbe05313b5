//! Server-initiated notifications about lists and subscriptions.
//!
//! Legacy sessions get `notifications/*/list_changed` on their session
//! channel. Modern clients open `subscriptions/listen` (2026-07-28): a request
//! whose response is a long-lived stream; the server acknowledges with
//! `notifications/subscriptions/acknowledged`, then sends only the
//! notification kinds the client asked for, each tagged with
//! `_meta["io.modelcontextprotocol/subscriptionId"]` = the listen request's id.
//!
//! A client that declared the tasks extension may also ask for
//! `notifications/tasks/status` of tasks it names, with the filter member
//! `"io.modelcontextprotocol/tasks": {"taskIds": [...]}` (at most
//! [`LISTEN_TASKS_MAX`]; the acknowledgement lists those honoured). Status
//! changes reach every shard and, in a cluster, every node (`tasks.rs`).

use std::rc::Rc;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::core::Core;
use super::registry::ListKind;
use super::{Notifier, SharedNotifier};

/// Task ids one listen stream may follow; past it the rest are not
/// honoured (the acknowledgement says which are).
pub(crate) const LISTEN_TASKS_MAX: usize = 256;

/// The filter member of the tasks extension.
const TASKS_MEMBER: &str = "io.modelcontextprotocol/tasks";

/// What a listen stream opted in to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    pub resource_uris: Vec<String>,
    /// Tasks whose status changes the stream wants.
    pub task_ids: Vec<String>,
}

impl Filter {
    /// Reads `params.notifications`; `None` when it is missing or malformed.
    pub fn parse(v: Option<TapeValue<'_, '_>>) -> Option<Filter> {
        let v = v.filter(|v| v.is_object())?;
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        let mut f = Filter {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            resource_uris: Vec::new(),
            task_ids: Vec::new(),
        };
        if let Some(ids) = v.get(TASKS_MEMBER).and_then(|t| t.get("taskIds")) {
            for id in ids.as_array()?.iter() {
                f.task_ids.push(id.into_string()?.to_owned());
            }
        }
        if let Some(list) = v.get("resourceSubscriptions") {
            let arr = list.as_array()?;
            for u in arr.iter() {
                f.resource_uris.push(u.into_string()?.to_owned());
            }
        }
        Some(f)
    }

    pub fn wants(&self, kind: ListKind) -> bool {
        match kind {
            ListKind::Tools => self.tools,
            ListKind::Prompts => self.prompts,
            ListKind::Resources => self.resources,
        }
    }

    /// The honoured subset as a `SubscriptionFilter` object.
    pub fn to_json(&self) -> String {
        let mut parts = Vec::new();
        if self.tools {
            parts.push("\"toolsListChanged\":true".to_owned());
        }
        if self.prompts {
            parts.push("\"promptsListChanged\":true".to_owned());
        }
        if self.resources {
            parts.push("\"resourcesListChanged\":true".to_owned());
        }
        if !self.resource_uris.is_empty() {
            let uris = string_array(&self.resource_uris);
            parts.push(format!("\"resourceSubscriptions\":{uris}"));
        }
        if !self.task_ids.is_empty() {
            let ids = string_array(&self.task_ids);
            parts.push(format!("\"{TASKS_MEMBER}\":{{\"taskIds\":{ids}}}"));
        }
        format!("{{{}}}", parts.join(","))
    }
}

/// A JSON array of strings.
fn string_array(items: &[String]) -> String {
    let mut out = vec![b'['];
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::protocol::json::write_str(&mut out, s);
    }
    out.push(b']');
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// One open listen stream.
pub(crate) struct Listener {
    pub filter: Filter,
    pub sink: SharedNotifier,
}

/// Adds the subscription id to every notification passing through.
pub(crate) struct Tagged {
    pub inner: SharedNotifier,
    /// The listen request's id, as JSON.
    pub id_json: Box<[u8]>,
}

impl Notifier for Tagged {
    fn notify(&self, message: &[u8]) {
        self.inner.notify(&tag(message, &self.id_json));
    }
}

/// Inserts `_meta.io.modelcontextprotocol/subscriptionId` into a
/// notification's params (creating params when absent).
pub(crate) fn tag(msg: &[u8], id_json: &[u8]) -> Vec<u8> {
    const META: &[u8] = b"\"_meta\":{\"io.modelcontextprotocol/subscriptionId\":";
    let mut out = Vec::with_capacity(msg.len() + META.len() + id_json.len() + 16);
    if let Some(at) = memchr::memmem::find(msg, b"\"params\":{") {
        let split = at + b"\"params\":{".len();
        out.extend_from_slice(&msg[..split]);
        out.extend_from_slice(META);
        out.extend_from_slice(id_json);
        out.push(b'}');
        if msg.get(split) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&msg[split..]);
    } else {
        let end = msg.iter().rposition(|&b| b == b'}').unwrap_or(msg.len());
        out.extend_from_slice(&msg[..end]);
        out.extend_from_slice(b",\"params\":{");
        out.extend_from_slice(META);
        out.extend_from_slice(id_json);
        out.extend_from_slice(b"}}");
        out.extend_from_slice(&msg[end..]);
    }
    out
}

/// On one shard: tells its legacy sessions and its listen streams that a
/// list changed.
pub(crate) fn list_changed(core: &Rc<Core>, kind: ListKind) {
    let msg = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"{}\"}}",
        kind.notification()
    );
    let sessions: Vec<SharedNotifier> = core.legacy_sessions.borrow().values().cloned().collect();
    for s in sessions {
        s.notify(msg.as_bytes());
    }
    let listeners: Vec<SharedNotifier> = core
        .listeners
        .borrow()
        .values()
        .filter(|l| l.filter.wants(kind))
        .map(|l| l.sink.clone())
        .collect();
    for l in listeners {
        l.notify(msg.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_adds_the_subscription_id() {
        let t = tag(
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            b"\"L1\"",
        );
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(
            v["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            "L1"
        );
        let t = tag(
            br#"{"jsonrpc":"2.0","method":"x","params":{"uri":"a"}}"#,
            b"7",
        );
        let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
        assert_eq!(v["params"]["uri"], "a");
        assert_eq!(
            v["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            7
        );
        let t = tag(br#"{"jsonrpc":"2.0","method":"x","params":{}}"#, b"7");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&t).is_ok(),
            "{}",
            String::from_utf8_lossy(&t)
        );
    }
}
