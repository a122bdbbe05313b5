//! TCP transport: newline-delimited JSON-RPC, the framing erlmcp uses on TCP.
//!
//! Every shard binds the same address with SO_REUSEPORT (glommio sets it), so
//! the kernel spreads new connections across cores and each connection lives
//! its whole life on the core that accepted it. At `max_connections_per_shard`
//! a new connection is accepted and closed at once (`connections_refused`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use super::{conn, Net};

/// Pause after an accept error (such as running out of file descriptors) so
/// the loop backs off instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Pending connections the kernel queues per listener (the kernel caps it
/// at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// A listener and its descriptor (glommio's listener does not expose it; the
/// shard needs it to shut the socket down if its executor dies).
pub(crate) struct Bound {
    pub listener: TcpListener,
    pub fd: RawFd,
}

/// Binds `addr` with SO_REUSEPORT so every shard can listen on it.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<Bound> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sk = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    let fd = sk.into_raw_fd();
    // SAFETY: `into_raw_fd` just gave up ownership of `fd`, a bound and
    // listening socket nothing else holds; the listener takes it over and is
    // the only owner from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(Bound { listener, fd })
}

/// Accepts connections until the shard starts draining.
pub(crate) async fn accept_loop(net: Rc<Net>, bound: Bound) {
    let Bound { listener, fd } = bound;
    let id = net.core.id;
    net.track_socket(fd);
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
                log::warn!("shard {id}: accept failed: {e}");
                net.core.metrics.borrow_mut().counters.accept_errors += 1;
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if net.conns.live() >= net.limits.max_connections_per_shard {
            // Accepted and closed at once: the client sees EOF, not a hang
            // in the listen backlog.
            net.core.metrics.borrow_mut().counters.connections_refused += 1;
            drop(stream);
            continue;
        }
        // Responses are written once per batch, so Nagle would only add delay.
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("shard {id}: TCP_NODELAY: {e}");
        }
        let net = net.clone();
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            let fd = stream.as_raw_fd();
            net.track_socket(fd);
            if let Err(e) = conn::serve(stream, net.clone(), conn::Kind::Tcp).await {
                log::debug!("shard {id}: connection {peer:?} ended: {e}");
            }
            net.untrack_socket(fd);
        })
        .detach();
    }
    net.untrack_socket(fd);
    log::debug!("shard {id}: stopped accepting");
}
