//! TLS (`--tls-cert`) against the real binary, with certificates made at
//! test time: what a TLS listener refuses (plain bytes, an unknown CA, no
//! shared ALPN protocol), the handshake bounds, client certificates as
//! principals (`--auth cert`), reloading the pair, the admin endpoint over
//! HTTPS, and the official Python and TypeScript SDKs over HTTPS. The TLS
//! twins of the HTTP and TCP tests live next to the tests they twin
//! (`*_over_tls`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn admin_scrape(server: &mut Server) -> prometheus_parse::Scrape {
    scrape(&admin_addr(server))
}

fn counter(server: &mut Server, name: &str) -> f64 {
    value(&admin_scrape(server), &format!("tessera_{name}_total"), &[])
}

/// Waits until `name` reaches at least `want` (shards report every second).
fn counter_reaches(server: &mut Server, name: &str, want: f64) -> bool {
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        if counter(server, name) >= want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A TLS handshake with `config` on `addr`; the error when it is refused.
fn try_handshake(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Stream::handshake(s, config).map(|t| Stream::Tls(Box::new(t)))
}

/// A stateless echo call over `stream`; the text it answers.
fn echo_over(stream: Stream) -> String {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"tls"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    let r = modern_call_on(&mut HttpConn::over(stream), &[], "echo", &body);
    assert_eq!(r.status, 200, "{r:?}");
    result_text(&r.json()).to_string()
}

/// What the peer sent on `s` before it closed it (EOF or reset); None if
/// it was still open at the read timeout.
fn bytes_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(got),
        }
    }
}

/// True when the peer closes `s` without an HTTP answer (a TLS alert, if
/// anything).
fn closed_unanswered(s: &mut TcpStream) -> bool {
    bytes_until_closed(s).is_some_and(|b| !b.windows(5).any(|w| w == b"HTTP/"))
}

/// True when the peer closes `s` without sending a byte.
fn closed_unread(s: &mut TcpStream) -> bool {
    bytes_until_closed(s).is_some_and(|b| b.is_empty())
}

#[test]
fn a_tls_listener_refuses_plain_untrusted_and_wrong_protocol_clients() {
    let pki = TestPki::new("refuses");
    let other = TestPki::new("refuses-other");
    let mut server = Server::start_https(&pki, &["--cores", "0", "--admin", "127.0.0.1:0"]);
    let addr = server.http_addr.unwrap();

    // Plain HTTP to the HTTPS port: no HTTP answer, the connection closes.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    assert!(closed_unanswered(&mut plain));

    // A client that does not trust the server's CA gives up.
    let e = try_handshake(addr, &other.client(None, &["http/1.1"])).err();
    assert!(e.is_some(), "a client of another CA finished the handshake");
    // ALPN: a client offering only h2 shares no protocol with the server.
    let e = try_handshake(addr, &pki.client(None, &["h2"])).err();
    assert!(e.is_some(), "h2-only ALPN was accepted");

    // TLS 1.2 and 1.3 both work; ALPN is http/1.1.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = {
            use rustls::pki_types::pem::PemObject;
            let mut r = rustls::RootCertStore::empty();
            r.add(rustls::pki_types::CertificateDer::from_pem_file(&pki.ca_pem).unwrap())
                .unwrap();
            r
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let s = try_handshake(addr, &Arc::new(config)).expect("handshake");
        let Stream::Tls(t) = &s else { unreachable!() };
        assert_eq!(t.conn.protocol_version(), Some(version.version));
        assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(echo_over(s), "tls");
    }
    assert!(counter_reaches(&mut server, "tls_handshake_failures", 3.0));
    assert!(counter_reaches(&mut server, "tls_handshakes", 2.0));
    // Still serving after all that.
    assert_eq!(
        echo_over(Stream::connect(
            addr,
            Some(&server.tls.as_ref().unwrap().http)
        )),
        "tls"
    );
}

#[test]
fn handshakes_are_bounded_per_shard_and_timed_out() {
    let pki = TestPki::new("bounds");
    let mut server = Server::start_tls(
        &pki,
        &[
            "--cores",
            "0",
            "--admin",
            "127.0.0.1:0",
            "--tls-max-handshakes-per-shard",
            "2",
            "--tls-handshake-timeout-ms",
            "1500",
        ],
    );
    // Two connections that never send a ClientHello fill the shard's
    // handshake slots.
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    // Wait until the shard has accepted both (they show as nothing else).
    std::thread::sleep(Duration::from_millis(200));
    // A third is closed at once, unread.
    let mut third = TcpStream::connect(server.addr()).unwrap();
    assert!(closed_unread(&mut third));
    assert!(counter_reaches(&mut server, "tls_handshakes_refused", 1.0));
    // The stalled two are closed at the handshake timeout.
    for s in &mut stalled {
        assert!(closed_unread(s));
    }
    assert!(counter_reaches(&mut server, "tls_handshake_timeouts", 2.0));
    // Their slots are free again: a real client is served.
    let mut c = server.connect();
    c.initialize();
    assert_eq!(c.request("ping", Value::Null)["result"], json!({}));
}

fn principals_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("principals");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn client_certificates_name_the_principal_and_its_roles() {
    let pki = TestPki::new("mtls");
    let stranger_ca = TestPki::new("mtls-stranger");
    let principals = principals_file(&pki.dir, "# certificate names\nalice echoer\nbob\n");
    let config = pki.dir.join("roles.toml");
    std::fs::write(&config, "[[role]]\nname = \"echoer\"\ntools = [\"echo\"]\n").unwrap();
    let ca = pki.ca_pem.display().to_string();
    let principals_arg = principals.display().to_string();
    let config_arg = config.display().to_string();
    let mut args = vec![
        "--cores",
        "0",
        "--http",
        "127.0.0.1:0",
        "--tls-client-ca",
        &ca,
        "--auth",
        "cert",
        "--auth-cert-principals",
        &principals_arg,
        "--config",
        &config_arg,
    ];
    let tls_args = pki.server_args();
    args.extend(tls_args.iter().map(String::as_str));
    let mut full = vec!["serve", "--tcp", "127.0.0.1:0"];
    full.extend_from_slice(&args);
    let mut server = Server::spawn(&full, Stdio::null());
    let (tcp, http) = (server.wait_tcp_addr(), server.wait_http_addr());

    // No certificate, or one from another CA: refused in the handshake.
    // (TLS 1.3 reports a client-certificate refusal on the first read.)
    for config in [
        pki.client(None, &[]),
        pki.client(Some(&stranger_ca.issue_client("alice")), &[]),
    ] {
        let refused = try_handshake(tcp, &config).and_then(|mut s| {
            s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n")?;
            s.flush()?;
            let mut buf = [0u8; 16];
            match s.read(&mut buf)? {
                0 => Err(std::io::Error::other("closed")),
                _ => Ok(()),
            }
        });
        assert!(
            refused.is_err(),
            "a client without a trusted certificate was served"
        );
    }

    // alice (role echoer) over TCP: no token needed, echo allowed, sleep not.
    let alice = pki.clients(Some(&pki.issue_client("alice")));
    let mut c = Client::connect_tls(tcp, &alice.tcp);
    c.initialize();
    let r = c.call_tool("echo", json!({"text": "by certificate"}));
    assert_eq!(result_text(&r), "by certificate", "{r}");
    let r = c.call_tool("sleep", json!({"ms": 1}));
    assert_eq!(error_code(&r), -31013, "alice's role has no sleep: {r}");

    // Over HTTPS: alice's session is hers; bob (no roles) may call nothing.
    let mut h = HttpConn::open_tls(http, &alice.http);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let r = h.request("POST", "/mcp", &headers, Some(init.as_bytes()));
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}).to_string();
    let in_session = [
        headers[0],
        headers[1],
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let bob = pki.clients(Some(&pki.issue_client("bob")));
    let mut b = HttpConn::open_tls(http, &bob.http);
    let r = b.request("POST", "/mcp", &in_session, Some(call.as_bytes()));
    assert_eq!(r.status, 404, "bob cannot use alice's session");
    let modern = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"m"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    let r = modern_call_on(&mut b, &[], "echo", &modern);
    assert_eq!(
        rpc_message(&r)["error"]["code"],
        -31013,
        "bob has no role: {r:?}"
    );
    let r = modern_call_on(&mut h, &[], "echo", &modern);
    assert_eq!(
        rpc_message(&r)["result"]["content"][0]["text"],
        "m",
        "{r:?}"
    );

    // mallory's certificate is valid but her name is not listed.
    let mallory = pki.clients(Some(&pki.issue_client("mallory")));
    let mut m = HttpConn::open_tls(http, &mallory.http);
    let r = m.request("POST", "/mcp", &headers, Some(init.as_bytes()));
    assert_eq!(r.status, 401);
    assert!(
        String::from_utf8_lossy(&r.body).contains("mallory"),
        "{r:?}"
    );
    let mut mt = Client::connect_tls(tcp, &mallory.tcp);
    let r = mt.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    );
    assert_eq!(error_code(&r), -31014, "{r}");

    // A reload that drops alice ends her live TCP session's access.
    std::fs::write(&principals, "bob\n").unwrap();
    hup(&server);
    assert!(server.stderr_shows("reloaded on", IO_TIMEOUT));
    let r = c.call_tool("echo", json!({"text": "after"}));
    assert_eq!(error_code(&r), -31014, "{r}");
}

#[test]
fn a_reload_swaps_the_pair_for_new_handshakes_and_keeps_it_when_broken() {
    let old_ca = TestPki::new("reload-old");
    let new_ca = TestPki::new("reload-new");
    let server = Server::start_https(&old_ca, &["--cores", "0"]);
    let addr = server.http_addr.unwrap();
    let trusts_old = old_ca.client(None, &["http/1.1"]);
    let trusts_new = new_ca.client(None, &["http/1.1"]);
    let live = try_handshake(addr, &trusts_old).expect("old pair");
    let mut live = HttpConn::over(live);

    // The server's files now hold a pair from the other CA.
    std::fs::copy(&new_ca.cert, &old_ca.cert).unwrap();
    std::fs::copy(&new_ca.key, &old_ca.key).unwrap();
    hup(&server);
    assert!(
        server.stderr_shows("the TLS certificate and key", IO_TIMEOUT),
        "{}",
        server.stderr()
    );
    assert!(
        try_handshake(addr, &trusts_old).is_err(),
        "new handshakes still get the old pair"
    );
    assert_eq!(echo_over(try_handshake(addr, &trusts_new).unwrap()), "tls");
    // The connection made before the reload keeps working.
    let r = live.request("GET", "/mcp", &[("accept", "text/event-stream")], None);
    assert!(
        r.status >= 400 && r.status < 500,
        "answered over the old session: {r:?}"
    );

    // A key that does not load: refused with the file and the reason; the
    // pair in use stays.
    std::fs::write(
        &old_ca.key,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    hup(&server);
    assert!(server.stderr_shows("reload refused", IO_TIMEOUT));
    // The reason is logged with the file it is about.
    let log = server.stderr();
    let reason = log
        .lines()
        .find(|l| l.contains(&old_ca.key.display().to_string()))
        .unwrap_or_else(|| panic!("the key file is not named:\n{log}"));
    assert!(reason.contains("TLS"), "{reason}");
    assert_eq!(echo_over(try_handshake(addr, &trusts_new).unwrap()), "tls");
}

/// (status, body) of a GET over TLS.
fn get_tls(addr: &str, config: &Arc<rustls::ClientConfig>, path: &str) -> (u16, String) {
    let mut s = Stream::connect(addr.parse().unwrap(), Some(config));
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn the_admin_endpoint_serves_https_with_its_own_pair() {
    let pki = TestPki::new("admin");
    let admin_pki = TestPki::new("admin-own");
    let cert = admin_pki.cert.display().to_string();
    let key = admin_pki.key.display().to_string();
    let mut server = Server::start_tls(
        &pki,
        &[
            "--cores",
            "0",
            "--admin",
            "127.0.0.1:0",
            "--admin-tls-cert",
            &cert,
            "--admin-tls-key",
            &key,
        ],
    );
    assert!(
        server.stderr().contains("admin endpoint on https://"),
        "{}",
        server.stderr()
    );
    let admin = server
        .stderr()
        .split("admin endpoint on https://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut c = server.connect();
    c.initialize();
    let trusts_admin = admin_pki.client(None, &[]);
    // Plain HTTP gets no answer; the main listeners' CA is not the admin's.
    let mut plain = TcpStream::connect(&admin).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_unanswered(&mut plain));
    assert!(try_handshake(admin.parse().unwrap(), &pki.client(None, &[])).is_err());
    assert_eq!(
        get_tls(&admin, &trusts_admin, "/healthz"),
        (200, "ok\n".into())
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (status, body) = get_tls(&admin, &trusts_admin, "/metrics");
        assert_eq!(status, 200);
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        // The shard's handshake and the admin thread's own are counted.
        if value(&scrape, "tessera_tls_handshakes_total", &[]) >= 2.0
            && value(&scrape, "tessera_tls_handshake_failures_total", &[]) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "handshakes not counted:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = &mut server;
}

/// The official Python SDK over HTTPS, trusting only the test CA, in both
/// eras.
#[test]
fn python_sdk_over_https() {
    let pki = TestPki::new("python");
    let server = Server::start_https(&pki, &["--cores", "0"]);
    let url = format!("https://localhost:{}/mcp", server.http_addr.unwrap().port());
    let ca = pki.ca_pem.display().to_string();
    for era in ["legacy", "modern"] {
        crate::interop_python::run_client_with(&["http", era, &url], &[("MCP_CA_FILE", &ca)]);
    }
}

/// The official TypeScript SDK over HTTPS (Node trusting the test CA
/// through NODE_EXTRA_CA_CERTS, see the script): a session, tools, a call
/// with progress.
#[test]
fn typescript_sdk_over_https() {
    let pki = TestPki::new("typescript");
    let server = Server::start_https(&pki, &["--cores", "0"]);
    let url = format!("https://localhost:{}/mcp", server.http_addr.unwrap().port());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ts_client.sh");
    let mut cmd = Command::new("bash");
    cmd.env("TESSERA_TEST_CA", &pki.ca_pem)
        .arg(script)
        .arg(&url);
    // Installing Node and the SDK on a fresh machine takes a minute or two.
    run_checks(
        cmd,
        "the TypeScript SDK over HTTPS",
        Duration::from_secs(600),
    );
}

#[test]
fn bad_tls_settings_stop_startup_with_the_file_and_the_reason() {
    let pki = TestPki::new("startup");
    let other = TestPki::new("startup-other");
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let other_key = other.key.display().to_string();
    let ca = pki.ca_pem.display().to_string();
    let not_pem = pki.dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.display().to_string();
    let principals = principals_file(&pki.dir, "alice\n").display().to_string();
    let base = ["serve", "--http", "127.0.0.1:0"];
    for (extra, want) in [
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            format!("{other_key}: "),
        ),
        (
            vec!["--tls-cert", &not_pem, "--tls-key", &key],
            format!("{not_pem}: no PEM certificate"),
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &not_pem,
            ],
            format!("{not_pem}: no PEM CA certificate"),
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--auth",
                "cert",
                "--auth-cert-principals",
                &principals,
            ],
            "--auth cert needs --tls-client-ca".to_string(),
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &ca,
                "--auth",
                "cert",
            ],
            "--auth cert needs --auth-cert-principals".to_string(),
        ),
        (vec!["--tls-cert", &cert], "--tls-key".to_string()),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = Command::new(tessera_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in {err}");
    }
}
