//! JSON-RPC 2.0 envelope: classifying a parsed message and writing responses.
//!
//! The parser hands us a simd-json tape borrowed from the connection's read
//! buffer; classification walks the top-level object once and returns borrowed
//! views, so a well-formed request costs no allocation. Error responses carry
//! the request id when one could be read, `null` otherwise (JSON-RPC 2.0 §5).

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::json;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
// tessera's own codes sit outside the JSON-RPC reserved range
// (-32768..-32000): MCP 2026-07-28 reserves -32020..-32099 for the spec and
// asks implementations not to use the legacy -32000..-32019 sub-range.

/// tessera: a bounded queue on the request's path was full (today: the
/// cross-core mesh). Nothing was executed; the client may retry.
pub const SERVER_OVERLOADED: i32 = -31010;
/// tessera: a cross-core hop did not complete within `mesh_timeout_ms`. The
/// owning shard may or may not have applied the operation.
pub const SHARD_TIMEOUT: i32 = -31011;
/// The principal (connection, session or peer address) is over its rate
/// limit (`--rate-limit-per-sec`); `data.retryAfterMs` says when to retry.
/// Over HTTP the status is 429 with `Retry-After`.
pub const RATE_LIMITED: i32 = -31012;
/// The principal's roles do not grant the tool, prompt, resource or
/// template the request names (`--auth` with `[[role]]`s).
pub const FORBIDDEN: i32 = -31013;
/// `--auth` is on and the request (TCP, stdio) carries no valid token in
/// `params._meta.authorization`, or one of a principal other than the one
/// the connection authenticated as.
pub const UNAUTHORIZED: i32 = -31014;

/// A request id exactly as the envelope carried it: MCP allows strings and
/// numbers and forbids null.
#[derive(Clone, Copy, Debug)]
pub enum Id<'a> {
    /// No usable id (error responses to unparseable messages).
    Null,
    Parsed(TapeValue<'a, 'a>),
    /// An id already encoded as JSON, kept by handlers that answer later.
    Encoded(&'a [u8]),
}

impl Id<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Id::Null => out.extend_from_slice(b"null"),
            Id::Parsed(v) => json::write_value(out, *v),
            Id::Encoded(b) => out.extend_from_slice(b),
        }
    }

    /// Encodes the id for an answer written after the read buffer is gone.
    pub fn to_owned_bytes(self) -> Box<[u8]> {
        let mut v = Vec::with_capacity(16);
        self.write(&mut v);
        v.into_boxed_slice()
    }
}

/// A well-formed JSON-RPC message, borrowed from the read buffer.
#[derive(Debug)]
pub enum Message<'a> {
    Request {
        id: Id<'a>,
        method: &'a str,
        params: Option<TapeValue<'a, 'a>>,
    },
    Notification {
        method: &'a str,
        params: Option<TapeValue<'a, 'a>>,
    },
    /// A reply from the client to a server-initiated request.
    Response {
        id: Id<'a>,
        result: Option<TapeValue<'a, 'a>>,
        error: Option<TapeValue<'a, 'a>>,
    },
}

/// Why a parsed JSON value is not an acceptable JSON-RPC message.
#[derive(Debug)]
pub struct Invalid<'a> {
    pub id: Id<'a>,
    pub code: i32,
    pub message: &'static str,
}

fn invalid<'a>(id: Id<'a>, code: i32, message: &'static str) -> Invalid<'a> {
    Invalid { id, code, message }
}

fn is_valid_id(v: &TapeValue<'_, '_>) -> bool {
    v.is_str() || v.is_number()
}

/// Classifies one parsed message. Envelope members may appear in any order;
/// a repeated envelope member is rejected because two readers of the same
/// bytes could otherwise disagree about what was asked.
pub fn classify<'a>(root: TapeValue<'a, 'a>) -> Result<Message<'a>, Invalid<'a>> {
    let Some(obj) = root.as_object() else {
        let message = if root.is_array() {
            "batch requests are not supported (JSON-RPC batching was removed in MCP 2025-06-18)"
        } else {
            "a JSON-RPC message must be an object"
        };
        return Err(invalid(Id::Null, INVALID_REQUEST, message));
    };

    let mut jsonrpc: Option<TapeValue<'a, 'a>> = None;
    let mut id: Option<TapeValue<'a, 'a>> = None;
    let mut method: Option<TapeValue<'a, 'a>> = None;
    let mut params: Option<TapeValue<'a, 'a>> = None;
    let mut result: Option<TapeValue<'a, 'a>> = None;
    let mut error: Option<TapeValue<'a, 'a>> = None;
    let mut duplicate = false;
    for (key, value) in obj.iter() {
        let slot = match key {
            "jsonrpc" => &mut jsonrpc,
            "id" => &mut id,
            "method" => &mut method,
            "params" => &mut params,
            "result" => &mut result,
            "error" => &mut error,
            _ => continue,
        };
        duplicate |= slot.is_some();
        *slot = Some(value);
    }

    // Report errors against the id whenever the id itself is usable.
    let err_id = match &id {
        Some(v) if is_valid_id(v) => Id::Parsed(*v),
        _ => Id::Null,
    };
    if duplicate {
        return Err(invalid(
            err_id,
            INVALID_REQUEST,
            "duplicate JSON-RPC envelope member",
        ));
    }
    match jsonrpc.and_then(|v| v.into_string()) {
        Some("2.0") => {}
        Some(_) => {
            return Err(invalid(
                err_id,
                INVALID_REQUEST,
                "unsupported JSON-RPC version: \"jsonrpc\" must be \"2.0\"",
            ))
        }
        None => {
            return Err(invalid(
                err_id,
                INVALID_REQUEST,
                "missing \"jsonrpc\": \"2.0\"",
            ))
        }
    }
    if let Some(v) = &id {
        if !is_valid_id(v) {
            let message = if v.is_null() {
                "request id must not be null"
            } else {
                "request id must be a string or a number"
            };
            return Err(invalid(Id::Null, INVALID_REQUEST, message));
        }
    }

    if let Some(m) = method {
        if result.is_some() || error.is_some() {
            return Err(invalid(
                err_id,
                INVALID_REQUEST,
                "a message cannot carry both \"method\" and \"result\"/\"error\"",
            ));
        }
        let Some(method) = m.into_string() else {
            return Err(invalid(
                err_id,
                INVALID_REQUEST,
                "\"method\" must be a string",
            ));
        };
        if let Some(p) = &params {
            if !p.is_object() && !p.is_array() {
                return Err(invalid(
                    err_id,
                    INVALID_REQUEST,
                    "\"params\" must be an object",
                ));
            }
        }
        return Ok(match id {
            Some(id) => Message::Request {
                id: Id::Parsed(id),
                method,
                params,
            },
            None => Message::Notification { method, params },
        });
    }

    match (id, result.is_some(), error.is_some()) {
        (Some(id), true, false) | (Some(id), false, true) => Ok(Message::Response {
            id: Id::Parsed(id),
            result,
            error,
        }),
        (_, true, true) => Err(invalid(
            err_id,
            INVALID_REQUEST,
            "a response cannot carry both \"result\" and \"error\"",
        )),
        (None, true, _) | (None, _, true) => Err(invalid(
            Id::Null,
            INVALID_REQUEST,
            "a response must carry the id of the request it answers",
        )),
        _ => Err(invalid(err_id, INVALID_REQUEST, "missing \"method\"")),
    }
}

/// Starts `{"jsonrpc":"2.0","id":<id>,"result":`; the caller writes the
/// result value and then calls [`end_response`].
#[inline]
pub fn begin_result(out: &mut Vec<u8>, id: &Id<'_>) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    id.write(out);
    out.extend_from_slice(b",\"result\":");
}

/// Closes a response opened by [`begin_result`] and ends the NDJSON line.
#[inline]
pub fn end_response(out: &mut Vec<u8>) {
    out.extend_from_slice(b"}\n");
}

/// Writes one complete error response line.
pub fn write_error(out: &mut Vec<u8>, id: &Id<'_>, code: i32, message: &str) {
    write_error_with_data(out, id, code, message, None);
}

/// Writes one complete error response line with a raw JSON `data` member.
pub fn write_error_with_data(
    out: &mut Vec<u8>,
    id: &Id<'_>,
    code: i32,
    message: &str,
    data: Option<&[u8]>,
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    id.write(out);
    out.extend_from_slice(b",\"error\":{\"code\":");
    json::write_i64(out, code as i64);
    out.extend_from_slice(b",\"message\":");
    json::write_str(out, message);
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
    }
    out.extend_from_slice(b"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_str(s: &str) -> Result<String, (i32, String)> {
        let mut bytes = s.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("valid json");
        let r = classify(tape.as_value());
        match r {
            Ok(Message::Request { method, .. }) => Ok(format!("request {method}")),
            Ok(Message::Notification { method, .. }) => Ok(format!("notification {method}")),
            Ok(Message::Response { error, .. }) => Ok(format!("response {}", error.is_some())),
            Err(e) => {
                let mut out = Vec::new();
                e.id.write(&mut out);
                Err((e.code, String::from_utf8(out).unwrap()))
            }
        }
    }

    #[test]
    fn classifies_envelopes() {
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ok("request ping".into())
        );
        assert_eq!(
            classify_str(r#"{"method":"x","jsonrpc":"2.0"}"#),
            Ok("notification x".into())
        );
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok("response false".into())
        );
        assert_eq!(
            classify_str(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            Err((INVALID_REQUEST, "null".into()))
        );
        assert_eq!(
            classify_str(r#"{"id":7,"method":"ping"}"#),
            Err((INVALID_REQUEST, "7".into()))
        );
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
            Err((INVALID_REQUEST, "null".into()))
        );
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":"x","method":5}"#),
            Err((INVALID_REQUEST, "\"x\"".into()))
        );
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#).map_err(|e| e.0),
            Err(INVALID_REQUEST)
        );
        assert_eq!(
            classify_str(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#),
            Err((INVALID_REQUEST, "1".into()))
        );
    }
}
