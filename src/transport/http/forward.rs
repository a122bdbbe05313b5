//! Relaying legacy-session HTTP requests to the shard that owns the session.
//!
//! A session lives on the shard that answered its `initialize`; its id names
//! that shard. A request for it arriving on another shard is sent over the
//! mesh as an [`HttpCall`]; the owner serves it exactly as it serves a local
//! one and streams the response back as [`HttpFrame`]s: a head, then (for
//! SSE) data chunks, then `End`. The asking shard turns the frames into its
//! HTTP response. If its client goes away or reads too slowly, it tells the
//! owner (`HttpCancel`) and the owner stops; a legacy stream keeps recording
//! events in the session's replay store, so the client can resume.

use std::rc::Rc;

use bytes::Bytes;

use super::body::{McpBody, McpResponse, SseSource};
use super::session;
use crate::runtime::local::Pipe;
use crate::runtime::mesh::{MeshError, Reply, Request};
use crate::runtime::shard::Shard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Delete,
}

/// Which response forms the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    pub json: bool,
    pub sse: bool,
}

/// An HTTP request for a legacy session, as the owner needs it.
#[derive(Debug)]
pub struct HttpCall {
    pub session_id: String,
    pub method: HttpMethod,
    /// `MCP-Protocol-Version`, when sent.
    pub protocol_version: Option<String>,
    /// `Last-Event-ID`, when sent (GET only).
    pub last_event_id: Option<String>,
    pub accepts: Accepts,
    pub body: Vec<u8>,
    /// The authenticated caller (`--auth`); a session answers only the
    /// principal that created it.
    pub principal: Option<crate::server::auth::Identity>,
}

#[derive(Debug)]
pub enum HttpFrame {
    Head(HttpHead),
    Data(Vec<u8>),
    End,
}

#[derive(Debug)]
pub struct HttpHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: HeadBody,
}

#[derive(Debug)]
pub enum HeadBody {
    Empty,
    Json(Vec<u8>),
    /// Data frames follow.
    Sse {
        resumable: bool,
    },
}

/// Frames one relayed stream may have queued on the asking shard before it
/// is cut (the client is not reading).
const RELAY_DEPTH_FRAMES: usize = 256;

/// On the asking shard: forwards `call` to `owner` and builds the response
/// from the frames that come back.
pub async fn relay(
    shard: &Rc<Shard>,
    owner: usize,
    call: HttpCall,
) -> Result<McpResponse, MeshError> {
    let mesh = shard.mesh().ok_or(MeshError::PeerGone)?;
    let (corr, pipe) =
        mesh.call_stream(owner, Request::Http(Box::new(call)), RELAY_DEPTH_FRAMES)?;
    shard.metrics.borrow_mut().counters.mesh_requests_sent += 1;
    let first = futures_lite::future::or(
        async { pipe.next().await.ok_or(MeshError::PeerGone) },
        async {
            glommio::timer::sleep(shard.limits.mesh_timeout()).await;
            Err(MeshError::Timeout)
        },
    )
    .await;
    let head = match first {
        Ok(Reply::Http(HttpFrame::Head(h))) => h,
        Ok(_) => {
            mesh.forget(corr);
            return Err(MeshError::PeerGone);
        }
        Err(e) => {
            mesh.forget(corr);
            if e == MeshError::Timeout {
                shard.metrics.borrow_mut().counters.mesh_timeouts += 1;
                shard.tell(owner, Request::HttpCancel { stream: corr });
            }
            return Err(e);
        }
    };
    let body = match head.body {
        HeadBody::Empty => McpBody::Empty,
        HeadBody::Json(b) => McpBody::Json(b),
        HeadBody::Sse { resumable } => McpBody::Sse {
            source: SseSource::Relay {
                pipe,
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

/// On the owner: serves a relayed call and streams the response back.
pub fn serve(shard: &Rc<Shard>, from: usize, corr: u64, call: HttpCall) {
    let Some(mesh) = shard.mesh() else {
        return;
    };
    let task_shard = shard.clone();
    let task = glommio::spawn_local(async move {
        let shard = task_shard;
        let resp = session::serve_call(&shard, call).await;
        let (head_body, sse) = match resp.body {
            McpBody::Empty => (HeadBody::Empty, None),
            McpBody::Json(b) => (HeadBody::Json(b), None),
            McpBody::Sse {
                source, resumable, ..
            } => match source {
                SseSource::Local(p) => (HeadBody::Sse { resumable }, Some(p)),
                // A relay is never relayed again: sessions are served where they live.
                SseSource::Relay { .. } => (HeadBody::Empty, None),
            },
        };
        let head = HttpHead {
            status: resp.status,
            headers: resp.headers,
            body: head_body,
        };
        if mesh
            .reply(from, corr, Reply::Http(HttpFrame::Head(head)))
            .await
            .is_ok()
        {
            if let Some(pipe) = sse {
                let _consumer = ConsumerGuard(pipe.clone());
                while let Some(chunk) = pipe.next().await {
                    if mesh
                        .reply(from, corr, Reply::Http(HttpFrame::Data(chunk.to_vec())))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let _ = mesh.reply(from, corr, Reply::Http(HttpFrame::End)).await;
        }
        // Dropping our own handle here is harmless: the task is finishing.
        shard.relays.borrow_mut().remove(&(from, corr));
    });
    shard.relays.borrow_mut().insert((from, corr), task);
}

/// On the owner: the asking shard's client is gone; stop relaying.
pub fn cancel(shard: &Rc<Shard>, from: usize, stream: u64) {
    // Dropping the task cancels it; its pipe guard detaches the consumer.
    let task = shard.relays.borrow_mut().remove(&(from, stream));
    drop(task);
}

/// Marks a local SSE pipe's consumer gone when the relay stops reading it.
struct ConsumerGuard(Rc<Pipe<Bytes>>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.detach_consumer();
    }
}
