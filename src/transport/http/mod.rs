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

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::{TcpListener, TcpStream};
use hyper::server::conn::http1;

use crate::runtime::shard::{ConnHandle, Shard};

const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(std::io::Error::from)
}

/// Accepts HTTP connections until the shard starts draining.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    glommio::spawn_local(session::sweep_loop(shard.clone())).detach();
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
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve_connection(shard.clone(), stream)).detach();
    }
}

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let cfg = shard.http.clone().expect("HTTP configured");
    let handle = Rc::new(ConnHandle::new(&shard));
    let slot = shard.conns.register(handle.clone());
    shard.metrics.borrow_mut().counters.connections_opened += 1;

    let clock = io::ConnClock::new();
    let inflight = Rc::new(Cell::new(0usize));
    let io = io::HyperIo::new(stream, shard.clone(), clock.clone());
    let svc_shard = shard.clone();
    let svc_inflight = inflight.clone();
    let service = hyper::service::service_fn(move |req| {
        let shard = svc_shard.clone();
        let inflight = svc_inflight.clone();
        inflight.set(inflight.get() + 1);
        async move {
            let resp = handler::handle(shard, req).await;
            inflight.set(inflight.get() - 1);
            Ok::<_, std::convert::Infallible>(resp)
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
