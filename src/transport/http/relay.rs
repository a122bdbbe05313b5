//! Relaying legacy-session HTTP requests to the shard that owns the session.
//!
//! A session lives on the shard that answered its `initialize`; its id names
//! that shard. A request for it arriving on another shard is sent to the
//! owner as an [`HttpCall`]; the owner serves it exactly as it serves a local
//! one and streams the response back as [`HttpFrame`]s: a head, then (for
//! SSE) data chunks, then `End`. The asking shard turns the frames into its
//! HTTP response. If its client goes away or reads too slowly, it tells the
//! owner ([`HttpMsg::Cancel`]) and the owner stops; a legacy stream keeps
//! recording events in the session's replay store, so the client can resume.
//!
//! This module owns these messages; the composition root carries them over
//! the mesh behind [`RelayLink`].

use crate::server::trace::TraceParent;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::response::{McpBody, McpResponse, SseSource};
use super::{session, HttpShard};
use crate::runtime::local::Pipe;
use crate::runtime::mesh::{MeshError, ReplyTo};
use crate::server::auth::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    Get,
    Post,
    Delete,
}

/// Which response forms the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepts {
    pub json: bool,
    pub sse: bool,
}

/// An HTTP request for a legacy session, as the owner needs it.
#[derive(Debug)]
pub(crate) struct HttpCall {
    pub session_id: String,
    pub method: HttpMethod,
    /// `Last-Event-ID`, when sent (GET only).
    pub last_event_id: Option<String>,
    pub accepts: Accepts,
    pub body: Vec<u8>,
    /// The authenticated caller (`--auth`); a session answers only the
    /// principal that created it.
    pub principal: Option<Identity>,
    /// Relayed from another node (`--cluster`): served here or not found,
    /// never relayed again.
    pub from_node: bool,
    /// The W3C `traceparent`/`tracestate` headers (only parsed when
    /// tracing is on).
    pub trace: Option<TraceParent>,
}

/// What one shard's HTTP transport asks another's.
#[derive(Debug)]
pub(crate) enum HttpMsg {
    /// Serve this request for a session you own; answer with frames.
    Call(Box<HttpCall>),
    /// The client of the relayed stream `stream` (the correlation id of its
    /// call) went away or fell behind; stop sending it. No reply.
    Cancel { stream: u64 },
}

/// One piece of a relayed response.
#[derive(Debug)]
pub(crate) enum HttpFrame {
    Head(HttpHead),
    Data(Vec<u8>),
    End,
}

#[derive(Debug)]
pub(crate) struct HttpHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: HeadBody,
}

#[derive(Debug)]
pub(crate) enum HeadBody {
    Empty,
    Json(Vec<u8>),
    /// Data frames follow.
    Sse {
        resumable: bool,
    },
}

/// The frames of one relayed response, as they arrive.
pub(crate) trait FrameStream {
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<HttpFrame>>;
    /// The reader stops for good.
    fn detach(&self);
}

/// How the HTTP transport reaches the other shards.
pub(crate) trait RelayLink {
    /// Sends `call` to shard `to`; its frames arrive on the returned stream
    /// (at most `depth` queued before it is cut), named by the correlation id.
    fn call(
        &self,
        to: usize,
        call: HttpCall,
        depth: usize,
    ) -> Result<(u64, Box<dyn FrameStream>), MeshError>;
    /// Tells shard `to` to stop streaming `stream`.
    fn cancel(&self, to: usize, stream: u64);
    /// Stops waiting for frames of `stream`.
    fn forget(&self, stream: u64);
    /// Sends one frame of a response back to the shard that asked.
    fn reply(
        &self,
        to: ReplyTo,
        frame: HttpFrame,
    ) -> Pin<Box<dyn Future<Output = Result<(), MeshError>>>>;
}

/// Frames one relayed stream may have queued on the asking shard before it
/// is cut (the client is not reading).
const RELAY_DEPTH_FRAMES: usize = 256;

/// On the asking shard: forwards `call` to `owner` and builds the response
/// from the frames that come back.
pub(crate) async fn relay(
    http: &Rc<HttpShard>,
    owner: usize,
    call: HttpCall,
) -> Result<McpResponse, MeshError> {
    let link = http.link().ok_or(MeshError::PeerGone)?;
    let (corr, frames) = link.call(owner, call, RELAY_DEPTH_FRAMES)?;
    let net = &http.net;
    let first = futures_lite::future::or(
        async {
            std::future::poll_fn(|cx| frames.poll_next(cx))
                .await
                .ok_or(MeshError::PeerGone)
        },
        async {
            glommio::timer::sleep(std::time::Duration::from_millis(
                net.core.limits.mesh_timeout_ms,
            ))
            .await;
            Err(MeshError::Timeout)
        },
    )
    .await;
    let head = match first {
        Ok(HttpFrame::Head(h)) => h,
        Ok(other) => panic!("a relayed response began with {other:?}, not its head"),
        Err(e) => {
            link.forget(corr);
            if e == MeshError::Timeout {
                net.core.metrics.borrow_mut().counters.mesh_timeouts += 1;
                link.cancel(owner, corr);
            }
            return Err(e);
        }
    };
    let body = match head.body {
        HeadBody::Empty => McpBody::Empty,
        HeadBody::Json(b) => McpBody::Json(b),
        HeadBody::Sse { resumable } => McpBody::Sse {
            source: SseSource::Relay {
                frames,
                owner,
                corr,
                ended: false,
            },
            task: None,
            resumable,
        },
    };
    Ok(McpResponse {
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// On the owner: serves a message another shard's HTTP transport sent.
pub(crate) fn serve(http: &Rc<HttpShard>, from: usize, msg: HttpMsg, reply: Option<ReplyTo>) {
    match msg {
        HttpMsg::Call(call) => {
            let to = reply.expect("a relayed call wants its response");
            serve_call(http, to, *call);
        }
        HttpMsg::Cancel { stream } => {
            // Dropping the task cancels it; its pipe guard detaches the consumer.
            let task = http.relays.borrow_mut().remove(&(from, stream));
            drop(task);
        }
    }
}

/// Serves a relayed call and streams the response back.
fn serve_call(http: &Rc<HttpShard>, to: ReplyTo, call: HttpCall) {
    let Some(link) = http.link() else {
        return;
    };
    let owner = http.clone();
    let task = glommio::spawn_local(async move {
        let resp = session::serve_call(&owner, call).await;
        let (head_body, sse) = match resp.body {
            McpBody::Empty => (HeadBody::Empty, None),
            McpBody::Json(b) => (HeadBody::Json(b), None),
            McpBody::Sse {
                source, resumable, ..
            } => match source {
                SseSource::Local(p) => (HeadBody::Sse { resumable }, Some(p)),
                SseSource::Relay { .. } => {
                    unreachable!("sessions are served where they live: a relay is never relayed")
                }
            },
        };
        let head = HttpHead {
            status: resp.status,
            headers: resp.headers,
            body: head_body,
        };
        if link.reply(to, HttpFrame::Head(head)).await.is_ok() {
            if let Some(pipe) = sse {
                let _consumer = ConsumerGuard(pipe.clone());
                while let Some(chunk) = pipe.next().await {
                    if link
                        .reply(to, HttpFrame::Data(chunk.to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let _ = link.reply(to, HttpFrame::End).await;
        }
        // Dropping our own handle here is harmless: the task is finishing.
        owner.relays.borrow_mut().remove(&(to.shard, to.corr()));
    });
    http.relays.borrow_mut().insert((to.shard, to.corr()), task);
}

/// Marks a local SSE pipe's consumer gone when the relay stops reading it.
struct ConsumerGuard(Rc<Pipe<Bytes>>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.detach_consumer();
    }
}
