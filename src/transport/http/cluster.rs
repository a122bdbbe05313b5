//! Legacy sessions across nodes (`--cluster`), as the HTTP transport sees
//! them: a request for a session this node does not hold is relayed to the
//! live node that does, over a direct HTTP connection that carries proof of
//! the cluster secret, and the response (JSON or SSE) is streamed back; or
//! the session is taken over from a dead owner and served here. Where a
//! session lives is the cluster adapter's to say, behind [`ClusterLink`];
//! this module owns the bytes: the relay request, its proof, the response.
//!
//! The relay is one level up from the shards' own relay (`relay.rs`): the
//! owning node serves a relayed call exactly as a local one, and never
//! relays it again (a relayed call for a session it does not hold is
//! answered 404), so a request crosses at most one node boundary.
//!
//! Bounds: a relay gets `mesh_timeout_ms` to connect and to receive the
//! response head; a shard keeps at most [`POOL_IDLE_PER_NODE`] idle
//! keep-alive connections to each node (an SSE relay holds its own until
//! the stream ends); a relayed SSE stream queues at most `sse_queue_events`
//! events for a slow client before it is cut (the client resumes with
//! `Last-Event-ID`, which is relayed too); a proof is accepted within
//! [`PROOF_WINDOW_MS`] of its timestamp.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

use super::io::{ConnClock, HyperIo};
use super::relay::{Accepts, HttpCall, HttpMethod};
use super::response::{McpBody, McpResponse, SseSource};
use super::HttpShard;
use crate::protocol::jsonrpc::{self, Id};
use crate::runtime::local::{Pipe, PushError};
use crate::server::auth::Identity;

/// The header that marks a node-to-node request and proves its origin.
pub(crate) const RELAY_HEADER: &str = "x-tessera-relay";
/// A proof older or newer than this (by the receiver's clock) is refused.
pub(crate) const PROOF_WINDOW_MS: u64 = 30_000;

/// Where a session this node does not hold lives now.
#[derive(Debug)]
pub(crate) enum Located {
    /// No such session in the cluster (ended, expired, or never made).
    Missing,
    /// Held by the live node whose HTTP listener is at `addr`.
    Remote { node: String, addr: SocketAddr },
    /// This node's now (taken over from a dead owner, or its own after a
    /// restart): restore it from this record and its events, in order.
    Adopt {
        record: Vec<u8>,
        events: Vec<(u64, u64, Vec<u8>)>,
        /// The session's tasks: (task id, record).
        tasks: Vec<(String, Vec<u8>)>,
    },
}

/// How the HTTP transport reaches the cluster; `node/` wires it to the
/// Redis adapter.
pub(crate) trait ClusterLink {
    fn node_id(&self) -> &str;
    /// `--cluster-sync-events`: legacy SSE events wait for Redis.
    fn sync_events(&self) -> bool;
    fn secret(&self) -> &[u8];
    /// Where session `id` lives (possibly remembered from a recent
    /// lookup); an error when cluster state cannot be read (Redis down or
    /// slow).
    fn locate(&self, id: &str) -> Pin<Box<dyn Future<Output = Result<Located, String>>>>;
    /// Forgets what `locate` remembered of `id` (the node it named did not
    /// hold it, or could not be reached).
    fn forget(&self, id: &str);
    /// The live node other than this one that holds modern task `id` (and
    /// its address), if any; an error when cluster state cannot be read.
    fn locate_task(&self, id: &str) -> Pin<Box<dyn Future<Output = Result<TaskHolder, String>>>>;
}

/// The live node holding a task, and its HTTP address; None when none does.
pub(crate) type TaskHolder = Option<(String, SocketAddr)>;

/// Idle keep-alive connections to one node a shard keeps at most.
pub(crate) const POOL_IDLE_PER_NODE: usize = 256;

/// A shard's idle HTTP/1.1 connections to other nodes, for relays.
#[derive(Default)]
pub(crate) struct NodePool {
    idle: RefCell<HashMap<SocketAddr, Vec<Sender>>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl NodePool {
    fn take(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, s: Sender) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < POOL_IDLE_PER_NODE && !s.is_closed() {
            list.push(s);
        }
    }
}

/// A session this node does not hold: relay, take over, or not found.
pub(crate) async fn serve_elsewhere(
    http: &Rc<HttpShard>,
    link: Rc<dyn ClusterLink>,
    call: HttpCall,
) -> McpResponse {
    // A remembered owner may be stale (it died, or another node took the
    // session over): one more, fresh, lookup then.
    let mut located = link.locate(&call.session_id).await;
    let mut retried = false;
    while let Ok(Located::Remote { node, addr }) = &located {
        let (node, addr) = (node.clone(), *addr);
        http.net.core.metrics.borrow_mut().counters.cluster_relays += 1;
        let outcome = relay_to_node(http, link.as_ref(), addr, &Outgoing::of_call(&call)).await;
        // Retried only when the request cannot have been served: the node
        // did not hold the session, or could not be reached at all.
        let stale = match &outcome {
            Ok(r) => r.status == 404,
            Err(e) => e.unsent,
        };
        if !stale || retried {
            return match outcome {
                Ok(r) => r,
                Err(e) => unavailable(&format!("relaying to node {node} at {addr}: {}", e.why)),
            };
        }
        retried = true;
        link.forget(&call.session_id);
        located = link.locate(&call.session_id).await;
    }
    match located {
        Ok(Located::Remote { .. }) => unreachable!("handled above"),
        Ok(Located::Missing) => super::session::not_found(),
        Ok(Located::Adopt {
            record,
            events,
            tasks,
        }) => {
            let id = call.session_id.clone();
            // Another request may have adopted it meanwhile.
            let held = http.sessions.borrow().get(&id).cloned();
            let session = match held {
                Some(s) => Some(s),
                None => super::session::restore_one(http, id.clone(), &record, events),
            };
            if session.is_some() {
                for (task, rec) in tasks {
                    crate::server::tasks::adopt(&http.net.core, &task, &rec);
                }
            }
            match session {
                Some(s) => {
                    http.net
                        .core
                        .metrics
                        .borrow_mut()
                        .counters
                        .cluster_takeovers += 1;
                    log::info!("shard {}: took session {id} over", http.net.core.id);
                    super::session::serve_held(http, s, call).await
                }
                None => super::session::not_found(),
            }
        }
        Err(e) => unavailable(&e),
    }
}

/// A modern `tasks/*` request for task `task`, made by another node: relayed
/// to the live node that holds it, or None to serve it here (its holders
/// are dead: the owner shard here claims it, or it is unknown).
pub(crate) async fn relay_task(
    http: &Rc<HttpShard>,
    link: Rc<dyn ClusterLink>,
    task: &str,
    headers: &super::head::Headers,
    accepts: Accepts,
    body: &[u8],
    principal: Option<&Identity>,
) -> Option<McpResponse> {
    let mut retried = false;
    loop {
        let (node, addr) = match link.locate_task(task).await {
            Err(e) => return Some(unavailable(&e)),
            Ok(None) => return None,
            Ok(Some(holder)) => holder,
        };
        http.net.core.metrics.borrow_mut().counters.cluster_relays += 1;
        let out = Outgoing {
            method: HttpMethod::Post,
            session: "",
            principal,
            body,
            accepts,
            headers: forwarded(headers),
        };
        match relay_to_node(http, link.as_ref(), addr, &out).await {
            Ok(r) => return Some(r),
            // Unreachable before the request left: it may have just died.
            Err(e) if e.unsent && !retried => {
                retried = true;
                link.forget(task);
            }
            Err(e) => {
                let why = format!("relaying to node {node} at {addr}: {}", e.why);
                return Some(unavailable(&why));
            }
        }
    }
}

/// The headers of a modern request its serving node checks against the
/// body (version, method, name, tool parameters), passed on as they came.
fn forwarded(h: &super::head::Headers) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for name in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        if let Some(v) = h.get(name) {
            out.push((name, v.to_owned()));
        }
    }
    out
}

/// -31010 / 503: the request needs cluster state that cannot be reached.
pub(crate) fn unavailable(why: &str) -> McpResponse {
    McpResponse::rpc_error(503, &Id::Null, jsonrpc::SERVER_OVERLOADED, why)
        .with_header("retry-after", "1")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Delete => "DELETE",
    }
}

/// The relay header's fields: what the proof covers.
struct Proof<'a> {
    from: &'a str,
    ts_ms: u64,
    method: &'static str,
    session: &'a str,
    /// The caller's identity, base64url of its JSON, or empty.
    identity: String,
    body_sha256: [u8; 32],
}

impl Proof<'_> {
    /// The MAC over every field, each length-prefixed.
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        for part in [
            b"tessera-relay-v1".as_slice(),
            self.from.as_bytes(),
            self.ts_ms.to_string().as_bytes(),
            self.method.as_bytes(),
            self.session.as_bytes(),
            self.identity.as_bytes(),
            &self.body_sha256,
        ] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m
    }

    fn tag(&self, secret: &[u8]) -> Vec<u8> {
        self.mac(secret).finalize().into_bytes().to_vec()
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A request on its way to another node.
struct Outgoing<'a> {
    method: HttpMethod,
    /// The legacy session it is for; empty for a modern request.
    session: &'a str,
    principal: Option<&'a Identity>,
    body: &'a [u8],
    accepts: Accepts,
    /// Headers passed on as they came (besides the session and proof).
    headers: Vec<(&'static str, String)>,
}

impl<'a> Outgoing<'a> {
    fn of_call(call: &'a HttpCall) -> Self {
        Outgoing {
            method: call.method,
            session: &call.session_id,
            principal: call.principal.as_ref(),
            body: &call.body,
            accepts: call.accepts,
            headers: call
                .last_event_id
                .iter()
                .map(|id| ("last-event-id", id.clone()))
                .collect(),
        }
    }
}

/// The relay header for `out`, sent from `from`.
fn sign(secret: &[u8], from: &str, out: &Outgoing<'_>) -> String {
    let identity = out
        .principal
        .map(|i| b64().encode(serde_json::json!([i.principal, i.roles]).to_string()))
        .unwrap_or_default();
    let proof = Proof {
        from,
        ts_ms: now_ms(),
        method: method_name(out.method),
        session: out.session,
        identity,
        body_sha256: Sha256::digest(out.body).into(),
    };
    let tag = proof.tag(secret);
    format!(
        "v1 {} {} {} {}",
        proof.from,
        proof.ts_ms,
        if proof.identity.is_empty() {
            "-"
        } else {
            &proof.identity
        },
        b64().encode(tag)
    )
}

/// What a verified relay header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relayed {
    pub from: String,
    pub principal: Option<Identity>,
}

/// Checks a relay header against the request it came with. Any failure is
/// a refusal: a relay without valid proof is never served.
pub(crate) fn verify(
    secret: &[u8],
    header: &str,
    method: HttpMethod,
    session: &str,
    body: &[u8],
) -> Result<Relayed, &'static str> {
    let mut parts = header.split(' ');
    let (Some("v1"), Some(from), Some(ts), Some(identity), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err("malformed relay header");
    };
    let ts_ms: u64 = ts.parse().map_err(|_| "malformed relay timestamp")?;
    if now_ms().abs_diff(ts_ms) > PROOF_WINDOW_MS {
        return Err("relay proof outside its time window");
    }
    let identity = if identity == "-" { "" } else { identity };
    let proof = Proof {
        from,
        ts_ms,
        method: method_name(method),
        session,
        identity: identity.to_string(),
        body_sha256: Sha256::digest(body).into(),
    };
    let tag = b64().decode(tag).map_err(|_| "malformed relay proof")?;
    // Constant-time comparison.
    proof
        .mac(secret)
        .verify_slice(&tag)
        .map_err(|_| "relay proof does not match")?;
    let principal = if identity.is_empty() {
        None
    } else {
        let json = b64()
            .decode(identity)
            .map_err(|_| "malformed relay identity")?;
        let (principal, roles): (String, Vec<String>) =
            serde_json::from_slice(&json).map_err(|_| "malformed relay identity")?;
        Some(Identity { principal, roles })
    };
    Ok(Relayed {
        from: from.to_string(),
        principal,
    })
}

/// Whether a request carries the relay header at all.
pub(crate) fn is_relay(h: &super::head::Headers) -> bool {
    h.contains(RELAY_HEADER)
}

/// Response headers the relay passes back (the rest are the local
/// response's own: framing, content type, shard).
fn passed_back(name: &str) -> bool {
    !matches!(
        name,
        "content-type"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "date"
            | "cache-control"
            | "x-accel-buffering"
            | "x-tessera-shard"
    )
}

/// Why a relay failed; `unsent` when the request never left this node.
struct RelayError {
    why: String,
    unsent: bool,
}

impl From<String> for RelayError {
    fn from(why: String) -> Self {
        RelayError { why, unsent: false }
    }
}

/// Sends `out` to the node at `addr` and turns its answer into ours.
async fn relay_to_node(
    http: &Rc<HttpShard>,
    link: &dyn ClusterLink,
    addr: SocketAddr,
    out: &Outgoing<'_>,
) -> Result<McpResponse, RelayError> {
    let deadline = Duration::from_millis(http.net.core.limits.mesh_timeout_ms);
    let proof = sign(link.secret(), link.node_id(), out);
    let mut req = hyper::Request::builder()
        .method(method_name(out.method))
        .uri(http.cfg.path.as_str())
        .header("host", addr.to_string())
        .header(RELAY_HEADER, proof)
        .header("accept", accept_value(out.accepts));
    if !out.session.is_empty() {
        req = req.header("mcp-session-id", out.session);
    }
    for (name, value) in &out.headers {
        req = req.header(*name, value);
    }
    if out.method == HttpMethod::Post {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(out.body.to_vec())))
        .map_err(|e| e.to_string())?;
    let mut sender = match http.node_pool.take(addr) {
        Some(s) => s,
        None => connect(http, addr, deadline)
            .await
            .map_err(|why| RelayError { why, unsent: true })?,
    };
    // A pooled connection the peer has closed fails before the request is
    // written (ready, or canceled): that is an unsent request.
    let exchange = async move {
        if let Err(e) = sender.ready().await {
            return Err(RelayError {
                why: e.to_string(),
                unsent: true,
            });
        }
        match sender.send_request(req).await {
            Ok(head) => Ok((sender, head)),
            Err(e) => Err(RelayError {
                why: e.to_string(),
                unsent: e.is_canceled(),
            }),
        }
    };
    let (sender, head) = glommio::timer::timeout(deadline, async move { Ok(exchange.await) })
        .await
        .map_err(|e| e.to_string())??;
    relay_response(http, addr, sender, head, deadline)
        .await
        .map_err(RelayError::from)
}

/// A new keep-alive connection to the node at `addr`.
async fn connect(
    http: &Rc<HttpShard>,
    addr: SocketAddr,
    deadline: Duration,
) -> Result<Sender, String> {
    let net = http.net.clone();
    let dial = async move {
        let stream = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = HyperIo::new(stream, net, ConnClock::new());
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        // Runs until the connection closes (or its sender is dropped).
        glommio::spawn_local(async move {
            let _ = conn.await;
        })
        .detach();
        Ok::<_, std::io::Error>(sender)
    };
    glommio::timer::timeout(deadline, async move { Ok(dial.await) })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The relayed response as ours: JSON read whole (the connection then goes
/// back to the pool), SSE streamed.
async fn relay_response(
    http: &Rc<HttpShard>,
    addr: SocketAddr,
    sender: Sender,
    head: hyper::Response<hyper::body::Incoming>,
    deadline: Duration,
) -> Result<McpResponse, String> {
    let status = head.status().as_u16();
    let headers: Vec<(String, String)> = head
        .headers()
        .iter()
        .filter(|(n, _)| passed_back(n.as_str()))
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let sse = head
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = head.into_body();
    if sse {
        // The connection is the stream's until it ends: not pooled.
        let pipe = Pipe::new(http.cfg.sse_queue_events);
        glommio::spawn_local(pump_events(body, pipe.clone(), http.clone())).detach();
        return Ok(McpResponse {
            status,
            headers,
            body: McpBody::Sse {
                source: SseSource::Local(pipe),
                task: None,
                resumable: true,
            },
        });
    }
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let frame = glommio::timer::timeout(deadline, async { Ok(body.frame().await) })
            .await
            .map_err(|e| e.to_string())?;
        match frame {
            None => break,
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    bytes.extend_from_slice(&d);
                }
            }
        }
    }
    http.node_pool.put(addr, sender);
    Ok(McpResponse {
        status,
        headers,
        body: if bytes.is_empty() {
            McpBody::Empty
        } else {
            McpBody::Json(bytes)
        },
    })
}

fn accept_value(a: Accepts) -> &'static str {
    match (a.json, a.sse) {
        (true, true) => "application/json, text/event-stream",
        (false, true) => "text/event-stream",
        _ => "application/json",
    }
}

/// Copies a relayed SSE body into the local stream, whole events at a time
/// (so a keep-alive comment is never spliced into the middle of one); stops
/// when either side ends. A client too slow for `sse_queue_events` has its
/// stream cut, as a local one would; it resumes with `Last-Event-ID`.
async fn pump_events(mut body: hyper::body::Incoming, pipe: Rc<Pipe<Bytes>>, http: Rc<HttpShard>) {
    let mut partial: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        let Some(end) = partial.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        let rest = partial.split_off(end + 2);
        let whole = std::mem::replace(&mut partial, rest);
        match pipe.push(Bytes::from(whole)) {
            Ok(()) => {}
            Err(PushError::Full) => {
                http.net.core.metrics.borrow_mut().counters.sse_streams_cut += 1;
                break;
            }
            Err(PushError::Closed) => break,
        }
    }
    pipe.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &[u8], who: Option<Identity>) -> HttpCall {
        HttpCall {
            session_id: "abc".into(),
            method: HttpMethod::Post,
            last_event_id: None,
            accepts: Accepts {
                json: true,
                sse: true,
            },
            body: body.to_vec(),
            principal: who,
            from_node: false,
            trace: None,
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_request_and_identity() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let who = Identity {
            principal: "alice".into(),
            roles: vec!["admin".into()],
        };
        let h = sign(
            secret,
            "n1",
            &Outgoing::of_call(&call(b"{}", Some(who.clone()))),
        );
        let ok = verify(secret, &h, HttpMethod::Post, "abc", b"{}").unwrap();
        assert_eq!(ok.from, "n1");
        assert_eq!(ok.principal, Some(who));
        assert!(verify(
            b"another secret, 32 bytes long!!!",
            &h,
            HttpMethod::Post,
            "abc",
            b"{}"
        )
        .is_err());
        assert!(verify(secret, &h, HttpMethod::Post, "abd", b"{}").is_err());
        assert!(verify(secret, &h, HttpMethod::Get, "abc", b"{}").is_err());
        assert!(verify(secret, &h, HttpMethod::Post, "abc", b"{ }").is_err());
        // Another identity in the header breaks the proof.
        let forged = h.replacen(
            h.split(' ').nth(3).unwrap(),
            &b64().encode(r#"["root",["admin"]]"#),
            1,
        );
        assert!(verify(secret, &forged, HttpMethod::Post, "abc", b"{}").is_err());
        assert!(verify(secret, "v1 n1 1 - AAAA", HttpMethod::Post, "abc", b"{}").is_err());
        assert!(verify(secret, "garbage", HttpMethod::Post, "abc", b"{}").is_err());
        let anon = sign(secret, "n1", &Outgoing::of_call(&call(b"", None)));
        assert_eq!(
            verify(secret, &anon, HttpMethod::Post, "abc", b"")
                .unwrap()
                .principal,
            None
        );
    }
}
