//! TCP transport: newline-delimited JSON-RPC, the framing erlmcp uses on TCP.
//!
//! Every shard binds the same address with SO_REUSEPORT (glommio sets it), so
//! the kernel spreads new connections across cores and each connection lives
//! its whole life on the core that accepted it.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use super::conn;
use crate::runtime::shard::Shard;

/// Pause after an accept error (such as running out of file descriptors) so
/// the loop backs off instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(io::Error::from)
}

/// Accepts connections until the shard starts draining.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
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
                log::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Responses are written once per batch, so Nagle would only add delay.
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("shard {}: TCP_NODELAY: {e}", shard.id);
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            if let Err(e) = conn::serve(stream, shard.clone()).await {
                log::debug!("shard {}: connection {peer:?} ended: {e}", shard.id);
            }
        })
        .detach();
    }
    log::debug!("shard {}: stopped accepting", shard.id);
}
