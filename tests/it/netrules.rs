//! `--allow-cidr` / `--deny-cidr` against the real binary: clients connect
//! from different loopback source addresses (127.0.0.0/8 and ::1 are all
//! local), refused peers see their connection closed without a byte, the
//! refusals are counted per listener and rule on `/metrics`, and SIGHUP
//! replaces the rules for new connections only.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use crate::common::*;

/// A TCP connection to `to` from the local address `from` (port picked by
/// the kernel).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let from: std::net::IpAddr = from.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket.connect_timeout(&to.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Whether the server closed the connection without sending a byte (EOF or
/// reset) rather than serving it.
fn closed_unread(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Ok(n) => panic!(
            "a refused peer got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("neither served nor closed: {e}"),
    }
}

/// A TCP peer from `from` is served: a ping is answered.
fn tcp_served(from: &str, to: SocketAddr) -> bool {
    let mut s = connect_from(from, to);
    if s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}\n")
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.contains("\"id\":7") && line.contains("\"result\"")
}

/// An HTTP (or admin) peer from `from` gets an HTTP answer to `path`.
fn http_served(from: &str, to: SocketAddr, path: &str) -> bool {
    let mut s = connect_from(from, to);
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 ")
}

/// The address the server logged for `scheme` (`http`, `tcp`).
fn logged_addr(server: &Server, scheme: &str) -> SocketAddr {
    let marker = format!("listening on {scheme}://");
    assert!(
        eventually(IO_TIMEOUT, || server.stderr().contains(&marker)),
        "{}",
        server.stderr()
    );
    server
        .stderr()
        .split(&marker)
        .nth(1)
        .and_then(|r| r.split(['/', ' ', '\n']).next())
        .unwrap()
        .parse()
        .unwrap()
}

fn denied(admin: &str, listener: &str, rule: &str) -> f64 {
    value(
        &scrape(admin),
        "tessera_connections_denied_by_rule_total",
        &[("listener", listener), ("rule", rule)],
    )
}

#[test]
fn each_listener_refuses_denied_and_unlisted_peers_unread_and_counts_them_by_rule() {
    let mut server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--deny-cidr",
        "127.0.0.2",
        "--allow-cidr",
        "tcp=127.0.0.1",
        "--allow-cidr",
        "tcp=127.0.0.3/32",
    ]);
    let admin = admin_addr(&mut server);
    let admin_sock: SocketAddr = admin.parse().unwrap();
    let tcp = server.addr();
    let http = logged_addr(&server, "http");

    // TCP: only the two allowed peers, and never the denied one.
    assert!(tcp_served("127.0.0.1", tcp));
    assert!(tcp_served("127.0.0.3", tcp));
    assert!(closed_unread(connect_from("127.0.0.2", tcp)));
    assert!(closed_unread(connect_from("127.0.0.4", tcp)));
    // HTTP has no allow list: everyone but the denied peer.
    assert!(http_served("127.0.0.4", http, "/mcp"));
    assert!(closed_unread(connect_from("127.0.0.2", http)));
    // The global deny applies to the admin endpoint too.
    assert!(http_served("127.0.0.1", admin_sock, "/healthz"));
    assert!(closed_unread(connect_from("127.0.0.2", admin_sock)));

    // Shards report every second.
    let counted = eventually(IO_TIMEOUT, || {
        denied(&admin, "tcp", "deny 127.0.0.2/32") == 1.0
            && denied(&admin, "tcp", "not allowed") == 1.0
            && denied(&admin, "http", "deny 127.0.0.2/32") == 1.0
            && denied(&admin, "admin", "deny 127.0.0.2/32") == 1.0
    });
    let text = get(&admin, "GET", "/metrics").1;
    assert!(counted, "{text}");
    assert_eq!(
        value(&scrape(&admin), "tessera_connections_denied_total", &[]),
        4.0,
        "{text}"
    );
    // A refused peer never became a connection.
    assert_eq!(
        value(&scrape(&admin), "tessera_connections_refused_total", &[]),
        0.0
    );
}

#[test]
fn ipv6_peers_and_ipv4_peers_of_a_dual_stack_listener_match_their_own_blocks() {
    let server = Server::spawn(
        &[
            "serve",
            "--cores",
            "0",
            "--tcp",
            "[::]:0",
            "--deny-cidr",
            "::1/128",
            "--deny-cidr",
            "tcp=127.0.0.2/31",
        ],
        std::process::Stdio::null(),
    );
    let port = logged_addr(&server, "tcp").port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert!(closed_unread(connect_from("::1", v6)));
    // Seen as ::ffff:127.0.0.3, matched as 127.0.0.3.
    assert!(closed_unread(connect_from("127.0.0.3", v4)));
    assert!(tcp_served("127.0.0.1", v4));
    assert!(tcp_served("127.0.0.4", v4));
}

fn write_rules(path: &Path, rules: &str) {
    std::fs::write(path, format!("cores = \"0\"\n{rules}\n")).unwrap();
}

#[test]
fn sighup_replaces_the_rules_for_new_connections_and_a_broken_rule_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("tessera-netrules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tessera.toml");
    write_rules(&config, "deny_cidr = [\"127.0.0.2\"]");
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let tcp = server.addr();
    assert!(closed_unread(connect_from("127.0.0.2", tcp)));
    // Open before the reload; it stays served after 127.0.0.5 is denied.
    let mut live = Client::connect(tcp);
    let before = connect_from("127.0.0.5", tcp);
    let mut before_w = before.try_clone().unwrap();
    let mut before_r = BufReader::new(before);

    write_rules(&config, "deny_cidr = [\"127.0.0.5\"]");
    hup(&server);
    assert!(
        server
            .wait_for_stderr("network rule(s)", IO_TIMEOUT)
            .is_some(),
        "{}",
        server.stderr()
    );
    assert!(tcp_served("127.0.0.2", tcp));
    assert!(closed_unread(connect_from("127.0.0.5", tcp)));
    before_w
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n")
        .unwrap();
    let mut line = String::new();
    before_r.read_line(&mut line).unwrap();
    assert!(line.contains("\"id\":9"), "{line}");
    assert!(live.request("ping", serde_json::json!({}))["result"].is_object());

    // A rule that does not parse: refused, the running rules stay.
    write_rules(&config, "deny_cidr = [\"127.0.0.9/8\"]");
    hup(&server);
    assert!(
        server
            .wait_for_stderr("reload refused", IO_TIMEOUT)
            .is_some(),
        "{}",
        server.stderr()
    );
    assert!(closed_unread(connect_from("127.0.0.5", tcp)));
    assert!(tcp_served("127.0.0.2", tcp));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_block_stops_startup_with_the_reason() {
    let mut server = Server::spawn(
        &["serve", "--tcp", "127.0.0.1:0", "--deny-cidr", "10.0.0.1/8"],
        std::process::Stdio::null(),
    );
    let status = server.wait_exit(IO_TIMEOUT).expect("exits");
    assert!(!status.success());
    assert!(
        server.stderr().contains("10.0.0.0/8"),
        "{}",
        server.stderr()
    );
}
