//! Where the two spec eras differ on the wire, in one place: how a result
//! object is closed (2026-07-28 adds `resultType`, the server's identity in
//! `_meta`, and cache hints), and the error answers every method shares.
//!
//! Results are built from data whose members are known (a body of members,
//! the handler's own `_meta` members), never by searching encoded JSON for a
//! key: a `_meta` inside a content item is just content.

use std::time::Duration;

use super::tools::RpcError;
use crate::protocol::json;
use crate::protocol::jsonrpc::{self, Id};
use crate::protocol::mcp::{self, code};

/// The era a request is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Legacy,
    Modern(&'static str),
}

impl Era {
    pub fn is_modern(self) -> bool {
        matches!(self, Era::Modern(_))
    }
}

/// The server identity member every modern result's `_meta` starts with.
const SERVER_INFO_MEMBER: &str = concat!(
    r#""io.modelcontextprotocol/serverInfo":"#,
    r#"{"name":"tessera","title":"tessera MCP server","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}"#
);

/// How long clients may cache discovery and list results (`ttlMs`): the sets
/// can change at run time, and list_changed reaches listening clients at once.
pub(crate) const CACHE_TTL_MS: u64 = 60_000;

/// A result object as data: its members as JSON text (never `_meta`,
/// `resultType`, `ttlMs` or `cacheScope`, which the era adds), and the
/// members of the handler's own `_meta`, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonResult {
    pub members: String,
    pub meta: Option<String>,
}

impl JsonResult {
    pub fn new(members: String) -> Self {
        Self {
            members,
            meta: None,
        }
    }
}

/// What closes a result object.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Close<'m> {
    /// Members were already written into the object.
    pub after_members: bool,
    /// Modern era: the result may be cached this long (`ttlMs`).
    pub cache_ttl_ms: Option<u64>,
    /// The handler's own `_meta` members.
    pub meta: Option<&'m str>,
    /// Modern `resultType` (`complete`, `input_required`, `task`).
    pub result_type: &'static str,
}

impl Close<'_> {
    pub fn complete(after_members: bool) -> Self {
        Self {
            after_members,
            result_type: "complete",
            ..Self::default()
        }
    }
}

/// Finishes a result object the caller opened with `{` and filled with
/// members: adds the era's members and the `_meta` object, then `}`.
pub(crate) fn close_object(out: &mut Vec<u8>, era: Era, c: Close<'_>) {
    let mut sep = c.after_members;
    let mut member = |out: &mut Vec<u8>, text: &[u8]| {
        if sep {
            out.push(b',');
        }
        out.extend_from_slice(text);
        sep = true;
    };
    match era {
        Era::Legacy => {
            if let Some(m) = c.meta {
                member(out, b"\"_meta\":{");
                out.extend_from_slice(m.as_bytes());
                out.push(b'}');
            }
        }
        Era::Modern(_) => {
            if let Some(ttl) = c.cache_ttl_ms {
                member(out, b"\"ttlMs\":");
                json::write_u64(out, ttl);
                out.extend_from_slice(b",\"cacheScope\":\"public\"");
            }
            member(out, b"\"resultType\":\"");
            out.extend_from_slice(c.result_type.as_bytes());
            out.extend_from_slice(b"\",\"_meta\":{");
            out.extend_from_slice(SERVER_INFO_MEMBER.as_bytes());
            if let Some(m) = c.meta.filter(|m| !m.is_empty()) {
                out.push(b',');
                out.extend_from_slice(m.as_bytes());
            }
            out.push(b'}');
        }
    }
    out.push(b'}');
}

/// Closes a result object that has members and no `_meta` of its own.
pub(crate) fn close_result(out: &mut Vec<u8>, era: Era) {
    close_object(out, era, Close::complete(true));
}

/// A whole response carrying `r` (cacheable for `cache_ttl_ms` when given).
pub(crate) fn json_result(
    out: &mut Vec<u8>,
    id: &Id<'_>,
    r: &JsonResult,
    era: Era,
    cache_ttl_ms: Option<u64>,
) {
    jsonrpc::begin_result(out, id);
    out.push(b'{');
    out.extend_from_slice(r.members.as_bytes());
    close_object(
        out,
        era,
        Close {
            after_members: !r.members.is_empty(),
            cache_ttl_ms,
            meta: r.meta.as_deref(),
            result_type: "complete",
        },
    );
    jsonrpc::end_response(out);
}

/// `{}` in either era (the modern one still carries its members).
pub(crate) fn empty_result(out: &mut Vec<u8>, id: &Id<'_>, era: Era) {
    jsonrpc::begin_result(out, id);
    out.push(b'{');
    close_object(out, era, Close::complete(false));
    jsonrpc::end_response(out);
}

/// Writes `e` as the error response to `id`; returns its code.
pub(crate) fn rpc_error(out: &mut Vec<u8>, id: &Id<'_>, e: &RpcError) -> i32 {
    jsonrpc::write_error_with_data(
        out,
        id,
        e.code,
        &e.message,
        e.data.as_deref().map(str::as_bytes),
    );
    e.code
}

/// Writes an error response without data; returns its code.
pub(crate) fn error(out: &mut Vec<u8>, id: &Id<'_>, code: i32, message: &str) -> i32 {
    jsonrpc::write_error(out, id, code, message);
    code
}

/// -32022 with `data: {supported, requested}`.
pub(crate) fn unsupported_version(out: &mut Vec<u8>, id: &Id<'_>, requested: &str) -> i32 {
    let mut data = Vec::with_capacity(128);
    data.extend_from_slice(b"{\"supported\":");
    data.extend_from_slice(mcp::ALL_VERSIONS_JSON.as_bytes());
    data.extend_from_slice(b",\"requested\":");
    json::write_str(&mut data, requested);
    data.push(b'}');
    jsonrpc::write_error_with_data(
        out,
        id,
        code::UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        Some(&data),
    );
    code::UNSUPPORTED_PROTOCOL_VERSION
}

/// The documented answer to a request over its principal's rate limit.
pub(crate) fn rate_limited(out: &mut Vec<u8>, id: &Id<'_>, retry_after: Duration) -> i32 {
    let ms = retry_after.as_millis().max(1) as i64;
    let mut data = Vec::with_capacity(32);
    data.extend_from_slice(b"{\"retryAfterMs\":");
    json::write_i64(&mut data, ms);
    data.push(b'}');
    jsonrpc::write_error_with_data(
        out,
        id,
        jsonrpc::RATE_LIMITED,
        "Rate limit exceeded: retry later",
        Some(&data),
    );
    jsonrpc::RATE_LIMITED
}

/// The client learns only that an internal error occurred; the panic message
/// went to the log through the panic hook.
pub(crate) fn handler_failed(out: &mut Vec<u8>, id: &Id<'_>) -> i32 {
    error(
        out,
        id,
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the handler failed unexpectedly",
    )
}

/// The "resource not found" error of the request's era (-32002 legacy,
/// -32602 modern, SEP-2164), naming the URI in `data`.
pub(crate) fn resource_not_found(era: Era, uri: &str) -> RpcError {
    let code = if era.is_modern() {
        jsonrpc::INVALID_PARAMS
    } else {
        code::RESOURCE_NOT_FOUND
    };
    RpcError::new(code, "Resource not found").with_data(uri_data(uri))
}

/// `{"uri": uri}` as JSON text.
pub(crate) fn uri_data(uri: &str) -> String {
    let mut data = Vec::with_capacity(16 + uri.len());
    data.extend_from_slice(b"{\"uri\":");
    json::write_str(&mut data, uri);
    data.push(b'}');
    String::from_utf8(data).expect("JSON is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const MODERN: Era = Era::Modern("2026-07-28");

    fn encode(r: &JsonResult, era: Era, ttl: Option<u64>) -> Value {
        let mut out = Vec::new();
        json_result(&mut out, &Id::Encoded(b"1"), r, era, ttl);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_meta_inside_content_does_not_replace_the_results_own() {
        // The defect this module exists to prevent: a `_meta` on a content
        // item (here a prompt message) once suppressed the server identity.
        let r = JsonResult::new(
            r#""messages":[{"role":"user","content":{"type":"text","text":"hi","_meta":{"x":1}}}]"#
                .into(),
        );
        let v = encode(&r, MODERN, None);
        let result = &v["result"];
        assert_eq!(result["messages"][0]["content"]["_meta"]["x"], 1);
        assert_eq!(
            result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "tessera"
        );
        assert_eq!(result["resultType"], "complete");
        // A `ttlMs` inside content does not suppress the result's either.
        let r = JsonResult::new(r#""contents":[{"uri":"a","text":"\"ttlMs\"","ttlMs":5}]"#.into());
        let v = encode(&r, MODERN, Some(60_000));
        assert_eq!(v["result"]["ttlMs"], 60_000);
        assert_eq!(v["result"]["cacheScope"], "public");
    }

    #[test]
    fn handler_meta_joins_the_server_identity_in_the_modern_era() {
        let r = JsonResult {
            members: r#""contents":[]"#.into(),
            meta: Some(r#""trace":"t1""#.into()),
        };
        let v = encode(&r, MODERN, None);
        assert_eq!(v["result"]["_meta"]["trace"], "t1");
        assert!(v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"].is_object());
        let legacy = encode(&r, Era::Legacy, Some(1));
        assert_eq!(
            legacy["result"]["_meta"],
            serde_json::json!({"trace": "t1"})
        );
        assert!(legacy["result"].get("resultType").is_none());
        assert!(legacy["result"].get("ttlMs").is_none());
    }

    #[test]
    fn empty_results_stay_valid_in_both_eras() {
        for era in [Era::Legacy, MODERN] {
            let mut out = Vec::new();
            empty_result(&mut out, &Id::Encoded(b"7"), era);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(v["result"].is_object(), "{v}");
        }
        let r = JsonResult::default();
        assert_eq!(
            encode(&r, Era::Legacy, None)["result"],
            serde_json::json!({})
        );
        assert_eq!(encode(&r, MODERN, None)["result"]["resultType"], "complete");
    }
}
