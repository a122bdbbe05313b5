//! Streamable HTTP transport (MCP 2025-03-26 … 2025-11-25 with sessions, and
//! 2026-07-28 stateless), HTTP/1.1 over glommio.
//!
//! Every shard binds the HTTP address itself (SO_REUSEPORT) and serves the
//! connections the kernel gives it; each connection is one task, on the lean
//! path ([`lean`]: httparse, one write per response) while its requests have
//! the common shape, then on hyper's HTTP/1 state machine through the private
//! [`io`] adapter. Bounds (the same on both paths):
//! a request head may be at most `max_head_bytes` with `max_headers` headers
//! (431 beyond) and a URI of `max_uri_bytes` (414 beyond), and must arrive
//! within `header_timeout_ms`; bodies within `body_timeout_ms` and
//! `max_message_bytes`; a connection with nothing in flight and no bytes
//! moving for `idle_timeout_ms` is closed.
//!
//! [`HttpShard`] is the HTTP state one shard owns: legacy sessions (by id),
//! relays it is streaming to other shards, and what the store has of its
//! sessions.

pub(crate) mod cluster;
pub(crate) mod head;
mod io;
mod lean;
pub(crate) mod modern;
pub(crate) mod relay;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod session;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use hyper::server::conn::http1;

use super::netrules::Listener;
use super::tcp::Bound;
use super::tls::{Admission, Side};
use super::{ConnHandle, Net, Peer};
use crate::protocol::jsonrpc::{self, Id};
use crate::runtime::supervisor::RestartIntensity;
use relay::RelayLink;
use response::McpResponse;
use session::{HttpSession, StoredRecords};

const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Streamable HTTP settings (`--http`). Every timeout and table has a bound;
/// see each field for what happens at it.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// The MCP endpoint; other paths get 404.
    pub path: String,
    /// Origins accepted besides loopback ones (`http(s)://localhost`,
    /// `127.0.0.1`, `[::1]`, any port); `*` accepts every origin. A request
    /// with any other `Origin` gets 403 (DNS-rebinding defence).
    pub allowed_origins: Vec<String>,
    /// `Host` names accepted besides loopback names and the bound address.
    pub allowed_hosts: Vec<String>,
    /// A request head not complete within this is answered 408 and closed.
    pub header_timeout_ms: u64,
    /// The largest request head (request line and headers) in bytes; a
    /// larger one is answered 431 and the connection closed
    /// (`http_heads_refused`).
    pub max_head_bytes: usize,
    /// The most headers one request may carry; more is answered 431 and the
    /// connection closed (`http_heads_refused`).
    pub max_headers: usize,
    /// The longest request target (path and query) in bytes; a longer one is
    /// answered 414 (`http_heads_refused`).
    pub max_uri_bytes: usize,
    /// A request body not complete within this is answered 408.
    pub body_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed.
    pub idle_timeout_ms: u64,
    /// Legacy sessions one shard holds; `initialize` beyond it gets 503.
    pub max_sessions_per_shard: usize,
    /// A legacy session with no request and no open stream for this long is
    /// removed; its id then answers 404.
    pub session_idle_ttl_ms: u64,
    /// SSE events kept per legacy session for `Last-Event-ID` replay;
    /// older ones are dropped first.
    pub sse_store_max_events: usize,
    /// SSE events older than this are dropped from the replay store.
    pub sse_store_max_age_ms: u64,
    /// The `retry` (ms) sent with the priming event and before the server
    /// closes a stream's connection.
    pub sse_retry_ms: u64,
    /// An SSE comment is sent after this much silence on an open stream.
    pub sse_keepalive_ms: u64,
    /// The server closes a legacy SSE connection after this long (sending
    /// `retry` first); the client resumes with `Last-Event-ID` (SEP-1699
    /// polling). 0 keeps connections open.
    pub sse_max_connection_ms: u64,
    /// Events queued for one slow SSE reader. Past it a legacy stream's
    /// connection is closed (the client resumes from the replay store); a
    /// modern stream drops progress notifications, never the response.
    pub sse_queue_events: usize,
}

/// Why HTTP settings are not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {problem}")]
pub struct HttpConfigError {
    pub flag: &'static str,
    pub problem: String,
}

impl HttpConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            path: "/mcp".into(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            header_timeout_ms: 10_000,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            max_sessions_per_shard: 10_000,
            session_idle_ttl_ms: 1_800_000,
            sse_store_max_events: 1_024,
            sse_store_max_age_ms: 300_000,
            sse_retry_ms: 1_000,
            sse_keepalive_ms: 15_000,
            sse_max_connection_ms: 300_000,
            sse_queue_events: 256,
        }
    }

    pub fn validate(&self) -> Result<(), HttpConfigError> {
        let err = |flag, problem: &str| HttpConfigError {
            flag,
            problem: problem.to_owned(),
        };
        if !self.path.starts_with('/') {
            return Err(err("http-path", "must start with '/'"));
        }
        let positive: [(&'static str, u64); 8] = [
            ("http-header-timeout-ms", self.header_timeout_ms),
            ("http-body-timeout-ms", self.body_timeout_ms),
            ("http-idle-timeout-ms", self.idle_timeout_ms),
            ("session-idle-ttl-ms", self.session_idle_ttl_ms),
            ("sse-store-max-age-ms", self.sse_store_max_age_ms),
            ("sse-keepalive-ms", self.sse_keepalive_ms),
            ("max-sessions-per-shard", self.max_sessions_per_shard as u64),
            ("sse-queue-events", self.sse_queue_events as u64),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(err(flag, "must be greater than zero"));
            }
        }
        let at_least: [(&'static str, usize, usize); 3] = [
            // hyper's smallest read buffer; a head must fit in one.
            ("http-max-head-bytes", self.max_head_bytes, 8192),
            ("http-max-headers", self.max_headers, 8),
            ("http-max-uri-bytes", self.max_uri_bytes, 64),
        ];
        for (flag, v, min) in at_least {
            if v < min {
                return Err(err(flag, &format!("must be at least {min} (got {v})")));
            }
        }
        if self.max_uri_bytes > self.max_head_bytes {
            return Err(err(
                "http-max-uri-bytes",
                "must not exceed --http-max-head-bytes (the URI is part of the head)",
            ));
        }
        Ok(())
    }
}

/// The HTTP state of one shard.
pub(crate) struct HttpShard {
    pub net: Rc<Net>,
    pub cfg: HttpConfig,
    /// Legacy HTTP sessions this shard owns, by id.
    pub sessions: RefCell<HashMap<String, Rc<HttpSession>>>,
    /// HTTP responses this shard is streaming to other shards, by (asking
    /// shard, correlation id); dropping one cancels it.
    pub relays: RefCell<HashMap<(usize, u64), glommio::Task<()>>>,
    /// The other shards (none with one shard, or while the mesh is rebuilt).
    link: RefCell<Option<Rc<dyn RelayLink>>>,
    /// `--data-dir`: which sessions' records must be written, and what was.
    pub records: RefCell<Option<StoredRecords>>,
    /// `--cluster`: where sessions this node does not hold live.
    cluster: std::cell::OnceCell<Rc<dyn cluster::ClusterLink>>,
    /// `--cluster`: idle connections to other nodes, for relays.
    pub(crate) node_pool: cluster::NodePool,
}

impl HttpShard {
    pub fn new(net: Rc<Net>, cfg: HttpConfig) -> Self {
        Self {
            net,
            cfg,
            sessions: RefCell::new(HashMap::new()),
            relays: RefCell::new(HashMap::new()),
            link: RefCell::new(None),
            records: RefCell::new(None),
            cluster: std::cell::OnceCell::new(),
            node_pool: cluster::NodePool::default(),
        }
    }

    /// Joins this shard's HTTP sessions to the cluster (once, at build).
    pub fn set_cluster(&self, link: Rc<dyn cluster::ClusterLink>) {
        assert!(
            self.cluster.set(link).is_ok(),
            "a shard joins the cluster once"
        );
    }

    pub(crate) fn cluster(&self) -> Option<Rc<dyn cluster::ClusterLink>> {
        self.cluster.get().cloned()
    }

    /// This node's id in the cluster, which its session ids carry.
    pub(crate) fn node_id(&self) -> Option<&str> {
        self.cluster.get().map(|c| c.node_id())
    }

    /// Connects this shard's HTTP relays to the others (`None`: out of reach).
    pub fn set_link(&self, link: Option<Rc<dyn RelayLink>>) {
        *self.link.borrow_mut() = link;
        // Relayed streams were addressed over the old link.
        self.relays.borrow_mut().clear();
    }

    pub(crate) fn link(&self) -> Option<Rc<dyn RelayLink>> {
        self.link.borrow().clone()
    }
}

/// Serves one accepted connection in its own task.
pub(crate) fn serve_accepted(http: Rc<HttpShard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let pending = match http.net.tls.admit(Side::Http) {
        Admission::Plain => None,
        Admission::Handshake(p) => Some(p),
        Admission::Refused => {
            http.net
                .core
                .metrics
                .borrow_mut()
                .counters
                .tls_handshakes_refused += 1;
            return;
        }
    };
    let mut peer = Peer {
        ip: stream.peer_addr().ok().map(|a| a.ip()),
        cert_name: None,
    };
    let fd = stream.as_raw_fd();
    // On the heap: a socket is 120 bytes (a TLS stream far more), and each
    // level of the connection's future would keep its own room for it, for
    // the life of the connection.
    let stream = Box::new(stream);
    glommio::spawn_local(async move {
        http.net.track_socket(fd);
        match pending {
            None => serve_connection(http.clone(), stream, peer).await,
            Some(p) => {
                if let Some(tls) = p.run(&http.net, stream).await {
                    peer.cert_name = tls.cert_name;
                    serve_connection(http.clone(), Box::new(tls.stream), peer).await;
                }
            }
        }
        http.net.untrack_socket(fd);
    })
    .detach();
}

/// Accepts HTTP connections until the shard starts draining.
pub(crate) async fn accept_loop(http: Rc<HttpShard>, bound: Bound) {
    let net = http.net.clone();
    let Bound {
        listener,
        fd: listen_fd,
    } = bound;
    net.track_socket(listen_fd);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            net.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("shard {}: HTTP accept failed: {e}", net.core.id);
                net.core.metrics.borrow_mut().counters.accept_errors += 1;
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if !net.admits(Listener::Http, &stream) {
            drop(stream);
            continue;
        }
        if net.conns.live() >= net.limits.max_connections_per_shard {
            net.core.metrics.borrow_mut().counters.connections_refused += 1;
            // A TLS client could not read a plain 503: closed unread.
            if !net.tls.is_on() {
                glommio::spawn_local(refuse(stream)).detach();
            }
            continue;
        }
        serve_accepted(http.clone(), stream);
    }
    net.untrack_socket(listen_fd);
}

/// The body of the 503 a connection over `max_connections_per_shard` gets.
const BUSY_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-31010,"message":"Server overloaded: too many connections"}}"#;

/// The whole 503 response, its `Content-Length` computed from the body.
fn busy_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    )
    .into_bytes()
}

/// Answers a connection over `max_connections_per_shard` with 503 and
/// closes it, without reading its request (bounded: one write, one timeout).
async fn refuse(mut stream: TcpStream) {
    use futures_lite::AsyncWriteExt;
    let busy = busy_response();
    let _ = futures_lite::future::or(
        async {
            let _ = stream.write_all(&busy).await;
            let _ = stream.close().await;
        },
        glommio::timer::sleep(Duration::from_secs(1)),
    )
    .await;
}

/// Runs one request's handler under the connection's supervisor: a panic
/// outside a tool costs this request (500 with -32603) and the connection
/// carries on, up to the restart intensity; past it the answer says
/// `Connection: close`.
async fn supervised(
    http: Rc<HttpShard>,
    head: head::Head,
    body: request::Body,
    peer: &Peer,
    restarts: Rc<RefCell<RestartIntensity>>,
) -> McpResponse {
    let net = &http.net;
    let handled = AssertUnwindSafe(async {
        if net.chaos_conn_panic() {
            panic!("chaos: HTTP handler panic (--chaos-conn-panic-rate)");
        }
        request::handle(&http, head, body, peer).await
    })
    .catch_unwind()
    .await;
    if let Ok(resp) = handled {
        return resp;
    }
    let limits = &net.limits;
    let allowed =
        restarts
            .borrow_mut()
            .allow(Instant::now(), limits.max_restarts, limits.restart_period());
    let mut m = net.core.metrics.borrow_mut();
    m.counters.handler_panics += 1;
    if allowed {
        m.counters.connection_restarts += 1;
    } else {
        m.counters.connections_given_up += 1;
    }
    drop(m);
    let resp = McpResponse::rpc_error(
        500,
        &Id::Null,
        jsonrpc::INTERNAL_ERROR,
        "Internal error: the request handler failed unexpectedly",
    );
    let resp = if allowed {
        resp
    } else {
        log::warn!(
            "shard {}: HTTP connection panicked more than {} times in {} ms; closing it",
            net.core.id,
            limits.max_restarts,
            limits.restart_period_ms
        );
        resp.with_header("connection", "close")
    };
    resp
}

/// Serves one HTTP/1.1 connection on any byte stream (a TCP socket in the
/// server; an in-memory stream in the fuzz targets): on the lean path
/// ([`lean`]) while requests have the common shape, then on hyper. `peer`
/// keys the rate limiter for requests without a session, and names the
/// client certificate of a TLS connection.
pub(crate) async fn serve_connection<S>(http: Rc<HttpShard>, stream: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let net = http.net.clone();
    let handle = Rc::new(ConnHandle::new(&net));
    let slot = net.conns.register(handle.clone());
    net.core.metrics.borrow_mut().counters.connections_opened += 1;
    let restarts = Rc::new(RefCell::new(RestartIntensity::default()));
    match lean::serve(&http, stream, &handle, &peer, &restarts).await {
        lean::Ended::Closed => {}
        lean::Ended::Handover(stream) => {
            net.core.metrics.borrow_mut().counters.http_hyper_handovers += 1;
            // Boxed: hyper's connection future is larger than the whole
            // lean path's, and inline it would size every connection's
            // task, though few connections are ever handed over.
            Box::pin(serve_hyper(&http, stream, &handle, peer, restarts)).await;
        }
    }
    net.conns.unregister(slot);
    net.core.metrics.borrow_mut().counters.connections_closed += 1;
}

/// Serves the rest of a connection with hyper's HTTP/1 state machine.
async fn serve_hyper<S>(
    http: &Rc<HttpShard>,
    stream: S,
    handle: &ConnHandle,
    peer: Peer,
    restarts: Rc<RefCell<RestartIntensity>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let net = http.net.clone();
    let clock = io::ConnClock::new();
    let inflight = Rc::new(Cell::new(0usize));
    let svc_http = http.clone();
    let svc_inflight = inflight.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (http, inflight, restarts) = (svc_http.clone(), svc_inflight.clone(), restarts.clone());
        let peer = peer.clone();
        inflight.set(inflight.get() + 1);
        async move {
            let (parts, body) = req.into_parts();
            let head = head::Head::from_hyper(&parts);
            let resp = supervised(
                http.clone(),
                head,
                request::Body::Hyper(body),
                &peer,
                restarts,
            )
            .await
            .into_hyper(&http);
            inflight.set(inflight.get() - 1);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let cfg = &http.cfg;
    let mut builder = http1::Builder::new();
    builder
        .timer(io::head_timer(&clock))
        .header_read_timeout(Duration::from_millis(cfg.header_timeout_ms))
        .max_header_size(cfg.max_head_bytes)
        .max_headers(cfg.max_headers)
        .keep_alive(true)
        // Not `pipeline_flush`: with it hyper defers flushing while request
        // bytes are buffered, and after a head it refuses (431) it shuts the
        // connection down with the unread head still buffered, so the 431
        // it queued is never sent. Unpipelined clients see no difference.
        .pipeline_flush(false)
        .max_buf_size(cfg.max_head_bytes + net.limits.max_message_bytes.min(1 << 20));
    let conn = builder.serve_connection(
        io::HyperIo::new(stream, net.clone(), clock.clone()),
        service,
    );
    let result = drive(&net, conn, handle, &clock, &inflight, cfg.idle_timeout_ms).await;
    if let Err(e) = result {
        if e.is_parse_too_large() {
            // hyper answered 431 and closed (head over --http-max-head-bytes
            // or --http-max-headers).
            net.core.metrics.borrow_mut().counters.http_heads_refused += 1;
        }
        log::debug!("shard {}: HTTP connection ended: {e}", net.core.id);
    }
}

/// Polls hyper's connection until it ends, the shard drains (the request in
/// progress finishes first), or it sits idle with nothing in flight.
async fn drive<C>(
    net: &Net,
    conn: C,
    handle: &ConnHandle,
    clock: &io::ConnClock,
    inflight: &Cell<usize>,
    idle_timeout_ms: u64,
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulShutdown,
{
    let mut conn = pin!(conn);
    let idle = Duration::from_millis(idle_timeout_ms);
    let mut idle_timer = glommio::timer::Timer::new(idle);
    let mut draining = false;
    std::future::poll_fn(|cx| {
        handle.set_waker(cx.waker());
        if !draining && net.shutdown.poll_raised(cx).is_ready() {
            // Finish the request in progress, then close.
            conn.as_mut().begin_graceful_shutdown();
            draining = true;
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if idle_timer.poll(cx).is_ready() {
            let quiet = clock.activity.get().elapsed();
            if inflight.get() == 0 && quiet >= idle {
                return Poll::Ready(Ok(()));
            }
            idle_timer.reset(idle.saturating_sub(quiet).max(Duration::from_millis(10)));
            let _ = idle_timer.poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// hyper's connection, as [`drive`] needs it.
trait GracefulShutdown {
    fn begin_graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_says_its_own_length() {
        let r = String::from_utf8(busy_response()).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], -31010);
    }

    #[test]
    fn head_bounds_are_checked() {
        let mut c = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        assert!(c.validate().is_ok());
        c.max_uri_bytes = c.max_head_bytes + 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http-max-uri-bytes"));
        c.max_uri_bytes = 8192;
        c.max_head_bytes = 100;
        assert!(c.validate().is_err());
    }
}
