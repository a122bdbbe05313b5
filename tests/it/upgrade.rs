//! Binary upgrade (`serve --upgrade`) against the real binary: a second
//! process takes the listening sockets over SCM_RIGHTS while the loadgen
//! runs over TCP and HTTP (both eras), and every request sent is answered
//! with no connection refused or reset; a legacy session with an open SSE
//! stream keeps its id and replays what it missed; a new process that
//! fails before it is prepared changes nothing; an upgrade to fewer shards
//! keeps every socket and session.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");
const V: (&str, &str) = ("MCP-Protocol-Version", "2025-11-25");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where a started server listens.
struct Addrs {
    tcp: SocketAddr,
    http: SocketAddr,
}

fn addr_after(line: &str, scheme: &str) -> SocketAddr {
    line.split(scheme)
        .nth(1)
        .unwrap()
        .split(['/', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until `server` listens on TCP and HTTP.
fn listening(server: &mut Server) -> Addrs {
    let tcp = server
        .wait_for_stderr("listening on tcp://", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no TCP listener; stderr:\n{}", server.stderr()));
    let http = server
        .wait_for_stderr("listening on http://", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no HTTP listener; stderr:\n{}", server.stderr()));
    let a = Addrs {
        tcp: addr_after(&tcp, "tcp://"),
        http: addr_after(&http, "http://"),
    };
    server.addr = Some(a.tcp);
    server.http_addr = Some(a.http);
    a
}

/// `serve` with TCP and HTTP on `tcp`/`http`, the upgrade socket in `dir`,
/// `extra` after them.
fn serve_args(cores: &str, tcp: &str, http: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--cores",
        cores,
        "--tcp",
        tcp,
        "--http",
        http,
        "--upgrade-socket",
        dir.join("upgrade.sock").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn spawn(args: &[String], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(tessera_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, val) in env {
        cmd.env(k, val);
    }
    Server::spawn_command(cmd)
}

/// A legacy session, initialized.
fn session(server: &Server) -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = legacy_post(server, None, &init);
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(legacy_post(server, Some(&sid), &note).status, 202);
    sid
}

fn kv_set(server: &Server, sid: &str, id: u64, value: i64) {
    let r = legacy_post(
        server,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"watched","value":value}}}),
    );
    assert!(rpc_message(&r)["result"].is_object(), "{r:?}");
}

/// A loadgen run in the background with `--reconnect --json`.
fn loadgen(args: &[&str]) -> Child {
    Command::new(loadgen_bin())
        .args(args)
        .args(["--warmup", "0s", "--reconnect", "--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loadgen")
}

/// Waits for a loadgen run; its JSON summary.
fn summary(child: Child, what: &str) -> Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

/// Every request answered, nothing refused or reset.
fn nothing_lost(s: &Value, what: &str) {
    for zero in ["missing", "wrong", "errors", "refused", "resets"] {
        assert_eq!(s[zero], 0, "{what}: {zero} in {s}");
    }
    assert_eq!(s["requests_sent"], s["responses_total"], "{what}: {s}");
    assert!(s["requests_sent"].as_u64().unwrap() > 0, "{what}: {s}");
}

fn cores(n: usize) -> String {
    let c: Vec<String> = allowed_cores()
        .iter()
        .take(n)
        .map(|c| c.to_string())
        .collect();
    c.join(",")
}

/// Starts a one-core `--upgrade` process on `old`'s sockets and waits
/// until `old` has exited and the new one listens.
fn upgrade_one_core(old: &mut Server, tcp: &str, http: &str, dir: &Path, extra: &[&str]) -> Server {
    let mut new = spawn(
        &serve_args(&cores(1), tcp, http, dir, &[extra, &["--upgrade"]].concat()),
        &[],
    );
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        old.stderr()
    );
    listening(&mut new);
    new
}

#[test]
fn an_upgrade_under_load_answers_every_request_and_moves_sessions() {
    let dir = scratch("load");
    let data = dir.join("data");
    let extra = [
        "--data-dir",
        data.to_str().unwrap(),
        "--fsync-interval-ms",
        "100",
    ];
    let cores = cores(2);
    let mut old = spawn(
        &serve_args(&cores, "127.0.0.1:0", "127.0.0.1:0", &dir, &extra),
        &[],
    );
    let at = listening(&mut old);

    // A legacy session subscribed to a key, its standalone stream open
    // and its first event read.
    let sid = session(&old);
    let sub = legacy_post(
        &old,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"kv://watched"}}),
    );
    assert!(rpc_message(&sub)["result"].is_object(), "{sub:?}");
    let mut stream = old.http();
    stream.send(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), V, ("Mcp-Session-Id", &sid)],
        None,
    );
    assert_eq!(stream.read_head().0, 200);
    kv_set(&old, &sid, 2, 1);
    let first = stream
        .events()
        .find(|e| !e.comment && !e.data.is_empty())
        .expect("the first update");
    let seen = first.id.clone().expect("events carry ids");

    let (tcp, http) = (at.tcp.to_string(), at.http.to_string());
    let runs = [
        (
            "tcp",
            loadgen(&[
                "tcp",
                "--addr",
                &tcp,
                "--connections",
                "4",
                "--pipeline",
                "4",
                "--duration",
                "4s",
            ]),
        ),
        (
            "legacy",
            loadgen(&[
                "http",
                "--addr",
                &http,
                "--era",
                "legacy",
                "--connections",
                "2",
                "--pipeline",
                "1",
                "--duration",
                "4s",
            ]),
        ),
        (
            "modern",
            loadgen(&[
                "http",
                "--addr",
                &http,
                "--era",
                "modern",
                "--connections",
                "2",
                "--pipeline",
                "1",
                "--duration",
                "4s",
            ]),
        ),
    ];
    std::thread::sleep(Duration::from_millis(1200));

    // systemd's notify socket: the new process says it is the service now.
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut new = spawn(
        &serve_args(
            &cores,
            &tcp,
            &http,
            &dir,
            &[&extra[..], &["--upgrade"]].concat(),
        ),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let exit = old
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the old process did not exit; stderr:\n{}", old.stderr()));
    assert!(exit.success(), "{exit:?}\n{}", old.stderr());
    assert!(old.stderr().contains("store released"), "{}", old.stderr());
    let now = listening(&mut new);
    assert_eq!((now.tcp, now.http), (at.tcp, at.http));
    let mut note = [0u8; 256];
    let n = notify.recv(&mut note).unwrap();
    assert_eq!(
        std::str::from_utf8(&note[..n]).unwrap(),
        format!("MAINPID={}", new.pid())
    );
    let n = notify.recv(&mut note).unwrap();
    assert_eq!(std::str::from_utf8(&note[..n]).unwrap(), "READY=1");

    // The old stream ended with a retry hint, not a reset.
    let rest: Vec<SseEvent> = stream.events().collect();
    assert!(rest.iter().any(|e| e.retry.is_some()), "{rest:?}");

    // The session continues on the new process; what it missed replays.
    kv_set(&new, &sid, 3, 2);
    let mut resume = new.http();
    resume.send(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            V,
            ("Mcp-Session-Id", &sid),
            ("Last-Event-ID", &seen),
        ],
        None,
    );
    assert_eq!(resume.read_head().0, 200);
    let missed = resume
        .events()
        .find(|e| !e.comment && !e.data.is_empty())
        .expect("the missed update");
    assert_ne!(missed.id, first.id);
    assert_eq!(missed.json()["params"]["uri"], "kv://watched");

    for (what, run) in runs {
        let s = summary(run, what);
        nothing_lost(&s, what);
        assert!(s["reconnects"].as_u64().unwrap() >= 1, "{what}: {s}");
    }
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_process_that_fails_before_it_is_prepared_changes_nothing() {
    let dir = scratch("rollback");
    let data = dir.join("data");
    let extra = ["--data-dir", data.to_str().unwrap()];
    let mut old = spawn(
        &serve_args(&cores(1), "127.0.0.1:0", "127.0.0.1:0", &dir, &extra),
        &[],
    );
    let at = listening(&mut old);
    let sid = session(&old);
    let (tcp, http) = (at.tcp.to_string(), at.http.to_string());
    let run = loadgen(&[
        "tcp",
        "--addr",
        &tcp,
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "3s",
    ]);
    std::thread::sleep(Duration::from_millis(800));

    // The new process takes the sockets, then cannot lock its executors'
    // memory: it fails before it is prepared.
    let mut cmd = Command::new(tessera_bin());
    cmd.args(serve_args(
        &cores(1),
        &tcp,
        &http,
        &dir,
        &[&extra[..], &["--upgrade"]].concat(),
    ))
    .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing
    // else between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let tiny = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &tiny);
            Ok(())
        });
    }
    let mut failing = Server::spawn_command(cmd);
    let status = failing
        .wait_exit(IO_TIMEOUT)
        .expect("the new process exits");
    assert!(!status.success());
    assert!(
        failing.stderr().contains("RLIMIT_MEMLOCK"),
        "{}",
        failing.stderr()
    );
    assert!(
        old.stderr_shows("upgrade failed; still serving as before", IO_TIMEOUT),
        "{}",
        old.stderr()
    );

    // Nothing was interrupted: no connection closed, nothing resent.
    let s = summary(run, "tcp");
    nothing_lost(&s, "tcp");
    assert_eq!(s["reconnects"], 0, "{s}");
    let echo = legacy_post(
        &old,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"still"}}}),
    );
    assert_eq!(rpc_message(&echo)["result"]["content"][0]["text"], "still");
    assert!(
        old.child().try_wait().unwrap().is_none(),
        "the old process kept running"
    );

    // And it can still be upgraded.
    let new = upgrade_one_core(&mut old, &tcp, &http, &dir, &extra);
    let echo = legacy_post(
        &new,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"moved"}}}),
    );
    assert_eq!(rpc_message(&echo)["result"]["content"][0]["text"], "moved");
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_upgrade_to_fewer_shards_keeps_every_socket_and_session() {
    if allowed_cores().len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let dir = scratch("fewer");
    let data = dir.join("data");
    let extra = ["--data-dir", data.to_str().unwrap()];
    let mut old = spawn(
        &serve_args(&cores(2), "127.0.0.1:0", "127.0.0.1:0", &dir, &extra),
        &[],
    );
    let at = listening(&mut old);
    // Sessions on both shards (the id's first four hex digits name it).
    let mut sids = Vec::new();
    while !(sids.iter().any(|s: &String| s.starts_with("0000"))
        && sids.iter().any(|s: &String| s.starts_with("0001")))
    {
        sids.push(session(&old));
        assert!(sids.len() < 64, "sessions never reached both shards");
    }
    let (tcp, http) = (at.tcp.to_string(), at.http.to_string());
    let new = upgrade_one_core(&mut old, &tcp, &http, &dir, &extra);
    assert!(new.stderr().contains("folded"), "{}", new.stderr());
    for sid in &sids {
        let r = legacy_post(
            &new,
            Some(sid),
            &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        );
        assert_eq!(r.status, 200, "session {sid}: {r:?}");
    }
    // Both of the old shards' sockets are accepted on: connections the
    // kernel spreads over them are all served.
    for _ in 0..32 {
        let mut c = new.connect();
        c.set_read_timeout(IO_TIMEOUT);
        assert!(c.initialize()["result"].is_object());
    }
    drop(new);
    let _ = std::fs::remove_dir_all(&dir);
}
