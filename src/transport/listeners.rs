//! The listening sockets, owned by the main thread for the life of the
//! process: one SO_REUSEPORT socket per shard and address for TCP and for
//! HTTP, the admin listener and the control socket.
//!
//! A shard accepts on duplicates of its own sockets; the main thread keeps
//! the originals. So a binary upgrade can hand every socket to the next
//! process (`transport::handover`) and the kernel's accept queues never
//! lose their last owner: a connection waiting in a queue is accepted by
//! whichever process accepts next, never reset. A shard that crashed had
//! its sockets shut down (its dead executor may still hold an armed accept
//! on them), so its restart binds fresh ones ([`Listeners::rebind`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// Pending connections the kernel queues per listener (the kernel caps it
/// at `net.core.somaxconn`).
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// What a socket listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Tcp,
    Http,
    Admin,
    Control,
}

/// Which socket it is: its kind, its address (none for the control
/// socket, a Unix socket) and the shard that accepts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Key {
    pub kind: Kind,
    pub addr: Option<SocketAddr>,
    pub shard: usize,
}

/// Every listening socket of the process.
#[derive(Default)]
pub(crate) struct Listeners {
    entries: Vec<(Key, OwnedFd)>,
}

/// Binds and listens on `addr` with SO_REUSEPORT, so every shard (and the
/// next process) can listen on the same address.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = socket2::Domain::for_address(addr);
    let sk = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    Ok(sk.into())
}

/// The address a socket is bound to.
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

impl Listeners {
    /// Listens on `addr` for `kind` with one socket per shard (port 0
    /// becomes one free port, shared by all). Returns the bound address.
    pub fn bind_shards(
        &mut self,
        kind: Kind,
        addr: SocketAddr,
        shards: usize,
    ) -> io::Result<SocketAddr> {
        assert!(shards > 0, "a server has at least one shard");
        let first = bind(addr)?;
        let bound = local_addr(first.as_fd())?;
        self.push(kind, bound, 0, first);
        for shard in 1..shards {
            self.push(kind, bound, shard, bind(bound)?);
        }
        Ok(bound)
    }

    /// Takes over the sockets another process listened on for `kind` at
    /// `addr` (port 0: whatever port it had on the same IP) and spreads
    /// them over `shards` shards: socket j goes to shard j mod `shards`, so
    /// none is closed when the shard count shrinks, and a shard left
    /// without one (the count grew) binds a new one into the same group.
    /// None when `received` has no socket that matches.
    pub fn adopt_shards(
        &mut self,
        kind: Kind,
        addr: SocketAddr,
        shards: usize,
        received: &mut Vec<(Key, OwnedFd)>,
    ) -> io::Result<Option<SocketAddr>> {
        let matches = |k: &Key| {
            k.kind == kind
                && k.addr
                    .is_some_and(|a| a == addr || (addr.port() == 0 && a.ip() == addr.ip()))
        };
        let (mut mine, rest): (Vec<_>, Vec<_>) = received.drain(..).partition(|(k, _)| matches(k));
        *received = rest;
        let Some(bound) = mine.first().and_then(|(k, _)| k.addr) else {
            return Ok(None);
        };
        mine.sort_by_key(|(k, _)| k.shard);
        let mut served = vec![false; shards];
        for (j, (_, fd)) in mine.into_iter().enumerate() {
            assert_eq!(local_addr(fd.as_fd())?, bound, "a handed-over socket moved");
            served[j % shards] = true;
            self.push(kind, bound, j % shards, fd);
        }
        for (shard, _) in served.iter().enumerate().filter(|(_, s)| !**s) {
            self.push(kind, bound, shard, bind(bound)?);
        }
        Ok(Some(bound))
    }

    /// Keeps a socket listening for something other than a shard (the
    /// admin listener, the control socket).
    pub fn keep(&mut self, kind: Kind, addr: Option<SocketAddr>, fd: OwnedFd) {
        self.entries.push((
            Key {
                kind,
                addr,
                shard: 0,
            },
            fd,
        ));
    }

    fn push(&mut self, kind: Kind, addr: SocketAddr, shard: usize, fd: OwnedFd) {
        let key = Key {
            kind,
            addr: Some(addr),
            shard,
        };
        self.entries.push((key, fd));
    }

    /// Duplicates of the sockets `shard` accepts on for `kind`.
    pub fn for_shard(&self, kind: Kind, shard: usize) -> io::Result<Vec<OwnedFd>> {
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == kind && k.shard == shard)
            .map(|(_, fd)| fd.try_clone())
            .collect()
    }

    /// After `shard` crashed and its sockets were shut down: binds new ones
    /// on the same addresses.
    pub fn rebind(&mut self, shard: usize) -> io::Result<()> {
        for (k, fd) in self.entries.iter_mut() {
            if k.shard == shard && matches!(k.kind, Kind::Tcp | Kind::Http) {
                let addr = k.addr.expect("shard sockets have an address");
                *fd = bind(addr)?;
            }
        }
        Ok(())
    }

    /// Every socket, for a hand-over.
    pub fn all(&self) -> impl Iterator<Item = (Key, BorrowedFd<'_>)> {
        self.entries.iter().map(|(k, fd)| (*k, fd.as_fd()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The raw descriptor numbers, for logs.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(k, fd)| match k.addr {
                Some(a) => format!("{:?} {a} shard {} (fd {})", k.kind, k.shard, fd.as_raw_fd()),
                None => format!("{:?} (fd {})", k.kind, fd.as_raw_fd()),
            })
            .collect();
        parts.join(", ")
    }
}

/// Connections to `addrs` that this process accepted but nobody serves:
/// io_uring completed an accept just as a stopping shard cancelled it, and
/// glommio drops such a completion with its descriptor still open. Call
/// only once every shard's executor is gone (every connection a shard
/// served is closed by then), so what is left belongs to no one.
pub(crate) fn orphaned_connections(addrs: &[SocketAddr]) -> Vec<(SocketAddr, OwnedFd)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let numbers: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    let mut found = Vec::new();
    for raw in numbers {
        // SAFETY: `raw` was open in this process a moment ago; borrowing
        // it only for getsockname/getsockopt (which fail harmlessly on a
        // number closed meanwhile or not a socket) takes no ownership.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let sock = socket2::SockRef::from(&fd);
        let accepted = sock.is_listener().is_ok_and(|l| !l)
            && sock.peer_addr().is_ok()
            && sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| addrs.contains(&a));
        if accepted {
            let local = local_addr(fd).expect("checked above");
            // SAFETY: an accepted connection to our own listening address
            // that no task owns (see above): nothing else will close or
            // use this number, so it is ours to own.
            found.push((local, unsafe { OwnedFd::from_raw_fd(raw) }));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_spread_over_fewer_shards_and_new_shards_bind_more() {
        let mut old = Listeners::default();
        let addr = old
            .bind_shards(Kind::Tcp, "127.0.0.1:0".parse().unwrap(), 3)
            .unwrap();
        let mut received: Vec<_> = old
            .all()
            .map(|(k, fd)| (k, fd.try_clone_to_owned().unwrap()))
            .collect();
        let mut fewer = Listeners::default();
        let any_port = "127.0.0.1:0".parse().unwrap();
        let got = fewer
            .adopt_shards(Kind::Tcp, any_port, 2, &mut received)
            .unwrap();
        assert_eq!(got, Some(addr));
        assert!(received.is_empty());
        assert_eq!(fewer.for_shard(Kind::Tcp, 0).unwrap().len(), 2);
        assert_eq!(fewer.for_shard(Kind::Tcp, 1).unwrap().len(), 1);

        let mut again: Vec<_> = old
            .all()
            .map(|(k, fd)| (k, fd.try_clone_to_owned().unwrap()))
            .collect();
        let mut more = Listeners::default();
        more.adopt_shards(Kind::Tcp, addr, 4, &mut again).unwrap();
        for shard in 0..4 {
            let fds = more.for_shard(Kind::Tcp, shard).unwrap();
            assert_eq!(fds.len(), 1, "shard {shard}");
            assert_eq!(local_addr(fds[0].as_fd()).unwrap(), addr);
        }
        let mut none = Vec::new();
        assert_eq!(
            more.adopt_shards(Kind::Http, addr, 1, &mut none).unwrap(),
            None
        );
    }
}
