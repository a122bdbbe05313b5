//! Transports: the only layer that touches client sockets and pipes. They
//! move bytes between the network and `server::session::Session`, framing
//! messages as NDJSON (TCP, stdio) or Streamable HTTP, and own the
//! per-connection bounds.
//!
//! [`Net`] is what the transports of one shard share: the connection table
//! (so shutdown can wake every connection), the read and write scratch
//! buffers every connection of the core uses in turn, the sockets a dying
//! executor must shut, and the MCP service they feed.

pub(crate) mod admin;
pub(crate) mod conn;
pub mod control_socket;
pub(crate) mod handover;
pub(crate) mod http;
pub(crate) mod listeners;
pub(crate) mod netrules;
pub(crate) mod stdio;
pub(crate) mod tcp;
pub(crate) mod tls;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::Duration;

use crate::protocol::PARSE_PADDING;
use crate::runtime::local::Flag;
use crate::runtime::supervisor::Dice;
use crate::server::core::Core;
use crate::server::Notifier;
use netrules::{Listener, NetRules};

/// After a shutdown-initiated close (a drain: shutdown or upgrade), how
/// long unread client bytes are read and dropped after our FIN, so closing
/// with them queued does not turn into a TCP reset that could destroy
/// responses the client has not read yet. The client sees the end of the
/// stream and knows that whatever it sent unanswered was never handled.
pub(crate) const LINGER: Duration = Duration::from_millis(200);

/// Bytes read from a socket in one call. Every connection on the core reads
/// into the same scratch buffer of this size, so an idle connection holds no
/// read buffer at all.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The bounds the transports enforce; see the public `config::Limits` for
/// what each does at its bound.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_message_bytes: usize,
    pub max_inflight_per_conn: usize,
    pub max_output_buffer_bytes: usize,
    pub max_connections_per_shard: usize,
    pub idle_timeout_ms: u64,
    pub max_restarts: u32,
    pub restart_period_ms: u64,
    /// Fraction of NDJSON lines (and HTTP requests) after which the
    /// connection handler panics (`--chaos-conn-panic-rate`).
    pub chaos_conn_panic_rate: f64,
}

impl Limits {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn restart_period(&self) -> Duration {
        Duration::from_millis(self.restart_period_ms)
    }
}

/// Buffers shared by the connections of one core. Only one connection runs at
/// a time, so one set serves them all.
pub(crate) struct Scratch {
    /// `READ_CHUNK_BYTES` plus parser padding.
    pub read: Vec<u8>,
    /// Responses of the batch being processed, before they are written.
    pub write: Vec<u8>,
}

/// The transports' state on one shard.
pub(crate) struct Net {
    /// The MCP service the connections feed.
    pub core: Rc<Core>,
    pub limits: Limits,
    pub conns: ConnTable,
    pub scratch: RefCell<Scratch>,
    /// Listening and connected sockets this shard serves. If the executor
    /// dies, glommio 0.9 leaks its tasks (and the sockets in them) instead of
    /// dropping them; the thread shuts these down so clients see the
    /// connection end and the kernel stops queueing connections for a
    /// listener nobody accepts on.
    sockets: RefCell<HashSet<RawFd>>,
    dice: Dice,
    /// Raised when the shard stops accepting and drains (shared with `core`).
    pub shutdown: Rc<Flag>,
    /// `--allow-cidr`/`--deny-cidr`, checked at accept; a reload replaces
    /// them (live connections stay).
    rules: RefCell<NetRules>,
    /// `--tls-cert`: the handshakes this shard runs (off: plain sockets).
    pub tls: tls::ShardTls,
}

/// Who is at the other end of a connection, as far as the transport knows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The client's address (keys the rate limiter when there is no
    /// principal).
    pub ip: Option<std::net::IpAddr>,
    /// The subject common name of the client certificate verified in the
    /// TLS handshake (`--tls-client-ca`); the principal under `--auth cert`.
    pub cert_name: Option<Rc<str>>,
}

impl Net {
    pub fn new(core: Rc<Core>, limits: Limits, rules: NetRules) -> Self {
        let shutdown = core.shutdown.clone();
        let seed = (core.id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Self {
            core,
            limits,
            conns: ConnTable::default(),
            scratch: RefCell::new(Scratch {
                read: vec![0; READ_CHUNK_BYTES + PARSE_PADDING],
                write: Vec::with_capacity(READ_CHUNK_BYTES),
            }),
            sockets: RefCell::new(HashSet::new()),
            dice: Dice::new(seed),
            shutdown,
            rules: RefCell::new(rules),
            tls: tls::ShardTls::default(),
        }
    }

    /// Whether `listener` serves the peer of `stream`, just accepted; a
    /// refusal is counted (by rule) and logged at debug, and the caller
    /// closes the stream unread. With no rules the peer's address is not
    /// even looked up.
    pub fn admits(&self, listener: Listener, stream: &glommio::net::TcpStream) -> bool {
        let rules = self.rules.borrow();
        if rules.is_empty() {
            return true;
        }
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let Err(refusal) = rules.check(listener, peer) else {
            return true;
        };
        log::debug!(
            "shard {}: {} peer {peer:?} refused ({})",
            self.core.id,
            listener.name(),
            refusal.label()
        );
        let mut m = self.core.metrics.borrow_mut();
        m.counters.connections_denied += 1;
        m.denied.count(refusal.label(), listener.index());
        false
    }

    /// Replaces the allow and deny rules (a reload); connections already
    /// served stay.
    pub fn set_rules(&self, rules: NetRules) {
        *self.rules.borrow_mut() = rules;
    }

    /// Whether a chaos roll says the connection handler should panic now.
    pub fn chaos_conn_panic(&self) -> bool {
        self.dice.roll(self.limits.chaos_conn_panic_rate)
    }

    /// Sleeps for `period`; true (at once) when shutdown began instead.
    /// Periodic per-shard tasks loop on it and end with the shard.
    pub async fn sleep_unless_shutdown(&self, period: Duration) -> bool {
        futures_lite::future::or(
            async {
                glommio::timer::sleep(period).await;
                false
            },
            async {
                self.shutdown.wait().await;
                true
            },
        )
        .await
    }

    pub fn track_socket(&self, fd: RawFd) {
        self.sockets.borrow_mut().insert(fd);
    }

    pub fn untrack_socket(&self, fd: RawFd) {
        self.sockets.borrow_mut().remove(&fd);
    }

    /// After the executor died: ends every socket it served. Shut down, not
    /// closed: the leaked tasks still own the descriptors.
    pub fn shutdown_sockets(&self) -> usize {
        let fds: Vec<_> = self.sockets.borrow_mut().drain().collect();
        for &fd in &fds {
            // SAFETY: `fd` is a socket this shard opened and registered with
            // `track_socket`, and it is still open: the task that owns it was
            // leaked with the dead executor, never dropped, so nothing closed
            // (or reused) the number. shutdown(2) only changes socket state.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        fds.len()
    }

    /// After the executor died: frees the scratch buffers its leaked tasks
    /// would keep alive.
    pub fn release_buffers(&self) {
        let mut scratch = self.scratch.borrow_mut();
        scratch.read = Vec::new();
        scratch.write = Vec::new();
    }
}

/// The shard's view of one live connection: what async handlers need to
/// hand back a response, what notifications need to reach the client, and
/// what shutdown needs to wake it.
pub(crate) struct ConnHandle {
    /// Encoded responses finished by async handlers, not yet written.
    pub ready: RefCell<Vec<u8>>,
    /// Requests whose handlers are still running.
    pub inflight: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    /// `ready` beyond this drops notifications (not responses).
    max_ready_bytes: usize,
    core: Weak<Core>,
    /// Subject to `idle_timeout_ms` (TCP connections).
    pub idle_tracked: Cell<bool>,
    /// Messages completed so far; the idle sweep watches it move.
    pub messages: Cell<u64>,
    /// Idle-sweep bookkeeping: the count at the last sweep, and how many
    /// sweeps in a row saw no message and nothing in flight.
    pub seen_messages: Cell<u64>,
    pub quiet_sweeps: Cell<u32>,
    /// Set by the sweep: the connection must close.
    pub expired: Cell<bool>,
}

impl ConnHandle {
    pub fn new(net: &Net) -> Self {
        Self {
            ready: RefCell::new(Vec::new()),
            inflight: Cell::new(0),
            waker: RefCell::new(None),
            max_ready_bytes: net.limits.max_output_buffer_bytes,
            core: Rc::downgrade(&net.core),
            idle_tracked: Cell::new(false),
            messages: Cell::new(0),
            seen_messages: Cell::new(0),
            quiet_sweeps: Cell::new(0),
            expired: Cell::new(false),
        }
    }

    /// Records the connection task's waker; cheap when it has not changed.
    pub fn set_waker(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Queues a response an async handler finished (possibly empty).
    pub fn respond(&self, response: &[u8]) {
        if response.is_empty() {
            return;
        }
        self.ready.borrow_mut().extend_from_slice(response);
        self.wake();
    }

    /// An async handler counted in `inflight` ended (answered or cancelled).
    pub fn finish_one(&self) {
        let n = self.inflight.get();
        assert!(n > 0, "more handlers finished than were started");
        self.inflight.set(n - 1);
        self.wake();
    }
}

impl Notifier for ConnHandle {
    /// Queues a server-initiated message as one NDJSON line.
    fn notify(&self, message: &[u8]) {
        let mut ready = self.ready.borrow_mut();
        if ready.len() + message.len() > self.max_ready_bytes {
            if let Some(core) = self.core.upgrade() {
                core.metrics.borrow_mut().counters.notifications_dropped += 1;
            }
            return;
        }
        ready.extend_from_slice(message);
        ready.push(b'\n');
        drop(ready);
        self.wake();
    }
}

/// Live connections, so shutdown can wake every one of them.
#[derive(Default)]
pub(crate) struct ConnTable {
    slots: RefCell<Vec<Option<Rc<ConnHandle>>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

impl ConnTable {
    pub fn register(&self, handle: Rc<ConnHandle>) -> usize {
        self.live.set(self.live.get() + 1);
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = self.free.borrow_mut().pop() {
            assert!(slots[slot].is_none(), "a free connection slot is in use");
            slots[slot] = Some(handle);
            return slot;
        }
        slots.push(Some(handle));
        slots.len() - 1
    }

    pub fn unregister(&self, slot: usize) {
        let was = self.slots.borrow_mut()[slot].take();
        assert!(was.is_some(), "connection slot {slot} unregistered twice");
        self.free.borrow_mut().push(slot);
        self.live.set(self.live.get() - 1);
    }

    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Every live connection's handle.
    pub fn handles(&self) -> Vec<Rc<ConnHandle>> {
        self.slots.borrow().iter().flatten().cloned().collect()
    }

    pub fn wake_all(&self) {
        for h in self.handles() {
            h.wake();
        }
    }
}
