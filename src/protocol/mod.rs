//! Wire formats, without I/O: JSON-RPC 2.0 envelopes, MCP constants and
//! method names, and the JSON parser that turns one message into a borrowed
//! tape (a scalar pass for small messages, simd-json in place for the
//! rest). Imports nothing of the rest of the crate.

pub(crate) mod json;
pub(crate) mod jsonrpc;
pub(crate) mod mcp;
pub(crate) mod method;
pub(crate) mod small;

use simd_json::tape::{Tape, Value as TapeValue};
use simd_json::Buffers;

/// Bytes of slack the parser may read past the end of a message. Callers keep
/// this much addressable (not necessarily zeroed) memory after each message so
/// parsing needs no copy; in a read buffer holding several messages back to
/// back, the next message serves as the previous one's padding.
pub const PARSE_PADDING: usize = simd_json::INPUT_PADDING;

/// Reusable parser state. One per shard: its scratch buffers and tape keep
/// their allocations between messages, so steady-state parsing allocates
/// nothing.
pub struct Parser {
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Self {
            buffers: Buffers::new(64 * 1024),
            tape: Tape(Vec::with_capacity(256)),
        }
    }

    /// Parses `buf[..len]` and hands the root value to `f`: by the scalar
    /// fast path ([`small`]) when the message is in its subset, otherwise
    /// by simd-json in place (strings are unescaped inside `buf`). `buf`
    /// must extend at least [`PARSE_PADDING`] bytes past `len`.
    pub fn parse<R>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        f: impl FnOnce(Result<TapeValue<'_, '_>, simd_json::Error>) -> R,
    ) -> R {
        debug_assert!(buf.len() >= len + PARSE_PADDING);
        let spare = std::mem::replace(&mut self.tape, Tape(Vec::new()));
        let mut fast: Tape<'_> = spare.reset();
        if small::fill_tape(&buf[..len], &mut fast.0) {
            let r = f(Ok(fast.as_value()));
            self.tape = fast.reset();
            return r;
        }
        let mut tape: Tape<'_> = fast.reset();
        let r = match simd_json::fill_tape_padded(buf, len, &mut self.buffers, &mut tape) {
            Ok(()) => f(Ok(tape.as_value())),
            Err(e) => f(Err(e)),
        };
        self.tape = tape.reset();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn padded(s: &[u8]) -> (Vec<u8>, usize) {
        let mut v = s.to_vec();
        let n = v.len();
        v.resize(n + PARSE_PADDING, b' ');
        (v, n)
    }

    #[test]
    fn parses_in_place_and_reuses_state() {
        let mut p = Parser::new();
        for _ in 0..3 {
            let (mut buf, n) = padded(br#"{"a":"x\ny","b":[1,2]}"#);
            let s = p.parse(&mut buf, n, |v| {
                v.unwrap()
                    .get("a")
                    .and_then(|a| a.into_string())
                    .unwrap()
                    .to_owned()
            });
            assert_eq!(s, "x\ny");
        }
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let mut p = Parser::new();
        let deep = "[".repeat(100_000);
        let bad: [&[u8]; 5] = [b"{", b"\xff\xfe", b"{\"a\":1,}", deep.as_bytes(), b"nul"];
        for input in bad {
            let (mut buf, n) = padded(input);
            assert!(p.parse(&mut buf, n, |v| v.is_err()), "{:?}", input.get(..8));
        }
        let (mut buf, n) = padded(b"123456789012345678901234567890");
        assert!(p.parse(&mut buf, n, |v| v.unwrap().is_number()));
    }
}
