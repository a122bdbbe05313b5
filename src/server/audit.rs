//! The audit log's records (`--audit-log FILE`): one JSON line per request
//! (time, shard, principal, session, method, name, outcome, JSON-RPC error
//! code, latency_us), so an operator can answer "who called what, and was
//! it allowed". The outcome comes from the answer's error code as data, never
//! from re-reading the encoded response.
//!
//! Formatting lives here; where the lines go (a bounded per-shard buffer and
//! a writer thread that owns the file) is an adapter behind [`AuditSink`].

use crate::protocol::{json, jsonrpc};

/// Where a shard's audit lines go. Never blocks.
pub(crate) trait AuditSink {
    /// Appends one line; false if it was dropped at the sink's bound.
    fn record(&mut self, record: &AuditRecord<'_>) -> bool;
    /// Hands buffered lines on, if there is room; true when nothing is left.
    fn flush(&mut self) -> bool;
}

/// What one audit line says.
pub(crate) struct AuditRecord<'a> {
    pub principal: Option<&'a str>,
    pub session: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The JSON-RPC error code of the answer; `None`: it succeeded.
    pub error: Option<i32>,
    /// Refused before the request was read (HTTP 401).
    pub unauthorized: bool,
    pub latency_us: u64,
}

impl AuditRecord<'_> {
    /// "ok", or "denied" (-31013), "unauthorized" (-31014 or an HTTP 401),
    /// "error" (anything else).
    pub fn outcome(&self) -> &'static str {
        match (self.unauthorized, self.error) {
            (true, _) | (false, Some(jsonrpc::UNAUTHORIZED)) => "unauthorized",
            (false, None) => "ok",
            (false, Some(jsonrpc::FORBIDDEN)) => "denied",
            (false, Some(_)) => "error",
        }
    }
}

/// Formats lines; keeps the last timestamp so lines within one millisecond
/// share its text.
pub(crate) struct LineWriter {
    shard: usize,
    clock: (u64, String),
}

impl LineWriter {
    pub fn new(shard: usize) -> Self {
        Self {
            shard,
            clock: (u64::MAX, String::new()),
        }
    }

    /// Appends `r` as one JSON line to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>, r: &AuditRecord<'_>) {
        let now_ms = super::clock::now_ms();
        if self.clock.0 != now_ms {
            self.clock = (now_ms, super::clock::iso8601(now_ms));
        }
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(self.clock.1.as_bytes());
        out.extend_from_slice(b"\",\"shard\":");
        json::write_u64(out, self.shard as u64);
        for (key, value) in [
            ("principal", r.principal),
            ("session", r.session),
            ("method", r.method),
            ("name", r.name),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Some(v) => json::write_str(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"outcome\":");
        json::write_str(out, r.outcome());
        if let Some(code) = r.error {
            out.extend_from_slice(b",\"code\":");
            json::write_i64(out, i64::from(code));
        }
        out.extend_from_slice(b",\"latency_us\":");
        json::write_u64(out, r.latency_us);
        out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(error: Option<i32>, unauthorized: bool) -> AuditRecord<'static> {
        AuditRecord {
            principal: Some("alice"),
            session: None,
            method: Some("tools/call"),
            name: Some("echo"),
            error,
            unauthorized,
            latency_us: 12,
        }
    }

    #[test]
    fn outcomes_come_from_the_code() {
        assert_eq!(rec(None, false).outcome(), "ok");
        assert_eq!(rec(Some(-31013), false).outcome(), "denied");
        assert_eq!(rec(Some(-31014), false).outcome(), "unauthorized");
        assert_eq!(rec(None, true).outcome(), "unauthorized");
        assert_eq!(rec(Some(-32601), false).outcome(), "error");
    }

    #[test]
    fn lines_are_json() {
        let mut out = Vec::new();
        let mut w = LineWriter::new(3);
        w.write(&mut out, &rec(Some(-32602), false));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["shard"], 3);
        assert_eq!(v["principal"], "alice");
        assert_eq!(v["session"], serde_json::Value::Null);
        assert_eq!(v["outcome"], "error");
        assert_eq!(v["code"], -32602);
        assert_eq!(v["latency_us"], 12);
        assert!(out.ends_with(b"}\n"));
    }
}
