//! Test harness: starts the real `tessera` binary on an ephemeral port and
//! talks to it over real sockets. Every wait is bounded, and a server is
//! stopped (SIGTERM, then SIGKILL) when its handle drops, so a failing test
//! never leaves a process behind.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn tessera_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera"))
}

/// The loadgen is another package of the workspace; `cargo test --workspace`
/// builds it next to the server binary.
pub fn loadgen_bin() -> PathBuf {
    let p = tessera_bin().with_file_name("tessera-loadgen");
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// CPUs this test process may use.
pub fn allowed_cores() -> Vec<usize> {
    tessera::runtime::cores::allowed_cores().expect("CPU affinity")
}

pub struct Server {
    child: Child,
    pub addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
}

impl Server {
    /// Starts `tessera serve --tcp 127.0.0.1:0 <args>` and waits until it is
    /// listening.
    pub fn start(args: &[&str]) -> Server {
        let mut full = vec!["serve", "--tcp", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let mut s = Server::spawn(&full, Stdio::null());
        let line = s
            .wait_for_stderr("listening on tcp://", IO_TIMEOUT)
            .unwrap_or_else(|| panic!("server did not start; stderr:\n{}", s.stderr()));
        let addr = line
            .split("tcp://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        s.addr = Some(addr.parse().unwrap());
        s
    }

    /// Spawns the binary with `args` and collects stderr in the background.
    pub fn spawn(args: &[&str], stdin: Stdio) -> Server {
        let mut child = Command::new(tessera_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera");
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        Server {
            child,
            addr: None,
            stderr,
            lines,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("server listens on TCP")
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Sends a signal and waits (bounded) for the exit status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        self.wait_exit(IO_TIMEOUT)
            .expect("server did not exit after the signal")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the stderr reader catch up with the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A line-oriented JSON-RPC client over one TCP connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next_id: 1000,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, v: &Value) {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Reads one line; panics on timeout or EOF.
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read (timed out?)");
        assert!(n > 0, "server closed the connection");
        line
    }

    pub fn recv(&mut self) -> Value {
        let line = self.recv_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON from server ({e}): {line}"))
    }

    /// True when the server closes the connection within the timeout.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        self.send(&msg);
        let resp = self.recv();
        assert_eq!(resp["id"], json!(id), "response to another request: {resp}");
        resp
    }

    pub fn initialize(&mut self) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
        );
        assert!(r["result"].is_object(), "initialize failed: {r}");
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }

    pub fn call_tool(&mut self, name: &str, args: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": args}))
    }
}

/// The text of the first content block of a tool result response.
pub fn result_text(resp: &Value) -> &str {
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {resp}"))
}

pub fn error_code(resp: &Value) -> i64 {
    resp["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {resp}"))
}
