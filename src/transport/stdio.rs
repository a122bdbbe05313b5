//! stdio transport: one MCP client on stdin/stdout.
//!
//! glommio polls sockets, not arbitrary pipes, so two plain threads pump bytes
//! between the process's stdin/stdout and one end of a Unix socket pair; the
//! shard serves the other end with the same NDJSON driver as TCP. stdout
//! carries nothing but JSON-RPC: logs and reports go to stderr.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

const PUMP_CHUNK_BYTES: usize = 64 * 1024;

/// The process side of the stdio bridge.
pub(crate) struct StdioBridge {
    /// The end the shard serves; move it into the shard's thread.
    pub shard_end: UnixStream,
    /// Finishes once everything the shard wrote has reached stdout.
    pub stdout_pump: JoinHandle<()>,
}

pub(crate) fn start() -> io::Result<StdioBridge> {
    let (ours, shard_end) = UnixStream::pair()?;
    let mut to_shard = ours.try_clone()?;
    let mut from_shard = ours;

    thread::Builder::new()
        .name("tessera-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; PUMP_CHUNK_BYTES];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to_shard.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("stdio: reading stdin failed: {e}");
                        break;
                    }
                }
            }
            // The shard sees EOF, finishes what it has read, and closes its end.
            let _ = to_shard.shutdown(Shutdown::Write);
        })?;

    let stdout_pump = thread::Builder::new()
        .name("tessera-stdout".into())
        .spawn(move || {
            let mut stdout = io::stdout().lock();
            let mut buf = vec![0u8; PUMP_CHUNK_BYTES];
            loop {
                match from_shard.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stdout
                            .write_all(&buf[..n])
                            .and_then(|()| stdout.flush())
                            .is_err()
                        {
                            // The client closed stdout; the shard's writes will now fail too.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })?;

    Ok(StdioBridge {
        shard_end,
        stdout_pump,
    })
}
