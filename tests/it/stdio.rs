//! The stdio transport: the real binary driven over its stdin/stdout pipes.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn serves_one_client_on_stdio_and_exits_when_stdin_closes() {
    let cores = allowed_cores();
    let list = if cores.len() >= 2 {
        format!("{},{}", cores[0], cores[1])
    } else {
        cores[0].to_string()
    };
    let mut server = Server::spawn(&["serve", "--stdio", "--cores", &list], Stdio::piped());
    let mut stdin = server.child().stdin.take().unwrap();
    let stdout = server.child().stdout.take().unwrap();

    let mut script = String::new();
    script.push_str(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"stdio-test","version":"1"}}}"#);
    script.push('\n');
    script.push_str("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
    script.push_str("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n");
    script.push_str("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"over stdio\"}}}\n");
    script.push_str("not json\n");
    for i in 0..20 {
        script.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"tools/call\",\"params\":{{\"name\":\"kv_set\",\"arguments\":{{\"key\":\"k{i}\",\"value\":{i}}}}}}}\n",
            100 + i
        ));
    }
    script.push_str("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"sleep\",\"arguments\":{\"ms\":100}}}\n");
    stdin.write_all(script.as_bytes()).unwrap();
    // Closing stdin ends the session; requests already sent are still answered.
    drop(stdin);

    let mut by_id = std::collections::HashMap::new();
    let mut parse_errors = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout must carry only JSON-RPC ({e}): {line}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        if v["id"].is_null() {
            assert_eq!(v["error"]["code"], -32700);
            parse_errors += 1;
        } else {
            assert!(
                by_id.insert(v["id"].to_string(), v).is_none(),
                "answered twice: {line}"
            );
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits after stdin closes");
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    assert_eq!(parse_errors, 1);
    assert_eq!(by_id.len(), 3 + 20 + 1);
    assert_eq!(by_id["1"]["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(by_id["2"]["result"]["tools"].as_array().unwrap().len(), 6);
    assert_eq!(result_text(&by_id["3"]), "over stdio");
    assert_eq!(result_text(&by_id["4"]), "slept 100 ms");
    let mut owners = std::collections::HashSet::new();
    for i in 0..20 {
        let r = &by_id[&(100 + i).to_string()];
        assert_eq!(r["result"]["structuredContent"]["created"], true, "{r}");
        owners.insert(
            r["result"]["_meta"]["tessera/shard"]["owner"]
                .as_u64()
                .unwrap(),
        );
    }
    if cores.len() >= 2 {
        assert_eq!(owners.len(), 2, "stdio kv calls should reach both shards");
    }
    let err = server.stderr();
    assert!(
        err.contains("tessera summary"),
        "summary goes to stderr:\n{err}"
    );
}

#[test]
fn stdio_answers_interactively() {
    let mut server = Server::spawn(&["serve", "--stdio"], Stdio::piped());
    let mut stdin = server.child().stdin.take().unwrap();
    let mut stdout = BufReader::new(server.child().stdout.take().unwrap());
    // One request at a time: each answer must arrive before stdin closes.
    for i in 0..5 {
        writeln!(
            stdin,
            "{}",
            json!({"jsonrpc": "2.0", "id": i, "method": "ping"})
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], i);
    }
    drop(stdin);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success());
}
