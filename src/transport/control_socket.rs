//! The operator's control socket (`--upgrade-socket PATH`): a Unix socket,
//! mode 0600 (its owner only), on which `tessera reload --upgrade-socket
//! PATH` asks the running server to reload and reads the outcome. One
//! plain thread accepts one connection at a time; a request is one line
//! (at most [`REQUEST_BYTES_MAX`] bytes, read within [`IO_TIMEOUT`]) and is
//! handed to the main thread, which answers one line: `ok: ...` or
//! `error: ...`. `upgrade` is the exception: the connection itself goes to
//! the main thread, which holds the binary upgrade's conversation on it
//! (`transport::handover`). Nothing here touches a shard.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

/// Longest request line read.
pub const REQUEST_BYTES_MAX: u64 = 1024;
/// How long a client may take to send its request, and how long the
/// client side waits for the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One operator request, for the main thread to answer.
pub struct ControlRequest {
    pub command: String,
    pub reply: Sender<Result<String, String>>,
    /// `upgrade`: the connection, for the main thread to converse on.
    pub conn: Option<UnixStream>,
}

/// The listening socket; the file is removed when this drops, unless
/// another process took it over ([`ControlSocket::handed_over`]).
pub struct ControlSocket {
    path: PathBuf,
    pub requests: Receiver<ControlRequest>,
    /// A duplicate of the listening socket, for a hand-over.
    listener: OwnedFd,
    handed_over: Cell<bool>,
}

impl ControlSocket {
    /// Listens on `path`. A file left there by a process that is gone is
    /// replaced; a live server on it is an error.
    pub fn start(path: &Path) -> Result<ControlSocket, String> {
        let what = |e: std::io::Error| format!("--upgrade-socket {}: {e}", path.display());
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "--upgrade-socket {}: another server is listening on it",
                    path.display()
                ));
            }
            std::fs::remove_file(path).map_err(what)?;
        }
        let listener = UnixListener::bind(path).map_err(what)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(what)?;
        log::info!("control socket on {} (mode 0600)", path.display());
        Self::serve(path, listener)
    }

    /// Serves the socket a previous process listened on at `path` (a
    /// binary upgrade handed it over): the file stays where it is.
    pub(crate) fn adopt(path: &Path, fd: OwnedFd) -> Result<ControlSocket, String> {
        let listener = UnixListener::from(fd);
        log::info!("control socket on {} (taken over)", path.display());
        Self::serve(path, listener)
    }

    fn serve(path: &Path, listener: UnixListener) -> Result<ControlSocket, String> {
        let what = |e: std::io::Error| format!("--upgrade-socket {}: {e}", path.display());
        let dup = OwnedFd::from(listener.try_clone().map_err(what)?);
        // One request waits at a time; the accept thread blocks on it.
        let (tx, requests) = bounded(1);
        std::thread::Builder::new()
            .name("tessera-control".into())
            .spawn(move || accept_loop(listener, tx))
            .map_err(what)?;
        Ok(ControlSocket {
            path: path.to_owned(),
            requests,
            listener: dup,
            handed_over: Cell::new(false),
        })
    }

    /// A duplicate of the listening socket.
    pub(crate) fn listener(&self) -> std::io::Result<OwnedFd> {
        self.listener.try_clone()
    }

    /// The next process serves the socket now: leave its file in place.
    pub(crate) fn handed_over(&self) {
        self.handed_over.set(true);
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if !self.handed_over.get() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(listener: UnixListener, tx: Sender<ControlRequest>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if serve_one(conn, &tx).is_err() {
            return; // the main thread is gone: the server is stopping
        }
    }
}

/// Reads one request, waits for the main thread's answer, writes it back.
/// Err only when the main thread no longer takes requests.
fn serve_one(mut conn: UnixStream, tx: &Sender<ControlRequest>) -> Result<(), ()> {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new((&conn).take(REQUEST_BYTES_MAX)).read_line(&mut line);
    if read.is_err() || line.is_empty() {
        return Ok(());
    }
    let (reply, answer) = bounded(1);
    let command = line.trim().to_owned();
    let upgrade = command == "upgrade";
    let request = ControlRequest {
        conn: if upgrade { conn.try_clone().ok() } else { None },
        command,
        reply,
    };
    tx.send(request).map_err(drop)?;
    if upgrade {
        // The main thread conversed on the connection itself.
        let _ = answer.recv();
        return Ok(());
    }
    let text = match answer.recv() {
        Ok(Ok(done)) => format!("ok: {done}\n"),
        Ok(Err(why)) => format!("error: {why}\n"),
        Err(_) => "error: the server is stopping\n".to_owned(),
    };
    let _ = conn.write_all(text.as_bytes());
    Ok(())
}

/// The client side: sends `command` to the server on `path`; its answer
/// (`Ok` for `ok: ...`, `Err` for `error: ...` or a failure to ask).
pub fn ask(path: &Path, command: &str) -> Result<String, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| format!("no answer: {e}"))?;
    let line = line.trim_end();
    match (line.strip_prefix("ok: "), line.strip_prefix("error: ")) {
        (Some(done), _) => Ok(done.to_owned()),
        (_, Some(why)) => Err(why.to_owned()),
        _ => Err(format!("unexpected answer {line:?}")),
    }
}
