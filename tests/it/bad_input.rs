//! Bad input over TCP: each case gets its documented JSON-RPC error, and the
//! connection (and server) keeps working afterwards.

use std::io::Write;
use std::net::Shutdown;

use crate::common::*;
use serde_json::{json, Value};

fn expect_error(c: &mut Client, raw: &[u8], code: i64, id: Value) {
    c.send_raw(raw);
    c.send_raw(b"\n");
    let r = c.recv();
    assert_eq!(r["jsonrpc"], "2.0");
    assert_eq!(
        r["error"]["code"],
        code,
        "for {:?}: {r}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(r["id"], id, "for {:?}: {r}", String::from_utf8_lossy(raw));
    assert!(r["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

fn still_answers(c: &mut Client) {
    assert_eq!(c.request("ping", Value::Null)["result"], json!({}));
}

#[test]
fn malformed_messages_get_jsonrpc_errors() {
    malformed_messages_get_jsonrpc_errors_on(Server::start(&["--cores", "0"]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn malformed_messages_get_jsonrpc_errors_over_tls() {
    let pki = TestPki::new("malformed_messages_get_j");
    malformed_messages_get_jsonrpc_errors_on(Server::start_tls(&pki, &["--cores", "0"]));
}

fn malformed_messages_get_jsonrpc_errors_on(server: Server) {
    let mut c = server.connect();
    c.initialize();
    let null = Value::Null;
    expect_error(&mut c, b"{bad json", -32700, null.clone());
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"",
        -32700,
        null.clone(),
    );
    expect_error(&mut c, b"\xff\xfe\xfd", -32700, null.clone());
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xc3\x28\"}",
        -32700,
        null.clone(),
    );
    expect_error(
        &mut c,
        b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
        -32600,
        null.clone(),
    );
    expect_error(&mut c, b"[]", -32600, null.clone());
    expect_error(&mut c, b"42", -32600, null.clone());
    expect_error(&mut c, b"\"ping\"", -32600, null.clone());
    expect_error(&mut c, b"null", -32600, null.clone());
    expect_error(&mut c, b"{\"id\":3,\"method\":\"ping\"}", -32600, json!(3));
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"1.0\",\"id\":4,\"method\":\"ping\"}",
        -32600,
        json!(4),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}",
        -32600,
        null.clone(),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"ping\"}",
        -32600,
        null.clone(),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":7}",
        -32600,
        json!(5),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\",\"params\":1}",
        -32600,
        json!(6),
    );
    expect_error(&mut c, b"{\"jsonrpc\":\"2.0\",\"id\":7}", -32600, json!(7));
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":8,\"id\":9,\"method\":\"ping\"}",
        -32600,
        json!(9),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"no/such\"}",
        -32601,
        json!(10),
    );
    expect_error(
        &mut c,
        b"{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"sampling/createMessage\"}",
        -32601,
        json!("s"),
    );
    still_answers(&mut c);
}

#[test]
fn deep_nesting_and_huge_numbers_do_not_hurt() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let deep = "[".repeat(100_000);
    expect_error(&mut c, deep.as_bytes(), -32700, Value::Null);
    let deep_obj = "{\"a\":".repeat(50_000);
    expect_error(&mut c, deep_obj.as_bytes(), -32700, Value::Null);
    // Out-of-range numbers are read as floats; the request is still served.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"n\":123456789012345678901234567890}}\n");
    assert_eq!(c.recv()["result"], json!({}));
    still_answers(&mut c);
}

#[test]
fn blank_lines_and_crlf_are_tolerated() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.send_raw(b"\n\r\n   \n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n\n");
    let r = c.recv();
    assert_eq!(r["id"], 1);
    assert_eq!(r["result"], json!({}));
    still_answers(&mut c);
}

#[test]
fn oversize_lines_are_refused_and_the_connection_continues() {
    oversize_lines_are_refused_and_the_connection_continues_on(Server::start(&[
        "--cores",
        "0",
        "--max-message-bytes",
        "1024",
    ]));
}

/// The TLS twin: the same, over TLS.
#[test]
fn oversize_lines_are_refused_and_the_connection_continues_over_tls() {
    let pki = TestPki::new("oversize_lines_are_refus");
    oversize_lines_are_refused_and_the_connection_continues_on(Server::start_tls(
        &pki,
        &["--cores", "0", "--max-message-bytes", "1024"],
    ));
}

fn oversize_lines_are_refused_and_the_connection_continues_on(server: Server) {
    let mut c = server.connect();
    c.initialize();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{}\"}}}}}}",
        "x".repeat(5000)
    );
    // In one write, surrounded by good requests.
    let mut batch = Vec::new();
    batch.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":\"before\",\"method\":\"ping\"}\n");
    batch.extend_from_slice(big.as_bytes());
    batch.extend_from_slice(b"\n{\"jsonrpc\":\"2.0\",\"id\":\"after\",\"method\":\"ping\"}\n");
    c.send_raw(&batch);
    assert_eq!(c.recv()["id"], "before");
    let err = c.recv();
    assert_eq!(error_code(&err), -32600, "{err}");
    assert_eq!(err["id"], Value::Null);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("1024"),
        "{err}"
    );
    assert_eq!(c.recv()["id"], "after");

    // Trickled in pieces, so it spans many reads.
    for chunk in big.as_bytes().chunks(300) {
        c.send_raw(chunk);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    c.send_raw(b"\n");
    assert_eq!(error_code(&c.recv()), -32600);
    still_answers(&mut c);

    // Just under the limit is fine.
    let fits = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{}\"}}}}}}",
        "y".repeat(900)
    );
    assert!(fits.len() <= 1024);
    c.send_raw(fits.as_bytes());
    c.send_raw(b"\n");
    assert_eq!(result_text(&c.recv()).len(), 900);
}

#[test]
fn a_message_split_across_writes_is_reassembled() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    let msg = b"{\"jsonrpc\":\"2.0\",\"id\":\"split\",\"method\":\"ping\"}\n";
    for b in msg.iter() {
        c.send_raw(&[*b]);
    }
    assert_eq!(c.recv()["id"], "split");
}

#[test]
fn a_last_line_without_newline_is_answered_at_eof() {
    let server = Server::start(&["--cores", "0"]);
    let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}")
        .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut c, &mut s).unwrap();
    let r: Value = serde_json::from_str(s.trim()).unwrap();
    assert_eq!(r["id"], 9);
}

#[test]
fn dropped_connections_do_not_disturb_others() {
    let server = Server::start(&["--cores", "0"]);
    let mut healthy = server.connect();
    healthy.initialize();
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
        // Half a request, then gone; every tenth with a sleep in flight.
        if i % 10 == 0 {
            let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\"}}\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"sleep\",\"arguments\":{\"ms\":50}}}\n");
        }
        let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth");
        drop(s);
    }
    still_answers(&mut healthy);
    std::thread::sleep(std::time::Duration::from_millis(100));
    still_answers(&mut healthy);
}
