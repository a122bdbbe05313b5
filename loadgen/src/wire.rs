//! How requests travel: newline-delimited JSON-RPC (TCP, stdio) or HTTP/1.1
//! POSTs (Streamable HTTP, legacy era with a session or modern stateless
//! era). Encodes requests into a write buffer and cuts the read buffer into
//! JSON-RPC messages, so the connection driver is the same for every
//! transport.

use memchr::memmem;

use crate::workload::{write_pieces, Shape};

pub const LEGACY_VERSION: &str = "2025-11-25";
pub const MODERN_VERSION: &str = "2026-07-28";

/// The framing of one connection.
#[derive(Debug, Clone)]
pub enum Wire {
    Ndjson,
    Http(HttpWire),
}

#[derive(Debug, Clone)]
pub struct HttpWire {
    pub modern: bool,
    pub host: String,
    pub path: String,
    /// The legacy session, once `initialize` returned one (a stateless
    /// legacy server returns none).
    pub session: Option<String>,
}

/// One message cut from the read buffer.
pub enum Frame {
    /// A JSON-RPC message (the response, or whatever else the server sent).
    Json(Vec<u8>),
    /// An HTTP response without a JSON-RPC body (a 202 for a notification,
    /// or an error status with no JSON-RPC in it).
    Status(u16),
}

impl Wire {
    /// Appends request `id` of `shape` with `key` in its placeholders.
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        shape: &Shape,
        id: &[u8],
        key: &[u8],
    ) {
        match self {
            Wire::Ndjson => {
                out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
                out.extend_from_slice(id);
                write_pieces(out, &shape.params, key);
                out.extend_from_slice(b"}\n");
            }
            Wire::Http(h) => {
                scratch.clear();
                scratch.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
                scratch.extend_from_slice(id);
                let pieces = if h.modern {
                    &shape.params_modern
                } else {
                    &shape.params
                };
                write_pieces(scratch, pieces, key);
                scratch.push(b'}');
                h.head(
                    out,
                    &shape.method,
                    shape.mcp_name.as_deref(),
                    key,
                    scratch.len(),
                );
                out.extend_from_slice(scratch);
            }
        }
    }

    /// Appends a message given as whole JSON text (setup requests and
    /// notifications).
    pub fn encode_raw(&self, out: &mut Vec<u8>, method: &str, body: &str) {
        match self {
            Wire::Ndjson => {
                out.extend_from_slice(body.as_bytes());
                out.push(b'\n');
            }
            Wire::Http(h) => {
                h.head(out, method, None, b"", body.len());
                out.extend_from_slice(body.as_bytes());
            }
        }
    }

    /// Cuts the next complete message from `buf[*start..filled]`.
    pub fn next_frame(&mut self, buf: &[u8], start: &mut usize) -> Result<Option<Frame>, String> {
        match self {
            Wire::Ndjson => {
                let Some(i) = memchr::memchr(b'\n', buf) else {
                    return Ok(None);
                };
                *start += i + 1;
                let line = buf[..i].strip_suffix(b"\r").unwrap_or(&buf[..i]);
                Ok(Some(Frame::Json(line.to_vec())))
            }
            Wire::Http(h) => {
                let Some(r) = parse_response(buf)? else {
                    return Ok(None);
                };
                *start += r.consumed;
                if let Some(s) = r.session {
                    h.session = Some(s);
                }
                Ok(Some(match r.json {
                    Some(j) => Frame::Json(j),
                    None => Frame::Status(r.status),
                }))
            }
        }
    }
}

impl HttpWire {
    fn head(
        &self,
        out: &mut Vec<u8>,
        method: &str,
        name: Option<&[Vec<u8>]>,
        key: &[u8],
        len: usize,
    ) {
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(
            b"\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: ",
        );
        if self.modern {
            out.extend_from_slice(MODERN_VERSION.as_bytes());
            out.extend_from_slice(b"\r\nMcp-Method: ");
            out.extend_from_slice(method.as_bytes());
            if let Some(n) = name {
                out.extend_from_slice(b"\r\nMcp-Name: ");
                write_pieces(out, n, key);
            }
        } else {
            out.extend_from_slice(LEGACY_VERSION.as_bytes());
            if let Some(s) = &self.session {
                out.extend_from_slice(b"\r\nMcp-Session-Id: ");
                out.extend_from_slice(s.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }
}

struct Response {
    consumed: usize,
    status: u16,
    session: Option<String>,
    json: Option<Vec<u8>>,
}

/// Largest response head accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// The end of a response head.
static HEAD_END: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));

/// Parses one HTTP/1.1 response from the start of `buf`, if it is complete.
fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some(head_end) = HEAD_END.find(buf) else {
        if buf.len() > HEAD_BYTES_MAX {
            return Err("an HTTP response head exceeded 64 KiB".into());
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let status_line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let status: u16 = status_line
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(status_line)
            )
        })?;
    let (mut length, mut chunked, mut sse, mut session) = (None, false, false, None);
    for l in head[line_end.min(head.len())..].split(|&b| b == b'\n') {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let Some(colon) = memchr::memchr(b':', l) else {
            continue;
        };
        let (k, v) = (&l[..colon], l[colon + 1..].trim_ascii());
        if k.eq_ignore_ascii_case(b"content-length") {
            length = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| {
                        format!("bad content-length {:?}", String::from_utf8_lossy(v))
                    })?,
            );
        } else if k.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = v.eq_ignore_ascii_case(b"chunked");
        } else if k.eq_ignore_ascii_case(b"content-type") {
            sse = v.starts_with(b"text/event-stream");
        } else if k.eq_ignore_ascii_case(b"mcp-session-id") {
            session = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    let body_start = head_end + 4;
    let (body, consumed) = if chunked {
        let mut body = Vec::new();
        let mut at = body_start;
        loop {
            let Some(eol) = memmem::find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[at..at + eol]).unwrap_or("");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let data = at + eol + 2;
            if buf.len() < data + size + 2 {
                return Ok(None);
            }
            if size == 0 {
                // No trailers are expected; the terminating CRLF follows.
                break (body, data + 2);
            }
            body.extend_from_slice(&buf[data..data + size]);
            at = data + size + 2;
        }
    } else {
        let n = length.unwrap_or(0);
        if buf.len() < body_start + n {
            return Ok(None);
        }
        (buf[body_start..body_start + n].to_vec(), body_start + n)
    };
    let json = if sse {
        last_sse_response(&body)
    } else if body.iter().any(|b| !b.is_ascii_whitespace()) {
        Some(body)
    } else {
        None
    };
    Ok(Some(Response {
        consumed,
        status,
        session,
        json,
    }))
}

/// The last `data:` payload of an SSE body that carries an `id` member: the
/// response closes a POST's stream, after any related notifications.
fn last_sse_response(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| d.contains("\"id\""))
        .map(|d| d.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_parse_with_length_chunks_and_sse() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: abc\r\ncontent-length: 5\r\n\r\n{\"a\":1}";
        let got = parse_response(&r[..r.len() - 2]).unwrap().unwrap();
        assert_eq!(got.json.unwrap(), b"{\"a\":");
        assert_eq!(got.session.as_deref(), Some("abc"));
        assert!(parse_response(&r[..20]).unwrap().is_none());
        let c = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n11\r\n\ndata: {\"id\":2}\n\n\r\n0\r\n\r\nNEXT";
        let got = parse_response(c).unwrap().unwrap();
        assert_eq!(got.json.unwrap(), b"{\"id\":2}");
        assert_eq!(&c[got.consumed..], b"NEXT");
        let e = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        let got = parse_response(e).unwrap().unwrap();
        assert_eq!(
            (got.status, got.json.is_none(), got.consumed),
            (202, true, e.len())
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}
