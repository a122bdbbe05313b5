//! Command tools declared in the config file (`[[tool]]`), driven over TCP
//! against the real binary: argv substitution without a shell, JSON on
//! stdin, failures, timeouts, output caps, the environment allow-list, the
//! working directory, the per-shard concurrency cap, and a shard that keeps
//! serving while a child runs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const TOOLS: &str = r#"
cores = "0"

[[tool]]
name = "say"
description = "echo the text back"
command = ["/bin/echo", "-n", "{text}"]
input_schema = { type = "object", properties = { text = { type = "string" } }, required = ["text"] }

[[tool]]
name = "args_on_stdin"
description = "cat the arguments"
command = ["/bin/cat"]
stdin_json = true
input_schema = { type = "object", properties = { n = { type = "integer" } } }

[[tool]]
name = "list"
description = "ls a path"
command = ["/bin/ls", "{path}"]
input_schema = { type = "object", properties = { path = { type = "string" } }, required = ["path"] }

[[tool]]
name = "nap"
description = "sleep"
command = ["/bin/sleep", "{secs}"]
timeout_ms = 400
input_schema = { type = "object", properties = { secs = { type = "number" } }, required = ["secs"] }

[[tool]]
name = "nap_long"
description = "sleep, with a long deadline"
command = ["/bin/sleep", "{secs}"]
timeout_ms = 60000
input_schema = { type = "object", properties = { secs = { type = "number" } }, required = ["secs"] }

[[tool]]
name = "count"
description = "a lot of output"
command = ["/usr/bin/seq", "1", "100000"]
max_output_bytes = 100

[[tool]]
name = "environment"
description = "print the environment"
command = ["/usr/bin/env"]
env = ["TESSERA_TEST_VISIBLE"]

[[tool]]
name = "where"
description = "print the working directory"
command = ["/bin/pwd"]
working_dir = "/"
"#;

fn config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cmdtools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn text_of(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {r}"))
        .to_string()
}

fn is_error(r: &Value) -> bool {
    r["result"]["isError"] == json!(true)
}

/// An initialised legacy session on a raw socket, for pipelining requests
/// and reading the answers in whatever order they come.
fn raw_session(server: &Server) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    writeln!(s, "{init}").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    writeln!(s, "{initialized}").unwrap();
    (s, r)
}

fn start(extra: &[&str]) -> Server {
    let path = config("tools.toml", TOOLS);
    std::env::set_var("TESSERA_TEST_VISIBLE", "yes");
    std::env::set_var("TESSERA_TEST_HIDDEN", "no");
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn command_tools_run_programs_safely_and_report_failures() {
    let server = start(&[]);
    let mut c = server.connect();
    c.initialize();

    let listed = c.request("tools/list", json!({}));
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for n in [
        "say",
        "args_on_stdin",
        "list",
        "nap",
        "count",
        "environment",
        "where",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }

    // No shell: metacharacters arrive as one literal argument.
    let nasty = "a b; echo pwned $(id) `id` | cat > /tmp/x";
    let r = c.call_tool("say", json!({"text": nasty}));
    assert!(!is_error(&r), "{r}");
    assert_eq!(text_of(&r), nasty);

    let r = c.call_tool("args_on_stdin", json!({"n": 7}));
    assert_eq!(
        serde_json::from_str::<Value>(text_of(&r).trim()).unwrap(),
        json!({"n": 7})
    );

    // The schema is enforced before anything runs.
    let r = c.call_tool("say", json!({"text": 5}));
    assert!(r["error"].is_object() || is_error(&r), "{r}");

    let r = c.call_tool("list", json!({"path": "/definitely/not/here"}));
    assert!(is_error(&r), "{r}");
    let t = text_of(&r);
    assert!(
        t.contains("exit status") && t.contains("No such file"),
        "{t}"
    );

    let started = Instant::now();
    let r = c.call_tool("nap", json!({"secs": 5}));
    assert!(is_error(&r), "{r}");
    assert!(text_of(&r).contains("did not finish within 400 ms"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "killed at the deadline"
    );

    let r = c.call_tool("count", json!({}));
    let t = text_of(&r);
    assert!(t.starts_with("1\n2\n3\n"), "{t}");
    assert!(t.contains("[output truncated:"), "{t}");
    assert!(t.len() < 300, "{}", t.len());

    let t = text_of(&c.call_tool("environment", json!({})));
    assert!(t.contains("TESSERA_TEST_VISIBLE=yes"), "{t}");
    assert!(
        !t.contains("TESSERA_TEST_HIDDEN") && !t.contains("PATH="),
        "{t}"
    );

    assert_eq!(text_of(&c.call_tool("where", json!({}))).trim(), "/");
}

#[test]
fn the_shard_serves_others_while_a_child_runs_and_the_cap_refuses_extra_children() {
    let server = start(&["--max-command-children-per-shard", "1"]);
    let mut c = server.connect();
    c.initialize();
    // Two calls pipelined on one connection: the first runs, the second is
    // refused by the cap of 1 before anything starts.
    let (mut s, mut r) = raw_session(&server);
    let mut line = String::new();
    for id in [1, 2] {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"nap_long","arguments":{"secs":2}}});
        writeln!(s, "{call}").unwrap();
    }
    // The refusal comes at once, before anything has run.
    line.clear();
    r.read_line(&mut line).unwrap();
    let refused: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(refused["id"], 2, "{refused}");
    // Meanwhile the same shard answers another client while the child runs
    // (the nap has not answered yet: order, not a deadline).
    assert_eq!(c.request("ping", Value::Null)["result"], json!({}));
    r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    line.clear();
    assert!(
        r.read_line(&mut line).is_err(),
        "the nap answered before the ping: {line}"
    );
    r.get_ref().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    let mut answers = vec![refused, serde_json::from_str::<Value>(&line).unwrap()];
    answers.sort_by_key(|a| a["id"].as_i64());
    assert!(answers[0]["result"]["content"].is_array(), "{answers:?}");
    assert_ne!(answers[0]["result"]["isError"], json!(true), "{answers:?}");
    assert_eq!(answers[1]["error"]["code"], json!(-31010), "{answers:?}");
}

#[test]
fn bad_tool_definitions_are_refused_with_their_line() {
    let path = config(
        "badtools.toml",
        "cores = \"0\"\n\n[[tool]]\nname = \"rel\"\ndescription = \"d\"\ncommand = [\"echo\", \"{x}\"]\n\n[[tool]]\nname = \"typo\"\ndescription = \"d\"\ncommand = [\"/bin/echo\", \"{txt}\"]\ninput_schema = { type = \"object\", properties = { text = { type = \"string\" } } }\n\n[[tool]]\nname = \"extra\"\ndescription = \"d\"\ncommand = [\"/bin/echo\"]\nshell = true\n",
    );
    let out = std::process::Command::new(tessera_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let p = path.display();
    assert!(err.contains("unknown field `shell`"), "{err}");
    assert!(
        err.contains(&format!(
            "{p}:3: key `tool`: rel: command[0] \"echo\" must be an absolute path"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:8: key `tool`: typo: command uses {{txt}}")),
        "{err}"
    );
}

/// Processes whose command line is exactly `argv`.
fn running(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| *c == want)
        .count()
}

#[test]
fn a_cancelled_call_kills_its_child() {
    let server = start(&[]);
    let (mut s, _r) = raw_session(&server);
    let secs = format!("{}.25", 40 + std::process::id() % 50);
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"nap_long","arguments":{"secs": secs.parse::<f64>().unwrap()}}});
    writeln!(s, "{call}").unwrap();
    let argv = ["/bin/sleep", secs.as_str()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(&argv) == 0 {
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9,"reason":"test"}});
    writeln!(s, "{cancel}").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(&argv) > 0 {
        assert!(
            Instant::now() < deadline,
            "the child outlived its cancelled call"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
