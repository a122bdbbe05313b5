//! Streamable HTTP transport (MCP 2025-03-26 … 2025-11-25 with sessions, and
//! 2026-07-28 stateless), on hyper's HTTP/1.1 over glommio.
//!
//! Every shard binds the HTTP address itself (SO_REUSEPORT) and serves the
//! connections the kernel gives it; each connection is one task running
//! hyper's HTTP/1 state machine through [`io::HyperIo`]. Bounds: request
//! heads must arrive within `header_timeout_ms` (hyper), bodies within
//! `body_timeout_ms` and `max_message_bytes`; a connection with nothing in
//! flight and no bytes moving for `idle_timeout_ms` is closed.

pub mod body;
pub mod forward;
pub mod handler;
pub mod io;
pub mod session;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
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

use crate::protocol::jsonrpc::{self, Id};
use crate::runtime::shard::{ConnHandle, Shard};
use crate::runtime::supervisor::RestartIntensity;
use body::McpResponse;

const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

pub use crate::transport::tcp::bind;
use crate::transport::tcp::Bound;

/// Accepts HTTP connections until the shard starts draining.
pub async fn accept_loop(shard: Rc<Shard>, bound: Bound) {
    glommio::spawn_local(session::sweep_loop(shard.clone())).detach();
    let Bound {
        listener,
        fd: listen_fd,
    } = bound;
    shard.track_socket(listen_fd);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("shard {}: HTTP accept failed: {e}", shard.id);
                shard.metrics.borrow_mut().counters.accept_errors += 1;
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if shard.conns.live() >= shard.limits.max_connections_per_shard {
            shard.metrics.borrow_mut().counters.connections_refused += 1;
            glommio::spawn_local(refuse(stream)).detach();
            continue;
        }
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let fd = stream.as_raw_fd();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.track_socket(fd);
            serve_connection(shard.clone(), stream, peer).await;
            shard.untrack_socket(fd);
        })
        .detach();
    }
    shard.untrack_socket(listen_fd);
}

/// Answers a connection over `max_connections_per_shard` with 503 and
/// closes it, without reading its request (bounded: one write, one timeout).
async fn refuse(mut stream: TcpStream) {
    use futures_lite::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 103\r\nConnection: close\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-31010,\"message\":\"Server overloaded: too many connections\"}}";
    let _ = futures_lite::future::or(
        async {
            let _ = stream.write_all(BUSY).await;
            let _ = stream.close().await;
        },
        glommio::timer::sleep(Duration::from_secs(1)),
    )
    .await;
}

/// Serves one HTTP/1.1 connection on any byte stream (a TCP socket in the
/// server; an in-memory stream in the fuzz targets). `peer` keys the rate
/// limiter for requests without a session.
pub async fn serve_connection<S>(shard: Rc<Shard>, stream: S, peer: Option<IpAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let cfg = shard.http.clone().expect("HTTP configured");
    let handle = Rc::new(ConnHandle::new(&shard));
    let slot = shard.conns.register(handle.clone());
    shard.metrics.borrow_mut().counters.connections_opened += 1;

    let clock = io::ConnClock::new();
    let inflight = Rc::new(Cell::new(0usize));
    let io = io::HyperIo::new(stream, shard.clone(), clock.clone());
    let svc_shard = shard.clone();
    let svc_inflight = inflight.clone();
    let restarts = Rc::new(RefCell::new(RestartIntensity::default()));
    let service = hyper::service::service_fn(move |req| {
        let shard = svc_shard.clone();
        let inflight = svc_inflight.clone();
        let restarts = restarts.clone();
        inflight.set(inflight.get() + 1);
        async move {
            // The request handler runs under the connection's supervisor: a
            // panic outside a tool costs this request (500 with -32603) and
            // the connection carries on, up to the restart intensity.
            let handled = AssertUnwindSafe(async {
                if shard.chaos_conn_panic() {
                    panic!("chaos: HTTP handler panic (--chaos-conn-panic-rate)");
                }
                handler::handle(shard.clone(), req, peer).await
            })
            .catch_unwind()
            .await;
            inflight.set(inflight.get() - 1);
            match handled {
                Ok(resp) => Ok(resp),
                Err(_) => {
                    let cfg = shard.http.clone().expect("HTTP configured");
                    let limits = &shard.limits;
                    let allowed = restarts.borrow_mut().allow(
                        Instant::now(),
                        limits.max_restarts,
                        limits.restart_period(),
                    );
                    let mut m = shard.metrics.borrow_mut();
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
                            shard.id,
                            limits.max_restarts,
                            limits.restart_period_ms
                        );
                        resp.with_header("connection", "close")
                    };
                    Ok::<_, std::convert::Infallible>(resp.into_hyper(&shard, &cfg))
                }
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(io::HeadTimer::new(clock.clone()))
        .header_read_timeout(Duration::from_millis(cfg.header_timeout_ms))
        .keep_alive(true)
        .pipeline_flush(true)
        .max_buf_size(64 * 1024 + shard.limits.max_message_bytes.min(1 << 20));
    let mut conn = pin!(builder.serve_connection(io, service));

    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut idle_timer = glommio::timer::Timer::new(idle);
    let mut draining = false;
    let result = std::future::poll_fn(|cx| {
        handle.set_waker(cx.waker());
        if !draining && shard.shutdown.poll_raised(cx).is_ready() {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
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
    .await;
    if let Err(e) = result {
        log::debug!("shard {}: HTTP connection ended: {e}", shard.id);
    }
    shard.conns.unregister(slot);
    shard.metrics.borrow_mut().counters.connections_closed += 1;
}
