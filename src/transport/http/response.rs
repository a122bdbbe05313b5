//! HTTP responses as the MCP layer produces them ([`McpResponse`]), and the
//! hyper body that sends them ([`OutBody`]), including SSE streams with
//! keep-alive comments, server-side closing (`retry`, SEP-1699) and
//! cancellation when the client goes away.

use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::FutureExt;
use http_body::Frame;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;

use super::relay::{FrameStream, HttpFrame};
use super::HttpShard;
use crate::protocol::jsonrpc::{self, Id};
use crate::runtime::local::Pipe;

/// Where an SSE response's events come from.
pub(crate) enum SseSource {
    /// Produced on this shard (already SSE-formatted).
    Local(Rc<Pipe<Bytes>>),
    /// Relayed from the session's owner shard.
    Relay {
        frames: Box<dyn FrameStream>,
        owner: usize,
        corr: u64,
        ended: bool,
    },
}

pub(crate) enum McpBody {
    Empty,
    Json(Vec<u8>),
    Sse {
        source: SseSource,
        /// The request's handler (modern era): dropped with the body, which
        /// cancels it when the client closes the stream.
        task: Option<glommio::Task<()>>,
        /// Legacy streams can be resumed with `Last-Event-ID`, so the server
        /// may close their connection; modern ones cannot.
        resumable: bool,
    },
}

pub(crate) struct McpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: McpBody,
}

impl McpResponse {
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: McpBody::Empty,
        }
    }

    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: McpBody::Json(body),
        }
    }

    /// A JSON-RPC error response carried with an HTTP error status.
    pub fn rpc_error(status: u16, id: &Id<'_>, code: i32, message: &str) -> Self {
        Self::rpc_error_with_data(status, id, code, message, None)
    }

    pub fn rpc_error_with_data(
        status: u16,
        id: &Id<'_>,
        code: i32,
        message: &str,
        data: Option<&[u8]>,
    ) -> Self {
        let mut out = Vec::with_capacity(96 + message.len());
        jsonrpc::write_error_with_data(&mut out, id, code, message, data);
        trim_newline(&mut out);
        Self::json(status, out)
    }

    /// 429 for a principal over its rate limit: the documented JSON-RPC
    /// error (-31012, `data.retryAfterMs`) and `Retry-After` in whole seconds.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let mut out = Vec::new();
        crate::server::encode::rate_limited(&mut out, &Id::Null, retry_after);
        if out.last() == Some(&b'\n') {
            out.pop();
        }
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::json(429, out).with_header("retry-after", secs.max(1).to_string())
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The response for either HTTP/1.1 path, with SSE streams wired to
    /// this shard's timers.
    pub fn prepare(self, http: &Rc<HttpShard>) -> Prepared {
        let cfg = &http.cfg;
        let (content_type, body) = match self.body {
            McpBody::Empty => (None, OutBody::Full(None)),
            McpBody::Json(b) => (
                Some("application/json"),
                OutBody::Full(Some(Bytes::from(b))),
            ),
            McpBody::Sse {
                source,
                task,
                resumable,
            } => {
                let close_after = (resumable && cfg.sse_max_connection_ms > 0).then(|| {
                    glommio::timer::Timer::new(Duration::from_millis(cfg.sse_max_connection_ms))
                });
                let keepalive = Duration::from_millis(cfg.sse_keepalive_ms);
                (
                    Some("text/event-stream"),
                    OutBody::Sse(SseBody {
                        source,
                        http: http.clone(),
                        _task: task,
                        keepalive,
                        keepalive_timer: glommio::timer::Timer::new(keepalive),
                        close_after,
                        retry_ms: cfg.sse_retry_ms,
                        state: SseState::Open,
                    }),
                )
            }
        };
        Prepared {
            status: self.status,
            content_type,
            shard: http.net.core.id,
            headers: self.headers,
            body,
        }
    }

    /// The hyper response (the fallback path).
    pub fn into_hyper(self, http: &Rc<HttpShard>) -> Response<OutBody> {
        let p = self.prepare(http);
        let mut resp = Response::new(p.body);
        *resp.status_mut() = hyper::StatusCode::from_u16(p.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        for (name, value) in fixed_headers(p.content_type) {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        h.insert(
            HeaderName::from_static(SHARD_HEADER),
            HeaderValue::from(p.shard),
        );
        for (name, value) in p.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                h.append(n, v);
            }
        }
        resp
    }
}

/// Which shard received the request (the session's owner may differ): for
/// operators and for the tests that prove cross-core routing.
pub(crate) const SHARD_HEADER: &str = "x-tessera-shard";

/// The headers that come with a body of `content_type`.
pub(crate) fn fixed_headers(
    content_type: Option<&'static str>,
) -> impl Iterator<Item = (&'static str, &'static str)> {
    let sse = content_type == Some("text/event-stream");
    content_type
        .map(|ct| ("content-type", ct))
        .into_iter()
        .chain(
            [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
                .into_iter()
                .filter(move |_| sse),
        )
}

/// An [`McpResponse`] ready to be written by either HTTP/1.1 path.
pub(crate) struct Prepared {
    pub status: u16,
    pub content_type: Option<&'static str>,
    /// The shard that received the request ([`SHARD_HEADER`]).
    pub shard: usize,
    /// The handler's own headers, in order.
    pub headers: Vec<(String, String)>,
    pub body: OutBody,
}

pub(crate) fn trim_newline(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\n') {
        v.pop();
    }
}

/// One SSE event carrying a JSON-RPC message, with an optional id.
pub(crate) fn sse_event(id: Option<&str>, json: &[u8]) -> Bytes {
    let mut e = Vec::with_capacity(json.len() + 48);
    if let Some(id) = id {
        e.extend_from_slice(b"id: ");
        e.extend_from_slice(id.as_bytes());
        e.push(b'\n');
    }
    e.extend_from_slice(b"event: message\ndata: ");
    e.extend_from_slice(json);
    e.extend_from_slice(b"\n\n");
    Bytes::from(e)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SseState {
    Open,
    /// Sending `retry` before the server closes the connection.
    Closing,
    Done,
}

pub(crate) struct SseBody {
    source: SseSource,
    http: Rc<HttpShard>,
    _task: Option<glommio::Task<()>>,
    keepalive: Duration,
    keepalive_timer: glommio::timer::Timer,
    close_after: Option<glommio::timer::Timer>,
    retry_ms: u64,
    state: SseState,
}

impl SseBody {
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match &mut self.source {
            SseSource::Local(p) => p.poll_next(cx),
            SseSource::Relay { frames, ended, .. } => match frames.poll_next(cx) {
                Poll::Ready(Some(HttpFrame::Data(d))) => Poll::Ready(Some(Bytes::from(d))),
                Poll::Ready(Some(HttpFrame::End)) | Poll::Ready(None) => {
                    *ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(HttpFrame::Head(_))) => {
                    panic!("a relayed response sent a second head")
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        match &self.source {
            SseSource::Local(p) => p.detach_consumer(),
            SseSource::Relay {
                frames,
                owner,
                corr,
                ended,
            } => {
                frames.detach();
                if !*ended {
                    if let Some(link) = self.http.link() {
                        link.forget(*corr);
                        link.cancel(*owner, *corr);
                    }
                }
            }
        }
    }
}

/// The hyper body of every response tessera sends over HTTP.
pub(crate) enum OutBody {
    Full(Option<Bytes>),
    Sse(SseBody),
}

impl http_body::Body for OutBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let sse = match self.get_mut() {
            OutBody::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Sse(s) => s,
        };
        if sse.state == SseState::Done {
            return Poll::Ready(None);
        }
        if sse.state == SseState::Open {
            let deadline = sse
                .close_after
                .as_mut()
                .is_some_and(|t| t.poll(cx).is_ready());
            if deadline || sse.http.net.shutdown.poll_raised(cx).is_ready() {
                sse.state = SseState::Closing;
            }
        }
        if sse.state == SseState::Closing {
            // The stream goes on in the session's store; the client comes
            // back with Last-Event-ID after `retry` ms.
            sse.state = SseState::Done;
            let retry = format!("retry: {}\n\n", sse.retry_ms);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(retry)))));
        }
        match sse.poll_source(cx) {
            Poll::Ready(Some(b)) => {
                sse.keepalive_timer.reset(sse.keepalive);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(None) => {
                sse.state = SseState::Done;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if sse.keepalive_timer.poll(cx).is_ready() {
                    sse.keepalive_timer.reset(sse.keepalive);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, OutBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            OutBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            OutBody::Full(None) => http_body::SizeHint::with_exact(0),
            OutBody::Sse(_) => http_body::SizeHint::default(),
        }
    }
}
