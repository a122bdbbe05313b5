//! The checks every HTTP request's head goes through before MCP sees it:
//! `Accept`, `Origin` and `Host` (DNS rebinding), and the 2026-07-28
//! agreement between `Mcp-Method`/`Mcp-Name`/`Mcp-Param-*` headers (plain or
//! `=?base64?...?=`) and the body. Input: `name: value` lines, a blank line,
//! then the body. Oracle: no panic; a loopback request is never refused by
//! the origin check (asserted inside).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(2..).unwrap_or_default();
    let headers: Vec<(String, String)> = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    tessera::internals::http_header_checks(&headers, body);
});
