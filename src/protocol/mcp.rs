//! MCP (Model Context Protocol) constants for the 2025-11-25 era: protocol
//! versions, method names, and the server's identity.

/// Protocol revisions this server speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The revision offered when the client asks for one we do not speak.
pub const LATEST_VERSION: &str = "2025-11-25";

pub const SERVER_NAME: &str = "tessera";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version negotiation (lifecycle §Version Negotiation): answer with the
/// client's version when supported, otherwise with the latest we support and
/// let the client decide whether to disconnect.
pub fn negotiate(requested: &str) -> &'static str {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| *v == requested)
        .unwrap_or(LATEST_VERSION)
}

pub mod method {
    pub const INITIALIZE: &str = "initialize";
    pub const PING: &str = "ping";
    pub const TOOLS_LIST: &str = "tools/list";
    pub const TOOLS_CALL: &str = "tools/call";
    pub const INITIALIZED: &str = "notifications/initialized";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_known_versions_and_falls_back_to_latest() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(negotiate(v), *v);
        }
        assert_eq!(negotiate("1999-01-01"), LATEST_VERSION);
        assert_eq!(negotiate(""), LATEST_VERSION);
    }
}
