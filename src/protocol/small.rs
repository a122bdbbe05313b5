//! A scalar JSON parser for the common small message, producing the same
//! tape simd-json would.
//!
//! simd-json's two stages (a SIMD pass marking structural bytes, then a pass
//! building the tape) pay a fixed cost per message that dominates for the
//! ~100-byte requests most clients send: in a profile of the TCP echo
//! (16 connections x 64 in flight) they were 26% of the server's CPU. One
//! scalar pass over such a message costs a fraction of that.
//!
//! The fast path accepts only a strict subset, and accepts it exactly as
//! simd-json would: an object at the root, strings without escapes,
//! integers of at most 18 digits (no `-0`), `true`/`false`/`null`, nesting
//! at most [`MAX_DEPTH`] deep, and at most [`SMALL_MAX_BYTES`]. Anything
//! else, valid or not, is declined before a byte of the input is touched,
//! and simd-json parses it; so every error a client sees is still
//! simd-json's. Equality with simd-json's tape is tested over generated and
//! fuzzed inputs (`fuzz/fuzz_targets/small_json.rs`).

use simd_json::tape::Node;
use simd_json::StaticNode;

/// Messages longer than this go straight to simd-json, which is faster
/// once its fixed cost is spread over enough bytes.
pub const SMALL_MAX_BYTES: usize = 1024;

/// Containers nested deeper than this are declined (simd-json's own limit
/// is far deeper; MCP envelopes rarely go past 4).
pub const MAX_DEPTH: usize = 32;

/// Integers with more digits than this are declined: 18 digits always fit
/// in an i64, so neither overflow nor simd-json's float fallback applies.
const MAX_INT_DIGITS: usize = 18;

/// Fills `tape` with the message `input` and returns true, or returns false
/// when the message is outside the fast path's subset. `tape` must be empty;
/// on false it holds a partial tape the caller discards.
pub fn fill_tape<'a>(input: &'a [u8], tape: &mut Vec<Node<'a>>) -> bool {
    debug_assert!(tape.is_empty());
    if input.len() > SMALL_MAX_BYTES {
        return false;
    }
    // Every node takes at least one byte of input, so this is the last
    // growth of the tape for this message.
    tape.reserve(input.len() + 1);
    scan(input, tape).is_some()
}

/// An open container: where its header sits on the tape, how many members
/// it has so far, and whether it is an object.
#[derive(Clone, Copy)]
struct Open {
    header: usize,
    len: usize,
    object: bool,
}

/// Where the scan is between tokens.
enum Next {
    /// A key (after `{` or a `,` in an object).
    Key,
    /// A value (after `:`, `[` or a `,` in an array).
    Value,
    /// A `,` or the close of the innermost container.
    Separator,
}

/// One pass over the message, iterative (no recursion per container).
/// `None` declines.
fn scan<'a>(input: &'a [u8], tape: &mut Vec<Node<'a>>) -> Option<()> {
    let byte = |i: usize| input.get(i).copied().unwrap_or(0);
    let mut stack = [Open {
        header: 0,
        len: 0,
        object: true,
    }; MAX_DEPTH];
    let mut depth = 0;
    let mut i = skip_ws(input, 0);
    if byte(i) != b'{' {
        return None;
    }
    let mut next = Next::Value;
    loop {
        match next {
            Next::Key => {
                if byte(i) != b'"' {
                    return None;
                }
                let (key, end) = string(input, i)?;
                tape.push(Node::String(key));
                i = skip_ws(input, end);
                if byte(i) != b':' {
                    return None;
                }
                i = skip_ws(input, i + 1);
                next = Next::Value;
            }
            Next::Value => {
                let b = byte(i);
                if b == b'{' || b == b'[' {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let object = b == b'{';
                    stack[depth] = Open {
                        header: tape.len(),
                        len: 0,
                        object,
                    };
                    depth += 1;
                    tape.push(if object {
                        Node::Object { len: 0, count: 0 }
                    } else {
                        Node::Array { len: 0, count: 0 }
                    });
                    i = skip_ws(input, i + 1);
                    let close = if object { b'}' } else { b']' };
                    next = if byte(i) == close {
                        Next::Separator
                    } else if object {
                        Next::Key
                    } else {
                        Next::Value
                    };
                    continue;
                }
                let (node, end) = match b {
                    b'"' => {
                        let (s, end) = string(input, i)?;
                        (Node::String(s), end)
                    }
                    b't' => literal(input, i, b"true", StaticNode::Bool(true))?,
                    b'f' => literal(input, i, b"false", StaticNode::Bool(false))?,
                    b'n' => literal(input, i, b"null", StaticNode::Null)?,
                    b'-' | b'0'..=b'9' => integer(input, i)?,
                    _ => return None,
                };
                tape.push(node);
                stack[depth - 1].len += 1;
                i = skip_ws(input, end);
                next = Next::Separator;
            }
            Next::Separator => {
                let open = stack[depth - 1];
                match byte(i) {
                    b',' => {
                        i = skip_ws(input, i + 1);
                        next = if open.object { Next::Key } else { Next::Value };
                    }
                    b'}' | b']' if (byte(i) == b'}') == open.object => {
                        let count = tape.len() - open.header - 1;
                        let len = open.len;
                        tape[open.header] = if open.object {
                            Node::Object { len, count }
                        } else {
                            Node::Array { len, count }
                        };
                        depth -= 1;
                        i = skip_ws(input, i + 1);
                        if depth == 0 {
                            return (i == input.len()).then_some(());
                        }
                        stack[depth - 1].len += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// The index of the first byte at or after `i` that is not whitespace.
#[inline(always)]
fn skip_ws(input: &[u8], mut i: usize) -> usize {
    // Most messages have no whitespace between tokens: one compare.
    while let Some(&b) = input.get(i) {
        if b > b' ' || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// What may follow a number or a literal inside a container.
fn ends_scalar(b: u8) -> bool {
    matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
}

/// The string whose opening quote is at `at`, and the index after its
/// closing quote. Declines escapes (simd-json unescapes in place; this path
/// never writes) and control bytes (an error, which simd-json reports).
#[inline(always)]
fn string(input: &[u8], at: usize) -> Option<(&str, usize)> {
    let from = at + 1;
    let mut ascii = true;
    let mut i = from;
    loop {
        i = next_special(input, i);
        match *input.get(i)? {
            b'"' => break,
            0x80.. => ascii = false,
            _ => return None,
        }
        i += 1;
    }
    let bytes = &input[from..i];
    let s = if ascii {
        // SAFETY: every byte is below 0x80, so the slice is ASCII.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).ok()?
    };
    Some((s, i + 1))
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `word` that is below `n` (n <= 0x80). A
/// byte above a flagged one may be flagged falsely (the subtraction's
/// borrow), so only the lowest flag is exact.
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

/// The index of the first byte at or after `i` that a string scan must look
/// at (a quote, a backslash, a control byte or a non-ASCII byte), or
/// `input.len()`. Eight bytes at a time: strings in requests are mostly
/// short and ASCII.
#[inline(always)]
fn next_special(input: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = input.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let flags = below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20)
            | (word & HIGHS);
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = input.get(i) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f | 0x80..) {
            return i;
        }
        i += 1;
    }
    i
}

/// The integer starting at `at` (at most [`MAX_INT_DIGITS`] digits, no
/// fraction or exponent) as simd-json stores it, U64 when positive and I64
/// when negative, and the index after it. `-0` is declined (simd-json has
/// its own reading of it).
fn integer(input: &[u8], at: usize) -> Option<(Node<'static>, usize)> {
    let negative = input[at] == b'-';
    let from = at + usize::from(negative);
    let mut i = from;
    let mut n: u64 = 0;
    while let Some(&d @ b'0'..=b'9') = input.get(i) {
        n = n * 10 + u64::from(d - b'0');
        i += 1;
        if i - from > MAX_INT_DIGITS {
            return None;
        }
    }
    let digits = i - from;
    if digits == 0 || (input[from] == b'0' && (digits > 1 || negative)) {
        return None;
    }
    if !ends_scalar(*input.get(i)?) {
        return None;
    }
    let node = if negative {
        // At most 18 digits: n < 10^18 < i64::MAX.
        StaticNode::I64(-(n as i64))
    } else {
        StaticNode::U64(n)
    };
    Some((Node::Static(node), i))
}

/// `word` (true, false or null) at `at`, followed by what may end a scalar.
fn literal(
    input: &[u8],
    at: usize,
    word: &[u8],
    node: StaticNode,
) -> Option<(Node<'static>, usize)> {
    let end = at + word.len();
    if input.get(at..end)? != word || !ends_scalar(*input.get(end)?) {
        return None;
    }
    Some((Node::Static(node), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// simd-json's tape of `input`, or None when simd-json refuses it.
    fn simd(input: &[u8]) -> Option<Vec<Node<'static>>> {
        let mut copy = input.to_vec();
        let tape = simd_json::to_tape(&mut copy).ok()?;
        // Strings become owned-and-leaked so the tape outlives `copy`; the
        // test process is short-lived.
        Some(
            tape.0
                .into_iter()
                .map(|n| match n {
                    Node::String(s) => Node::String(Box::leak(s.to_owned().into_boxed_str())),
                    Node::Object { len, count } => Node::Object { len, count },
                    Node::Array { len, count } => Node::Array { len, count },
                    Node::Static(s) => Node::Static(s),
                })
                .collect(),
        )
    }

    /// Checks one input; returns whether the fast path took it.
    fn agrees(input: &[u8]) -> bool {
        let mut tape = Vec::new();
        if !fill_tape(input, &mut tape) {
            return false;
        }
        let expected = simd(input).unwrap_or_else(|| {
            panic!(
                "fast path accepted what simd-json refuses: {:?}",
                String::from_utf8_lossy(input)
            )
        });
        // Debug, not ==: StaticNode's equality is numeric (U64(1) == I64(1)),
        // and the variant is part of what must agree.
        assert_eq!(
            format!("{tape:?}"),
            format!("{expected:?}"),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        true
    }

    #[test]
    fn takes_the_common_requests() {
        let common: [&[u8]; 6] = [
            br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#,
            br#"{"jsonrpc":"2.0","id":"a-1","method":"ping"}"#,
            br#" { "jsonrpc" : "2.0" , "id" : -7 , "method" : "x" , "params" : { "a" : [ 1 , [ ] , { } , true , false , null ] } } "#,
            b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\r\n",
            "{\"k\":\"h\u{e9}llo \u{1f600}\",\"dup\":1,\"dup\":2}".as_bytes(),
            br#"{"n":[0,1,-1,999999999999999999,-999999999999999999]}"#,
        ];
        for input in common {
            assert!(
                agrees(input),
                "declined {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let declined: [&[u8]; 17] = [
            br#"{"a":"x\ny"}"#,
            br#"{"a":1.5}"#,
            br#"{"a":1e3}"#,
            br#"{"a":-0}"#,
            br#"{"a":01}"#,
            br#"{"a":1234567890123456789}"#,
            br#"{"a":tru}"#,
            br#"{"a":truex}"#,
            br#"{"a":1,}"#,
            br#"{"a":1} x"#,
            br#"{"a":1"#,
            br#"[1,2]"#,
            br#""s""#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":-}",
            b"",
        ];
        for input in declined {
            assert!(!agrees(input), "took {:?}", String::from_utf8_lossy(input));
        }
        let deep = format!("{}{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(!agrees(deep.as_bytes()));
        let shallow = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH - 1),
            "}".repeat(MAX_DEPTH - 1)
        );
        assert!(agrees(shallow.as_bytes()));
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(SMALL_MAX_BYTES));
        assert!(!agrees(long.as_bytes()));
    }

    /// Mutated requests, compared with simd-json: whatever the fast path
    /// takes, simd-json takes too, with the same tape.
    #[test]
    fn agrees_with_simd_json_on_mutated_input() {
        let seeds: [&[u8]; 3] = [
            br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello","n":[1,-2,true,null,{}]}}}"#,
            br#"{"a":[[],[{}],{"b":false}],"c":"d","e":-10}"#,
            "{\"\u{e9}\":\"\u{1f600}\",\"x\":0}".as_bytes(),
        ];
        let alphabet = b"{}[]:,\" \t\r\n-0123456789.eEtruefalsn\\x\x01\xc3\xa9\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut taken = 0;
        for round in 0..60_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next(3) {
                let at = next(input.len() + 1);
                let b = alphabet[next(alphabet.len())];
                match next(3) {
                    0 if at < input.len() => input[at] = b,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, b),
                }
            }
            taken += usize::from(agrees(&input));
        }
        // The mutations must leave enough inputs on the fast path for the
        // comparison to mean something.
        assert!(
            taken > 5_000,
            "only {taken} mutated inputs took the fast path"
        );
    }
}
