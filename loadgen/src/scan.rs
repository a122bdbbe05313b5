//! Reading just enough of a response line to check it: its id and whether it
//! is an error. A fast path recognises the shape tessera writes
//! (`{"jsonrpc":"2.0","id":N,"result"|"error"...`) without parsing; anything
//! else goes through a full JSON parse, so other servers are checked too.

use memchr::memmem::Finder;
use simd_json::prelude::*;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A successful result for request `id`.
    Ok(u64),
    /// A JSON-RPC error response for request `id`.
    RpcError(u64),
    /// A tool result with `isError: true` for request `id`.
    ToolError(u64),
    /// A message that answers nothing we sent (a notification, a server
    /// request, a response with a non-numeric id).
    Unrelated,
    /// Not valid JSON-RPC at all.
    Garbage,
}

pub struct Scanner {
    is_error: Finder<'static>,
}

const PREFIX: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

impl Default for Scanner {
    fn default() -> Self {
        Self {
            is_error: Finder::new(br#""isError":true"#),
        }
    }
}

impl Scanner {
    pub fn scan(&self, line: &[u8]) -> Verdict {
        if let Some(rest) = line.strip_prefix(PREFIX) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && digits < 20 {
                let id = rest[..digits]
                    .iter()
                    .fold(0u64, |a, &d| a * 10 + (d - b'0') as u64);
                let after = &rest[digits..];
                if after.starts_with(br#","result":"#) {
                    return if self.is_error.find(after).is_some() {
                        Verdict::ToolError(id)
                    } else {
                        Verdict::Ok(id)
                    };
                }
                if after.starts_with(br#","error":"#) {
                    return Verdict::RpcError(id);
                }
            }
        }
        Self::slow(line)
    }

    fn slow(line: &[u8]) -> Verdict {
        let mut copy = line.to_vec();
        let Ok(v) = simd_json::to_borrowed_value(&mut copy) else {
            return Verdict::Garbage;
        };
        if v.get_str("jsonrpc") != Some("2.0") {
            return Verdict::Garbage;
        }
        if v.contains_key("method") {
            return Verdict::Unrelated;
        }
        let Some(id) = v.get("id").and_then(|i| i.as_u64()) else {
            // An error the server could not tie to a request means it could
            // not read what we sent.
            return if v.contains_key("error") {
                Verdict::Garbage
            } else {
                Verdict::Unrelated
            };
        };
        if v.contains_key("error") {
            return Verdict::RpcError(id);
        }
        match v.get("result") {
            Some(r) if r.get_bool("isError") == Some(true) => Verdict::ToolError(id),
            Some(_) => Verdict::Ok(id),
            None => Verdict::Garbage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_slow_paths_agree() {
        let s = Scanner::default();
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#),
            Verdict::Ok(42)
        );
        assert_eq!(
            s.scan(br#"{"id":42,"jsonrpc":"2.0","result":{"content":[]}}"#),
            Verdict::Ok(42)
        );
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#),
            Verdict::ToolError(7)
        );
        assert_eq!(
            s.scan(br#"{"result":{"isError":true,"content":[]},"jsonrpc":"2.0","id":7}"#),
            Verdict::ToolError(7)
        );
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}"#),
            Verdict::RpcError(3)
        );
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#),
            Verdict::Unrelated
        );
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Verdict::Unrelated
        );
        assert_eq!(s.scan(b"nonsense"), Verdict::Garbage);
        assert_eq!(
            s.scan(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#),
            Verdict::Garbage
        );
    }
}
