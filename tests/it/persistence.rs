//! `--data-dir` against the real binary: legacy HTTP sessions and their SSE
//! event stores survive `kill -9` and a restart — the old session id keeps
//! working, `Last-Event-ID` replays what was stored, subscriptions still
//! deliver — and a deleted session stays deleted; task records and results
//! come back too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");
const V: (&str, &str) = ("MCP-Protocol-Version", "2025-11-25");

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(dir: &Path, fsync: &str) -> Server {
    let cores: Vec<String> = allowed_cores()
        .iter()
        .take(2)
        .map(|c| c.to_string())
        .collect();
    Server::start_http(&[
        "--cores",
        &cores.join(","),
        "--data-dir",
        dir.to_str().unwrap(),
        "--fsync",
        fsync,
        // A crash loses at most this much: keep it well under the waits.
        "--fsync-interval-ms",
        "100",
    ])
}

fn kill_9(server: &mut Server) {
    server.child().kill().unwrap(); // SIGKILL
    server.child().wait().unwrap();
}

fn events_after(server: &Server, sid: &str, last: &str, n: usize) -> Vec<SseEvent> {
    let mut c = server.http();
    c.send(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            V,
            ("Mcp-Session-Id", sid),
            ("Last-Event-ID", last),
        ],
        None,
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    c.events()
        .filter(|e| !e.comment && !e.data.is_empty())
        .take(n)
        .collect()
}

#[test]
fn sessions_and_event_stores_survive_kill_9() {
    let dir = data_dir("sessions");
    let mut server = start(&dir, "interval");
    assert!(
        server.stderr().contains("persistence: "),
        "{}",
        server.stderr()
    );
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"1"}}});
    let r = legacy_post(&server, None, &init);
    assert_eq!(r.status, 200);
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    assert_eq!(
        legacy_post(
            &server,
            Some(&sid),
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"})
        )
        .status,
        202
    );
    let set = |server: &Server, v: i64| {
        let r = legacy_post(
            server,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":v,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"watched","value":v}}}),
        );
        assert!(rpc_message(&r)["result"].is_object(), "{r:?}");
    };
    set(&server, 1);
    let sub = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"kv://watched"}}),
    );
    assert!(rpc_message(&sub)["result"].is_object(), "{sub:?}");
    // Two updates land on the standalone stream (0-1, 0-2) with no reader.
    set(&server, 3);
    set(&server, 4);
    // Let the shard hand its batch to the writer (every 10 ms) and the
    // writer commit it.
    std::thread::sleep(Duration::from_millis(1000));
    kill_9(&mut server);

    let mut server = start(&dir, "interval");
    assert!(
        server
            .stderr()
            .contains("restored 1 of 1 stored session(s)"),
        "{}",
        server.stderr()
    );
    // The old session id continues.
    let echo = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"again"}}}),
    );
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(rpc_message(&echo)["result"]["content"][0]["text"], "again");
    // Last-Event-ID replays what the store held.
    let replay = events_after(&server, &sid, "0-0", 2);
    let ids: Vec<&str> = replay.iter().map(|e| e.id.as_deref().unwrap()).collect();
    assert_eq!(ids, vec!["0-1", "0-2"]);
    for e in &replay {
        let m: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(m["method"], "notifications/resources/updated");
        assert_eq!(m["params"]["uri"], "kv://watched");
    }
    // The subscription survived: a new update follows as 0-3.
    set(&server, 6);
    let next = events_after(&server, &sid, "0-2", 1);
    assert_eq!(next[0].id.as_deref(), Some("0-3"));

    // A deleted session stays deleted across the next crash.
    let mut c = server.http();
    let r = c.request("DELETE", "/mcp", &[V, ("Mcp-Session-Id", &sid)], None);
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    kill_9(&mut server);
    let server = start(&dir, "always");
    let gone = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":7,"method":"ping"}),
    );
    assert_eq!(gone.status, 404);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_data_dir_the_log_says_memory_only() {
    let server = Server::start_http(&["--cores", "0"]);
    assert!(
        server.stderr().contains("kept in memory only"),
        "{}",
        server.stderr()
    );
}

#[test]
fn task_records_and_results_survive_kill_9() {
    let dir = data_dir("tasks");
    let args = |dir: &Path| {
        vec![
            "--cores".to_string(),
            "0".to_string(),
            "--fixtures".to_string(),
            "conformance".to_string(),
            "--data-dir".to_string(),
            dir.to_str().unwrap().to_string(),
            "--fsync".to_string(),
            "always".to_string(),
        ]
    };
    let a = args(&dir);
    let mut server = Server::start_http(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = legacy_post(&server, None, &init);
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let task = |server: &Server, id: u64, seconds: f64| {
        let r = legacy_post(
            server,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"slow_compute","arguments":{"seconds":seconds,"label":"p"},"task":{"ttl":60000}}}),
        );
        rpc_message(&r)["result"]["task"]["taskId"]
            .as_str()
            .unwrap_or_else(|| panic!("{r:?}"))
            .to_owned()
    };
    let done = task(&server, 1, 0.1);
    let running = task(&server, 2, 30.0);
    let result = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":3,"method":"tasks/result","params":{"taskId":done}}),
    );
    let text = rpc_message(&result)["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.starts_with("Computed after 0.1 s p"), "{text}");
    std::thread::sleep(Duration::from_millis(1000));
    kill_9(&mut server);

    let server = Server::start_http(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        server.stderr().contains("2 of 2 task(s)"),
        "{}",
        server.stderr()
    );
    let get = |id: &str| {
        rpc_message(&legacy_post(
            &server,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":4,"method":"tasks/get","params":{"taskId":id}}),
        ))
    };
    assert_eq!(get(&done)["result"]["status"], "completed");
    let lost = get(&running);
    assert_eq!(lost["result"]["status"], "failed", "{lost}");
    assert!(lost["result"]["statusMessage"]
        .as_str()
        .unwrap()
        .contains("restarted"));
    let again = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"tasks/result","params":{"taskId":done}}),
    );
    assert_eq!(
        rpc_message(&again)["result"]["content"][0]["text"],
        text.as_str()
    );
    // Still this session's tasks.
    let list = rpc_message(&legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":6,"method":"tasks/list","params":{}}),
    ));
    assert_eq!(
        list["result"]["tasks"].as_array().unwrap().len(),
        2,
        "{list}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A legacy session on `server`, initialized.
fn session(server: &Server) -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = legacy_post(server, None, &init);
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let ack = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(legacy_post(server, Some(&sid), &ack).status, 202);
    sid
}

fn rpc(server: &Server, sid: &str, id: u64, method: &str, params: Value) -> Value {
    let r = legacy_post(
        server,
        Some(sid),
        &json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}),
    );
    rpc_message(&r)
}

#[test]
fn a_refused_subscription_is_neither_counted_nor_restored() {
    let dir = data_dir("refused-sub");
    let start_limited = || {
        Server::start_http(&[
            "--cores",
            "0",
            "--data-dir",
            dir.to_str().unwrap(),
            "--fsync",
            "always",
            "--max-watchers-per-key",
            "1",
            "--max-subscriptions-per-session",
            "1",
        ])
    };
    let mut server = start_limited();
    let a = session(&server);
    let b = session(&server);
    let sub = |server: &Server, sid: &str, id, uri: &str| {
        rpc(server, sid, id, "resources/subscribe", json!({"uri": uri}))
    };
    assert!(sub(&server, &a, 1, "kv://x")["result"].is_object());
    // kv://x has its one watcher: b is refused ...
    let refused = sub(&server, &b, 2, "kv://x");
    assert_eq!(error_code(&refused), -32600, "{refused}");
    // ... and the refusal does not use up b's one subscription.
    let y = sub(&server, &b, 3, "kv://y");
    assert!(y["result"].is_object(), "{y}");
    // a lets go of kv://x: only a stored (wrongly kept) subscription of b's
    // could take it after the restart.
    assert!(rpc(
        &server,
        &a,
        4,
        "resources/unsubscribe",
        json!({"uri": "kv://x"})
    )["result"]
        .is_object());
    std::thread::sleep(Duration::from_millis(1000));
    kill_9(&mut server);

    let server = start_limited();
    assert!(
        server
            .stderr()
            .contains("restored 2 of 2 stored session(s)"),
        "{}",
        server.stderr()
    );
    // One shard: the two updates reach b's stream in this order.
    for (id, key) in [(5, "x"), (6, "y")] {
        let set = rpc(
            &server,
            &a,
            id,
            "tools/call",
            json!({"name":"kv_set","arguments":{"key":key,"value":id}}),
        );
        assert!(set["result"].is_object(), "{set}");
    }
    let first = events_after(&server, &b, "0-0", 1);
    let m: Value = serde_json::from_str(&first[0].data).unwrap();
    assert_eq!(m["method"], "notifications/resources/updated");
    assert_eq!(
        m["params"]["uri"], "kv://y",
        "b hears only what it subscribed to"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tessera gen-key`: one key line.
fn gen_key() -> String {
    let out = std::process::Command::new(tessera_bin())
        .arg("gen-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    key
}

fn start_sealed(dir: &Path, key_file: Option<&Path>) -> Server {
    let core = allowed_cores()[0].to_string();
    let mut args = vec![
        "--cores",
        &core,
        "--data-dir",
        dir.to_str().unwrap(),
        "--fsync",
        "always",
    ];
    if let Some(k) = key_file {
        args.extend(["--store-key-file", k.to_str().unwrap()]);
    }
    Server::start_http(&args)
}

fn write_keys(path: &Path, keys: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, keys.join("\n") + "\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Whether any file under `dir` holds `needle`.
fn files_hold(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

fn rekey(dir: &Path, key_file: &Path) -> String {
    let out = std::process::Command::new(tessera_bin())
        .args(["store", "rekey", "--data-dir"])
        .arg(dir)
        .arg("--store-key-file")
        .arg(key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sealed_records_hide_client_bytes_open_only_under_listed_keys_and_rotate() {
    let dir = data_dir("sealed");
    let keys_dir = data_dir("sealed-keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let (old, new) = (gen_key(), gen_key());
    let (old_file, both_file, new_file) = (
        keys_dir.join("old"),
        keys_dir.join("both"),
        keys_dir.join("new"),
    );
    write_keys(&old_file, &[&old]);
    write_keys(&both_file, &["# rotating", &new, &old]);
    write_keys(&new_file, &[&new]);
    const MARK: &str = "marker-7f3a9c";

    let mut server = start_sealed(&dir, Some(&old_file));
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"experimental":{MARK:{}}},"clientInfo":{"name":MARK,"version":"1"}}});
    let r = legacy_post(&server, None, &init);
    let sid = r.header("mcp-session-id").unwrap().to_owned();
    let ack = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(legacy_post(&server, Some(&sid), &ack).status, 202);
    let uri = format!("kv://{MARK}");
    let sub = rpc(&server, &sid, 1, "resources/subscribe", json!({"uri": uri}));
    assert!(sub["result"].is_object(), "{sub}");
    let set = rpc(
        &server,
        &sid,
        2,
        "tools/call",
        json!({"name":"kv_set","arguments":{"key":MARK,"value":1}}),
    );
    assert!(set["result"].is_object(), "{set}");
    std::thread::sleep(Duration::from_millis(500));
    kill_9(&mut server);
    assert!(
        !files_hold(&dir, MARK.as_bytes()),
        "client bytes in the files"
    );

    // The same key: the session, its subscription and its event are back.
    // Logged before the listener line Server::start_http waits for.
    let restored = |server: &mut Server| {
        server
            .stderr()
            .contains("restored 1 of 1 stored session(s)")
    };
    let mut server = start_sealed(&dir, Some(&old_file));
    assert!(restored(&mut server), "{}", server.stderr());
    let replay = events_after(&server, &sid, "0-0", 1);
    assert!(replay[0].data.contains(MARK), "{:?}", replay[0]);
    kill_9(&mut server);

    // Another key only, or none: nothing is served, everything is counted.
    for key_file in [Some(new_file.as_path()), None] {
        let mut server = start_sealed(&dir, key_file);
        assert!(
            server.stderr().contains("skipped, never served"),
            "{}",
            server.stderr()
        );
        let gone = legacy_post(
            &server,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":3,"method":"ping"}),
        );
        assert_eq!(gone.status, 404);
        kill_9(&mut server);
    }

    // Rotation: the new key first opens the old records; rekey rewrites
    // them, after which the new key alone is enough.
    let mut server = start_sealed(&dir, Some(&both_file));
    assert!(restored(&mut server), "{}", server.stderr());
    kill_9(&mut server);
    let report = rekey(&dir, &both_file);
    assert!(report.contains("0 unreadable"), "{report}");
    assert!(!report.contains(" 0 record(s) rewritten"), "{report}");
    assert!(rekey(&dir, &new_file).contains(" 0 record(s) rewritten"));
    let mut server = start_sealed(&dir, Some(&new_file));
    assert!(restored(&mut server), "{}", server.stderr());
    let echo = rpc(
        &server,
        &sid,
        4,
        "tools/call",
        json!({"name":"echo","arguments":{"text":"sealed"}}),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "sealed");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&keys_dir);
}

#[test]
fn a_store_key_file_needs_somewhere_to_store() {
    let dir = data_dir("keyflags");
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("keys");
    write_keys(&key_file, &[&gen_key()]);
    let key = key_file.to_str().unwrap();
    let args = ["serve", "--http", "127.0.0.1:0", "--store-key-file", key];
    let mut server = Server::spawn(&args, std::process::Stdio::null());
    let status = server.wait_exit(IO_TIMEOUT).expect("exits");
    assert!(!status.success());
    assert!(
        server.stderr().contains("needs --data-dir or --cluster"),
        "{}",
        server.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tessera_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(tessera_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_live_backup_restores_sessions_and_tasks_after_kill_9_and_keeps_n() {
    let dir = data_dir("backup-src");
    let restored_dir = data_dir("backup-dst");
    let dest = data_dir("backups");
    let socket = dir.with_extension("sock");
    let core = allowed_cores()[0].to_string();
    let mut server = Server::start_http(&[
        "--cores",
        &core,
        "--fixtures",
        "conformance",
        "--data-dir",
        dir.to_str().unwrap(),
        "--upgrade-socket",
        socket.to_str().unwrap(),
    ]);
    let sid = session(&server);
    let r = legacy_post(
        &server,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow_compute","arguments":{"seconds":0.05,"label":"b"},"task":{"ttl":600000}}}),
    );
    let task = rpc_message(&r)["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r:?}"))
        .to_owned();
    std::thread::sleep(Duration::from_millis(500));

    // Load while the backups are taken: sessions opened all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = server.http_addr.unwrap();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"load","version":"1"}}}).to_string();
                let r = HttpConn::open(addr).request(
                    "POST",
                    "/mcp",
                    &[CT, ACCEPT, V],
                    Some(init.as_bytes()),
                );
                assert_eq!(r.status, 200);
                n += 1;
            }
            n
        })
    };
    let sock = socket.to_str().unwrap();
    let dest_s = dest.to_str().unwrap();
    let mut lines = Vec::new();
    for _ in 0..3 {
        let out = tessera_cmd(&[
            "backup",
            "--upgrade-socket",
            sock,
            "--to",
            dest_s,
            "--keep",
            "2",
        ]);
        assert!(out.status.success(), "{out:?}");
        lines.push(String::from_utf8(out.stdout).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    let last = lines.last().unwrap();
    assert!(
        last.contains("1 shard(s)") && last.contains("1 task(s)"),
        "{last}"
    );
    let kept: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "--keep 2: {kept:?}");
    let newest = last
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    kill_9(&mut server);

    // A wrong shard count, or a damaged file, is refused; then it restores.
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            &newest,
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tessera_cmd(&args)
    };
    let out = restore(&["--shards", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds 1 shard(s)"));
    let dump = Path::new(&newest).join("shard-0.dump.gz");
    let good = std::fs::read(&dump).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&dump, &bad).unwrap();
    let out = restore(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest mismatch"));
    std::fs::write(&dump, &good).unwrap();
    let out = restore(&[]);
    assert!(out.status.success(), "{out:?}");

    let server = Server::start_http(&[
        "--cores",
        &core,
        "--fixtures",
        "conformance",
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    let echo = rpc(
        &server,
        &sid,
        2,
        "tools/call",
        json!({"name":"test_simple_text","arguments":{}}),
    );
    assert!(echo["result"]["content"].is_array(), "{echo}");
    let got = rpc(&server, &sid, 3, "tasks/get", json!({"taskId": task}));
    assert_eq!(got["result"]["status"], "completed", "{got}");
    drop(server);
    for d in [&dir, &restored_dir, &dest] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `tessera store rekey --upgrade-socket`: a running server re-reads its key
/// file, seals from then on with the new first key and rewrites what it
/// stored under the old one, while serving; the old key can then go.
#[test]
fn a_running_server_rekeys_its_store_while_serving() {
    let dir = data_dir("live-rekey");
    let keys_dir = data_dir("live-rekey-keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let key_file = keys_dir.join("keys");
    let (old, new) = (gen_key(), gen_key());
    write_keys(&key_file, &[&old]);
    let socket = keys_dir.join("control.sock");
    let core = allowed_cores()[0].to_string();
    let args = [
        "--cores",
        core.as_str(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--fsync",
        "always",
        "--store-key-file",
        key_file.to_str().unwrap(),
        "--upgrade-socket",
        socket.to_str().unwrap(),
    ];
    let live_rekey = || {
        std::process::Command::new(tessera_bin())
            .args(["store", "rekey", "--upgrade-socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    let session = |server: &Server| {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
        let r = legacy_post(server, None, &init);
        r.header("mcp-session-id").unwrap().to_owned()
    };
    let mut server = Server::start_http(&args);
    let before: Vec<String> = (0..5).map(|_| session(&server)).collect();
    std::thread::sleep(Duration::from_millis(300));

    // A file that drops the key in use is refused, and nothing changes.
    write_keys(&key_file, &[&new]);
    let out = live_rekey();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no longer lists key"),
        "{out:?}"
    );

    write_keys(&key_file, &[&new, &old]);
    let out = live_rekey();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(report.contains("0 unreadable"), "{report}");
    assert!(!report.contains(" 0 record(s) rewritten"), "{report}");
    // Written after the rekey: sealed with the new key by the writer.
    let after = session(&server);
    std::thread::sleep(Duration::from_millis(300));
    kill_9(&mut server);

    // The old key is gone from the file: every session is still there.
    write_keys(&key_file, &[&new]);
    let mut server = Server::start_http(&args);
    let all = before.len() + 1;
    assert!(
        server
            .stderr()
            .contains(&format!("restored {all} of {all} stored session(s)")),
        "{}",
        server.stderr()
    );
    for sid in before.iter().chain([&after]) {
        let echo = rpc(
            &server,
            sid,
            9,
            "tools/call",
            json!({"name":"echo","arguments":{"text":"rekeyed"}}),
        );
        assert_eq!(echo["result"]["content"][0]["text"], "rekeyed", "{echo}");
    }
    kill_9(&mut server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&keys_dir);
}
