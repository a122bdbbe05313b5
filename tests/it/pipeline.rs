//! Pipelining: a burst of requests written at once is answered exactly once
//! per request, in order, on one connection.

use std::io::{BufRead, BufReader, Write};

use crate::common::*;
use serde_json::Value;

#[test]
fn ten_thousand_pipelined_requests_are_answered_once_in_order() {
    const N: usize = 10_000;
    let server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    let mut burst = Vec::with_capacity(N * 120);
    for id in 1..=N {
        writeln!(
            burst,
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"m{id}\"}}}}}}"
        )
        .unwrap();
    }
    // Write from another thread so a full socket buffer on either side
    // cannot deadlock the test.
    let mut w = std::net::TcpStream::connect(server.addr()).unwrap();
    w.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let r = w.try_clone().unwrap();
    let init = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\"}}\n";
    let writer = std::thread::spawn(move || {
        w.write_all(init).unwrap();
        w.write_all(&burst).unwrap();
        w
    });
    let mut lines = BufReader::new(r).lines();
    let init_resp: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(init_resp["id"], 0);
    for expected in 1..=N {
        let line = lines.next().expect("response").expect("read");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["id"].as_u64(),
            Some(expected as u64),
            "out of order or missing: {line}"
        );
        assert_eq!(result_text(&v), format!("m{expected}"));
    }
    let w = writer.join().unwrap();
    // Nothing more: every request was answered exactly once.
    w.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(lines.next().is_none(), "extra response after the burst");
    // And the first connection was unaffected.
    assert_eq!(
        c.request("ping", Value::Null)["result"],
        serde_json::json!({})
    );
}
