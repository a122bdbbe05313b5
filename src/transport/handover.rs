//! The binary upgrade's conversation on the upgrade socket
//! (`--upgrade-socket`), between the running server ("old") and a process
//! started with `--upgrade` ("new"). One Unix stream connection:
//!
//! 1. new → old: `upgrade`, one line (the control socket's request).
//! 2. old → new: one JSON line (protocol, the old's pid, its MRTR/cursor
//!    key, and the keys of its listening sockets), then each socket as
//!    SCM_RIGHTS ancillary data on one byte of its own, in the same order.
//! 3. new → old: `prepared` once everything that can fail has been done, or
//!    `error: WHY`. Anything else (end of stream, a timeout) is a failure:
//!    the old keeps serving as before (rollback).
//! 4. old → new, once the old has drained, flushed and closed its store:
//!    `orphans KIND,KIND,...` and each connection as one descriptor, when
//!    any were accepted but never served (see
//!    `listeners::orphaned_connections`), then `released`. Only then does
//!    a new process with a store open it.
//!
//! Lines are read one byte at a time so no read ever swallows a byte that
//! carries a descriptor. Nothing here knows what the sockets are for.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::listeners::{Key, Kind};

/// The conversation's name and version; both sides must speak the same.
pub(crate) const PROTOCOL: &str = "tessera-upgrade/1";
/// Longest line either side sends (the offer names every socket).
const LINE_BYTES_MAX: usize = 1 << 20;
/// Most sockets one offer may carry.
pub(crate) const SOCKETS_MAX: usize = 4096;
/// How long one side waits for a line the other is about to send (the
/// offer, `released` after a read said it is coming).
pub(crate) const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The old process's offer as the new one receives it.
pub(crate) struct Offer {
    pub pid: u32,
    pub state_key: Vec<u8>,
    pub sockets: Vec<(Key, OwnedFd)>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    protocol: String,
    pid: u32,
    /// Hex.
    state_key: String,
    listeners: Vec<Key>,
}

/// Old side: sends the offer on `conn`.
pub(crate) fn offer<'a>(
    conn: &UnixStream,
    state_key: &[u8],
    sockets: impl Iterator<Item = (Key, BorrowedFd<'a>)>,
) -> io::Result<()> {
    let sockets: Vec<_> = sockets.collect();
    assert!(
        sockets.len() <= SOCKETS_MAX,
        "more sockets than an offer carries"
    );
    let header = Header {
        protocol: PROTOCOL.into(),
        pid: std::process::id(),
        state_key: state_key.iter().map(|b| format!("{b:02x}")).collect(),
        listeners: sockets.iter().map(|(k, _)| *k).collect(),
    };
    let mut line = serde_json::to_vec(&header).map_err(io::Error::other)?;
    line.push(b'\n');
    (&*conn).write_all(&line)?;
    for (_, fd) in &sockets {
        send_fd(conn, fd.as_raw_fd())?;
    }
    Ok(())
}

/// Old side: hands over connections accepted but never served, then
/// says `released`.
pub(crate) fn release<'a>(
    conn: &UnixStream,
    orphans: impl Iterator<Item = (Kind, BorrowedFd<'a>)>,
) -> io::Result<()> {
    let orphans: Vec<_> = orphans.take(SOCKETS_MAX).collect();
    if !orphans.is_empty() {
        let kinds: Vec<String> = orphans
            .iter()
            .map(|(k, _)| serde_json::to_string(k).map_err(io::Error::other))
            .collect::<io::Result<_>>()?;
        send_line(conn, &format!("orphans {}", kinds.join(",")))?;
        for (_, fd) in &orphans {
            send_fd(conn, fd.as_raw_fd())?;
        }
    }
    send_line(conn, "released")
}

/// New side, after `prepared`: waits for `released` (or the end of the
/// stream: the old process is gone) up to `limit`; the orphaned
/// connections it handed over on the way.
pub(crate) fn await_release(
    conn: &UnixStream,
    limit: Duration,
) -> io::Result<Vec<(Kind, OwnedFd)>> {
    let deadline = std::time::Instant::now() + limit;
    let mut orphans = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no release in time",
            ));
        }
        if !readable(conn, left.min(Duration::from_secs(1))) {
            continue;
        }
        let line = match read_line(conn) {
            Ok(Some(l)) => l,
            // Gone: its files and sockets are closed.
            Ok(None) | Err(_) => return Ok(orphans),
        };
        if line == "released" {
            return Ok(orphans);
        }
        let Some(kinds) = line.strip_prefix("orphans ") else {
            log::warn!("upgrade: unexpected {line:?} from the old process");
            continue;
        };
        for k in kinds.split(',').take(SOCKETS_MAX) {
            let kind: Kind = serde_json::from_str(k).map_err(io::Error::other)?;
            orphans.push((kind, recv_fd(conn)?));
        }
    }
}

fn send_fd(conn: &UnixStream, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    let sent = sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(b"L")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    if sent != 1 {
        return Err(io::Error::other("short sendmsg"));
    }
    Ok(())
}

/// New side: asks the server on `path` for its sockets. The connection
/// stays open for the rest of the conversation.
pub(crate) fn ask(path: &Path) -> Result<(UnixStream, Offer), String> {
    let what = |e: io::Error| format!("--upgrade-socket {}: {e}", path.display());
    let conn = UnixStream::connect(path).map_err(what)?;
    conn.set_read_timeout(Some(LINE_TIMEOUT)).map_err(what)?;
    send_line(&conn, "upgrade").map_err(what)?;
    let line = read_line(&conn)
        .map_err(what)?
        .ok_or_else(|| format!("{}: the server closed the connection", path.display()))?;
    if let Some(why) = line.strip_prefix("error: ") {
        return Err(format!("{}: the server refused: {why}", path.display()));
    }
    let header: Header = serde_json::from_str(&line)
        .map_err(|e| format!("{}: not an upgrade offer ({e}): {line:.80}", path.display()))?;
    if header.protocol != PROTOCOL {
        return Err(format!(
            "{}: the server speaks {}, this binary {PROTOCOL}",
            path.display(),
            header.protocol
        ));
    }
    if header.listeners.len() > SOCKETS_MAX {
        return Err(format!("{}: offer names too many sockets", path.display()));
    }
    let state_key = (0..header.state_key.len() / 2)
        .map(|i| u8::from_str_radix(&header.state_key[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("{}: bad state key in the offer", path.display()))?;
    let mut sockets = Vec::with_capacity(header.listeners.len());
    for key in header.listeners {
        let fd = recv_fd(&conn).map_err(what)?;
        sockets.push((key, fd));
    }
    Ok((
        conn,
        Offer {
            pid: header.pid,
            state_key,
            sockets,
        },
    ))
}

/// Receives one descriptor (on its one byte).
fn recv_fd(conn: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the offer ended early",
        ));
    }
    let mut got = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for
                // us (SCM_RIGHTS); nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got.ok_or_else(|| io::Error::other("a socket of the offer arrived without its descriptor"))
}

/// Sends one line.
pub(crate) fn send_line(conn: &UnixStream, line: &str) -> io::Result<()> {
    (&*conn).write_all(format!("{line}\n").as_bytes())
}

/// Reads one line (without its newline), within the connection's read
/// timeout; None at end of stream.
pub(crate) fn read_line(conn: &UnixStream) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*conn).read(&mut byte)? {
            0 if line.is_empty() => return Ok(None),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "half a line")),
            _ if byte[0] == b'\n' => break,
            _ if line.len() >= LINE_BYTES_MAX => return Err(io::Error::other("line too long")),
            _ => line.push(byte[0]),
        }
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::other("line is not UTF-8"))
}

/// Whether `conn` has something to read (or was closed) within `wait`.
pub(crate) fn readable(conn: &UnixStream, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    let ms =
        PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::listeners::{Kind, Listeners};
    use std::os::fd::AsFd;

    #[test]
    fn an_offer_carries_every_socket_and_the_key() {
        let dir = std::env::temp_dir().join(format!("tessera-handover-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let mut l = Listeners::default();
        let addr = l
            .bind_shards(Kind::Http, "127.0.0.1:0".parse().unwrap(), 3)
            .unwrap();
        let path = dir.clone();
        let asker = std::thread::spawn(move || ask(&path));
        let (conn, _) = server.accept().unwrap();
        assert_eq!(read_line(&conn).unwrap().as_deref(), Some("upgrade"));
        offer(&conn, &[1, 2, 0xab], l.all()).unwrap();
        let (new_side, got) = asker.join().unwrap().unwrap();
        assert_eq!(got.pid, std::process::id());
        assert_eq!(got.state_key, vec![1, 2, 0xab]);
        assert_eq!(got.sockets.len(), 3);
        for (i, (k, fd)) in got.sockets.iter().enumerate() {
            assert_eq!(k.shard, i);
            assert_eq!(
                super::super::listeners::local_addr(fd.as_fd()).unwrap(),
                addr
            );
        }
        send_line(&new_side, "prepared").unwrap();
        assert!(readable(&conn, Duration::from_secs(5)));
        assert_eq!(read_line(&conn).unwrap().as_deref(), Some("prepared"));
        drop(new_side);
        assert_eq!(read_line(&conn).unwrap(), None);
        let _ = std::fs::remove_file(&dir);
    }
}
