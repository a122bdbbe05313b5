//! JSON output for the response path.
//!
//! Responses are appended straight into a connection's output buffer: no
//! intermediate value tree, no allocation per message. Only the few shapes the
//! server emits need writing, so a small hand-written encoder beats a generic
//! serializer here; arbitrary client-supplied values (tool arguments stored by
//! `kv_set`, request ids) go through simd-json's own writer.

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

/// Bytes that must be escaped inside a JSON string: `"`, `\` and controls.
const fn escape_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}
static NEEDS_ESCAPE: [bool; 256] = escape_table();

/// Appends `s` as a quoted, escaped JSON string.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// Appends the escaped body of `s` without quotes.
pub fn write_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[inline]
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[inline]
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends a finite float; JSON has no NaN or infinity, so those become null.
#[inline]
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends any parsed JSON value in compact form.
pub fn write_value(out: &mut Vec<u8>, v: TapeValue<'_, '_>) {
    // Writing into a Vec cannot fail.
    let _ = v.write(out);
}

/// Returns `v` encoded as compact JSON text.
pub fn encode_value(v: TapeValue<'_, '_>) -> String {
    v.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_quotes_and_backslashes() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\u0001\xc3\xa9\"");
    }

    #[test]
    fn non_finite_floats_are_null() {
        let mut out = Vec::new();
        write_f64(&mut out, f64::NAN);
        out.push(b',');
        write_f64(&mut out, 1.5);
        assert_eq!(out, b"null,1.5");
    }
}
