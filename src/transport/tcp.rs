//! TCP transport: newline-delimited JSON-RPC, the framing erlmcp uses on TCP.
//!
//! Every shard listens on its own SO_REUSEPORT socket of the same address
//! (`transport::listeners`), so the kernel spreads new connections across cores and each connection lives
//! its whole life on the core that accepted it. At `max_connections_per_shard`
//! a new connection is accepted and closed at once (`connections_refused`);
//! so is one from a peer the allow/deny rules refuse (`transport::netrules`),
//! unread. With `--tls-cert` each connection's TLS handshake runs first
//! (`transport::tls`).

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

use super::netrules::Listener;
use super::tls::{Admission, Side};
use super::{conn, Net};

/// Pause after an accept error (such as running out of file descriptors) so
/// the loop backs off instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// A listener and its descriptor (glommio's listener does not expose it; the
/// shard needs it to shut the socket down if its executor dies).
pub(crate) struct Bound {
    pub listener: TcpListener,
    pub fd: RawFd,
}

/// Accepts on `fd`, a listening socket (`transport::listeners`).
pub(crate) fn listen_on(fd: OwnedFd) -> Bound {
    let fd = fd.into_raw_fd();
    // SAFETY: `into_raw_fd` just gave up ownership of `fd`, a listening
    // socket nothing else in this process holds by that number; the
    // listener takes it over and is its only owner from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Bound { listener, fd }
}

/// Serves one accepted connection in its own task (after its TLS handshake
/// when `--tls-cert` is on).
pub(crate) fn serve_accepted(net: Rc<Net>, stream: TcpStream) {
    let id = net.core.id;
    // Responses are written once per batch, so Nagle would only add delay.
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("shard {id}: TCP_NODELAY: {e}");
    }
    let pending = match net.tls.admit(Side::Tcp) {
        Admission::Plain => None,
        Admission::Handshake(p) => Some(p),
        Admission::Refused => {
            net.core
                .metrics
                .borrow_mut()
                .counters
                .tls_handshakes_refused += 1;
            return;
        }
    };
    glommio::spawn_local(async move {
        let peer = stream.peer_addr().ok();
        let fd = stream.as_raw_fd();
        net.track_socket(fd);
        let served = match pending {
            None => conn::serve(stream, net.clone(), conn::Kind::Tcp, None).await,
            Some(p) => match p.run(&net, stream).await {
                Some(tls) => {
                    conn::serve(tls.stream, net.clone(), conn::Kind::Tcp, tls.cert_name).await
                }
                None => Ok(()),
            },
        };
        if let Err(e) = served {
            log::debug!("shard {id}: connection {peer:?} ended: {e}");
        }
        net.untrack_socket(fd);
    })
    .detach();
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
        if !net.admits(Listener::Tcp, &stream) {
            drop(stream);
            continue;
        }
        if net.conns.live() >= net.limits.max_connections_per_shard {
            // Accepted and closed at once: the client sees EOF, not a hang
            // in the listen backlog.
            net.core.metrics.borrow_mut().counters.connections_refused += 1;
            drop(stream);
            continue;
        }
        serve_accepted(net.clone(), stream);
    }
    net.untrack_socket(fd);
    log::debug!("shard {id}: stopped accepting");
}
