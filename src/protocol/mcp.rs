//! MCP (Model Context Protocol) constants for both spec eras: protocol
//! versions, method names, reserved `_meta` keys, error codes, and the
//! server's identity.
//!
//! *Legacy* revisions (2025-11-25 and older) open with an `initialize`
//! handshake that fixes the version for the connection or HTTP session.
//! *Modern* revisions (2026-07-28) carry version, identity and capabilities in
//! every request's `_meta` and are served statelessly.

/// Legacy revisions, negotiated by `initialize`, oldest first.
pub const LEGACY_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The legacy revision offered when the client asks for one we do not speak.
pub const LATEST_LEGACY_VERSION: &str = "2025-11-25";

/// Modern revisions, declared per request in `_meta`.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

/// Every revision this server speaks, newest first, as `server/discover` and
/// `UnsupportedProtocolVersionError.data.supported` report them.
pub const ALL_VERSIONS_JSON: &str =
    r#"["2026-07-28","2025-11-25","2025-06-18","2025-03-26","2024-11-05"]"#;

/// `Implementation` for `serverInfo`.
pub const SERVER_INFO_JSON: &str = concat!(
    r#"{"name":"tessera","title":"tessera MCP server","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}"#
);

pub const INSTRUCTIONS: &str = "tessera serves a sharded key-value store (tools kv_set, kv_get, kv_delete; resources kv://{key}, subscribable) and test tools echo, add and sleep.";

/// Version negotiation (lifecycle §Version Negotiation): answer with the
/// client's version when supported, otherwise with the latest we support and
/// let the client decide whether to disconnect.
pub fn negotiate(requested: &str) -> &'static str {
    LEGACY_VERSIONS
        .iter()
        .copied()
        .find(|v| *v == requested)
        .unwrap_or(LATEST_LEGACY_VERSION)
}

pub fn is_legacy_version(v: &str) -> bool {
    LEGACY_VERSIONS.contains(&v)
}

/// The modern version named `v`, as a static string.
pub fn modern_version(v: &str) -> Option<&'static str> {
    MODERN_VERSIONS.iter().copied().find(|m| *m == v)
}

pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";
    pub const PROGRESS_TOKEN: &str = "progressToken";
    /// W3C trace context (SEP-414): root keys of `params._meta`.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// tessera: the bearer token of a TCP or stdio request, valued like the
    /// HTTP header (`"Bearer <token>"`).
    pub const AUTHORIZATION: &str = "authorization";
}

/// MCP error codes (beyond JSON-RPC's own).
pub mod code {
    /// Legacy (2025-11-25 and older) resource not found.
    pub const RESOURCE_NOT_FOUND: i32 = -32002;
    /// Modern: HTTP headers disagree with the body, or are missing.
    pub const HEADER_MISMATCH: i32 = -32020;
    /// Modern: the request needs a client capability it did not declare.
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i32 = -32021;
    /// Modern: the requested protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i32 = -32022;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_known_versions_and_falls_back_to_latest() {
        for v in LEGACY_VERSIONS {
            assert_eq!(negotiate(v), *v);
        }
        assert_eq!(negotiate("1999-01-01"), LATEST_LEGACY_VERSION);
        assert_eq!(negotiate("2026-07-28"), LATEST_LEGACY_VERSION);
        assert_eq!(modern_version("2026-07-28"), Some("2026-07-28"));
        assert_eq!(modern_version("2025-11-25"), None);
    }

    #[test]
    fn version_list_names_every_version() {
        for v in LEGACY_VERSIONS.iter().chain(MODERN_VERSIONS) {
            assert!(ALL_VERSIONS_JSON.contains(v));
        }
        assert!(SERVER_INFO_JSON.contains(env!("CARGO_PKG_VERSION")));
    }
}
