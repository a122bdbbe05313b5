//! The new process's side of a binary upgrade (`serve --upgrade`): it asks
//! the running server for its listening sockets, sets itself up on them,
//! says `prepared`, and, when it keeps a store, waits for the old process
//! to release it before opening the files. The old side is
//! `Supervisor::offer_upgrade`; the conversation is `transport::handover`.
//!
//! Until `prepared` is sent, any failure of this process leaves the old
//! one serving as if nothing happened: it reads `error: WHY` (or the end of
//! the stream) and logs it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::ServeError;
use crate::runtime::process;
use crate::transport::handover;
use crate::transport::listeners::{Key, Kind, Listeners};

/// The conversation with the old process, from this side.
pub(super) struct Upgrade {
    conn: UnixStream,
    pub old_pid: u32,
    pub state_key: Vec<u8>,
    /// The sockets not yet taken over by this process's configuration.
    sockets: Vec<(Key, OwnedFd)>,
    prepared: bool,
    timeout: Duration,
}

/// Connections the old process accepted but never served, to serve here.
pub(super) type Orphans = Vec<(Kind, OwnedFd)>;

fn failed(why: String) -> ServeError {
    ServeError::Failed(format!("upgrade: {why}"))
}

impl Upgrade {
    /// Asks the server on `path` for its sockets.
    pub fn ask(path: &Path, timeout: Duration) -> Result<Self, ServeError> {
        let (conn, offer) = handover::ask(path).map_err(failed)?;
        log::info!(
            "upgrade: took {} listening socket(s) from pid {}",
            offer.sockets.len(),
            offer.pid
        );
        Ok(Upgrade {
            conn,
            old_pid: offer.pid,
            state_key: offer.state_key,
            sockets: offer.sockets,
            prepared: false,
            timeout,
        })
    }

    /// Listens for `kind` on `addr` with `shards` shards: on the old
    /// process's sockets for it when there are any, on new ones otherwise
    /// (the address changed). Returns the bound address.
    pub fn listen_shards(
        &mut self,
        listeners: &mut Listeners,
        kind: Kind,
        addr: SocketAddr,
        shards: usize,
    ) -> Result<SocketAddr, ServeError> {
        let listen = |source| process::ProcessError::Listen { addr, source };
        match listeners
            .adopt_shards(kind, addr, shards, &mut self.sockets)
            .map_err(listen)?
        {
            Some(bound) => Ok(bound),
            None => {
                log::warn!(
                    "upgrade: the old process had no {kind:?} listener on {addr}; listening anew"
                );
                process::check_port_free(addr)?;
                Ok(listeners.bind_shards(kind, addr, shards).map_err(listen)?)
            }
        }
    }

    /// The old process's socket of `kind` (the admin listener on `addr`,
    /// the control socket), if it had one.
    pub fn take_single(&mut self, kind: Kind, addr: Option<SocketAddr>) -> Option<OwnedFd> {
        let at = self.sockets.iter().position(|(k, _)| {
            k.kind == kind
                && match (k.addr, addr) {
                    (Some(a), Some(b)) => a == b || (b.port() == 0 && a.ip() == b.ip()),
                    (None, None) => true,
                    _ => false,
                }
        })?;
        Some(self.sockets.remove(at).1)
    }

    /// Everything that can fail before the old process stops has been
    /// done: tell it so (and systemd that this process is the service now).
    pub fn prepared(&mut self) -> Result<(), ServeError> {
        for (k, _) in self.sockets.drain(..) {
            log::warn!(
                "upgrade: the old process's {:?} listener on {:?} is not in this configuration; it closes with the old process",
                k.kind,
                k.addr
            );
        }
        process::notify_systemd(&format!("MAINPID={}", std::process::id()));
        handover::send_line(&self.conn, "prepared")
            .map_err(|e| failed(format!("telling pid {} we are prepared: {e}", self.old_pid)))?;
        self.prepared = true;
        log::info!(
            "upgrade: prepared; pid {} stops accepting and drains",
            self.old_pid
        );
        Ok(())
    }

    /// Waits (on a thread of its own) until the old process has drained
    /// and closed its store: it says `released`, or it is gone. The
    /// connections it accepted but never served arrive on the way; the
    /// receiver gets them once released (an empty list included).
    pub fn watch_release(&self) -> Result<Receiver<Orphans>, ServeError> {
        let conn = self
            .conn
            .try_clone()
            .map_err(|e| failed(format!("the upgrade connection: {e}")))?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (pid, limit) = (self.old_pid, self.timeout);
        std::thread::Builder::new()
            .name("tessera-upgrade".into())
            .spawn(move || {
                let started = Instant::now();
                match handover::await_release(&conn, limit) {
                    Ok(orphans) => {
                        log::info!(
                            "upgrade: pid {pid} released its store after {:.1} ms ({} connection(s) it accepted unserved handed over)",
                            started.elapsed().as_secs_f64() * 1e3,
                            orphans.len()
                        );
                        let _ = tx.send(orphans);
                    }
                    Err(e) => log::error!("upgrade: waiting for pid {pid} to release: {e}"),
                }
            })
            .map_err(|e| failed(format!("starting the upgrade thread: {e}")))?;
        Ok(rx)
    }

    /// [`Self::watch_release`], waited for here (a store is opened next).
    pub fn wait_released(&self) -> Result<Orphans, ServeError> {
        self.watch_release()?
            .recv_timeout(self.timeout + Duration::from_secs(1))
            .map_err(|_| {
                failed(format!(
                    "pid {} did not release its store within {} ms",
                    self.old_pid,
                    self.timeout.as_millis()
                ))
            })
    }

    /// This process could not start: the old one keeps serving (if it was
    /// not yet told `prepared`).
    pub fn failed(&self, why: &str) {
        if !self.prepared {
            let line = format!("error: {}", why.replace('\n', " "));
            let _ = handover::send_line(&self.conn, &line);
        }
    }
}
