//! SIGHUP against the real binary: the config file (and the tokens file it
//! names) read again; the `--auth` tables and the rate limit change on every
//! transport without a reconnect; a file with errors changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const ALICE: &str = "alice-reload-token-0123456789";
const BOB: &str = "bob-reload-token-0123456789";
const CAROL: &str = "carol-reload-token-0123456789";

/// The config file: tokens from `tokens`, `extra` top-level keys, two
/// roles.
fn write_config(dir: &Path, tokens: &Path, extra: &str) -> PathBuf {
    let config = dir.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\nauth = \"token\"\nauth_tokens = {:?}\n{extra}\n[[role]]\nname = \"echoer\"\ntools = [\"echo\"]\nresources = []\nprompts = []\n\n[[role]]\nname = \"adder\"\ntools = [\"echo\", \"add\"]\nresources = []\nprompts = []\n",
            tokens.to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

fn tcp_session(server: &Server, token: &str) -> Client {
    let mut c = server.connect();
    let r = c.request(
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"r","version":"1"},
               "_meta":{"authorization":format!("Bearer {token}")}}),
    );
    assert!(r["result"]["protocolVersion"].is_string(), "{r}");
    c
}

fn add(c: &mut Client) -> Value {
    c.call_tool("add", json!({"a": 2, "b": 3}))
}

/// An HTTP `initialize` with `token`; its status.
fn http_init(server: &Server, token: &str) -> u16 {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"r","version":"1"}}}).to_string();
    let auth = format!("Bearer {token}");
    server
        .http()
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", &auth),
            ],
            Some(body.as_bytes()),
        )
        .status
}

/// Writes the tokens file: (token, principal, roles) each.
fn write_tokens(path: &Path, entries: &[(&str, &str, &str)]) {
    let lines: Vec<String> = entries
        .iter()
        .map(|(t, who, roles)| hash_token(t, who, roles))
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn sighup_reloads_tokens_and_roles_on_live_connections_and_a_broken_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("tessera-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    write_tokens(
        &tokens,
        &[(ALICE, "alice", "echoer"), (BOB, "bob", "echoer")],
    );
    let config = write_config(&dir, &tokens, "");
    let mut server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&mut server);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("listening on http://")));
    let text = server.stderr();
    let http = text
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("the HTTP listener line");
    server.http_addr = Some(http.parse().unwrap());

    let mut alice = tcp_session(&server, ALICE);
    let mut bob = tcp_session(&server, BOB);
    assert_eq!(error_code(&add(&mut alice)), -31013, "alice may only echo");
    assert_eq!(
        result_text(&bob.call_tool("echo", json!({"text":"b"}))),
        "b"
    );
    assert_eq!(http_init(&server, BOB), 200);
    assert_eq!(http_init(&server, CAROL), 401);

    // Alice becomes an adder, bob's token is revoked, carol's is new.
    write_tokens(
        &tokens,
        &[(ALICE, "alice", "adder"), (CAROL, "carol", "echoer")],
    );
    // And requests are limited from now on (burst 50, then 1/s).
    write_config(
        &dir,
        &tokens,
        "rate_limit_per_sec = 1\nrate_limit_burst = 50\n",
    );
    hup(&server);
    assert!(
        eventually(Duration::from_secs(10), || http_init(&server, CAROL) == 200),
        "{}",
        server.stderr()
    );
    // The same connections, no reconnect.
    assert_eq!(result_text(&add(&mut alice)), "5");
    let r = bob.call_tool("echo", json!({"text":"revoked"}));
    assert_eq!(error_code(&r), -31014, "{r}");
    assert_eq!(http_init(&server, BOB), 401);

    // A file with an error: the error names the file and line, nothing
    // changes.
    std::fs::write(&config, "cores = \"0\"\nauth = \"token\"\nauth_tokens = \n").unwrap();
    write_tokens(&tokens, &[(BOB, "bob", "echoer")]);
    hup(&server);
    assert!(
        eventually(Duration::from_secs(10), || server
            .stderr()
            .contains("reload refused")),
        "{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains(&format!("{}:3", config.display())),
        "the error names the line: {}",
        server.stderr()
    );
    assert_eq!(result_text(&add(&mut alice)), "5");
    assert_eq!(http_init(&server, CAROL), 200);
    assert_eq!(http_init(&server, BOB), 401);
    assert!(eventually(Duration::from_secs(10), || {
        let s = scrape(&admin);
        value(&s, "tessera_config_reloads_total", &[]) == 1.0
            && value(&s, "tessera_config_reload_failures_total", &[]) == 1.0
            && value(&s, "tessera_auth_revoked_total", &[]) >= 1.0
    }));
    // The reloaded rate limit holds on a connection that started without
    // one (and survived the refused reload).
    let refused = (0..60)
        .map(|i| alice.call_tool("echo", json!({ "text": i.to_string() })))
        .filter(|r| r["error"]["code"] == -31012)
        .count();
    assert!(refused >= 5, "{refused} of 60 refused");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config file of the registry test: `[[tool]]`s and `[[prompt]]`s.
fn write_registry_config(dir: &Path, tools: &[&str], prompts: &[&str]) -> PathBuf {
    let prompt_file = dir.join("prompt.txt");
    std::fs::write(&prompt_file, "Say hello.\n").unwrap();
    let mut text = String::from("cores = \"0\"\n");
    for t in tools {
        text.push_str(&format!(
            "\n[[tool]]\nname = \"{t}\"\ndescription = \"says {t}\"\ncommand = [\"/bin/echo\", \"-n\", \"{t}\"]\n"
        ));
    }
    for p in prompts {
        text.push_str(&format!(
            "\n[[prompt]]\nname = \"{p}\"\ndescription = \"the {p} prompt\"\nfile = {prompt_file:?}\n"
        ));
    }
    let config = dir.join("tessera.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sighup_adds_a_tool_and_removes_a_prompt_and_connected_clients_hear_list_changed() {
    let dir = std::env::temp_dir().join(format!("tessera-reload-reg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_registry_config(&dir, &["first"], &["greeting"]);
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    c.initialize();
    assert!(names(&c.request("tools/list", json!({})), "tools").contains(&"first".to_owned()));
    assert_eq!(
        names(&c.request("prompts/list", json!({})), "prompts"),
        ["greeting"]
    );

    write_registry_config(&dir, &["first", "second"], &[]);
    hup(&server);
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let n = c.recv();
        heard.push(n["method"].as_str().unwrap_or_default().to_owned());
    }
    heard.sort();
    assert_eq!(
        heard,
        [
            "notifications/prompts/list_changed",
            "notifications/tools/list_changed"
        ]
    );
    let tools = names(&c.request("tools/list", json!({})), "tools");
    assert!(tools.contains(&"second".to_owned()), "{tools:?}");
    assert_eq!(result_text(&c.call_tool("second", json!({}))), "second");
    let r = c.request("prompts/get", json!({"name": "greeting"}));
    assert!(r["error"].is_object(), "{r}");
    assert!(names(&c.request("prompts/list", json!({})), "prompts").is_empty());

    // A definition that cannot be built (two tools of one name) changes
    // nothing.
    write_registry_config(&dir, &["first", "first"], &[]);
    hup(&server);
    assert!(
        server.stderr_shows("reload refused", Duration::from_secs(10)),
        "{}",
        server.stderr()
    );
    assert_eq!(result_text(&c.call_tool("second", json!({}))), "second");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `log_level` in the config file, changed by reloads.
#[test]
fn sighup_changes_the_log_level() {
    let dir = std::env::temp_dir().join(format!("tessera-reload-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tessera.toml");
    let write = |level: &str| {
        std::fs::write(&config, format!("cores = \"0\"\nlog_level = \"{level}\"\n")).unwrap()
    };
    write("info");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let count = |needle: &str| server.stderr().matches(needle).count();
    let reloading = "reload: reading the configuration again";
    let reload_and_wait = |level_lines: usize| {
        hup(&server);
        assert!(
            eventually(Duration::from_secs(10), || count("log level now")
                == level_lines),
            "{}",
            server.stderr()
        );
    };
    write("warn");
    reload_and_wait(1);
    assert_eq!(count(reloading), 1, "logged at info, before warn applied");
    reload_and_wait(2);
    assert_eq!(count(reloading), 1, "info lines are not written at warn");
    write("info");
    reload_and_wait(3);
    reload_and_wait(4);
    assert_eq!(count(reloading), 2, "info lines again: {}", server.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tessera reload --upgrade-socket PATH`: the same reload, asked over the
/// owner-only control socket, with its outcome.
#[test]
fn tessera_reload_asks_over_the_control_socket_and_reports_the_outcome() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tessera-reload-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_registry_config(&dir, &["first"], &[]);
    let socket = dir.join("control.sock");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--upgrade-socket",
        socket.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let reload = || {
        std::process::Command::new(tessera_bin())
            .args(["reload", "--upgrade-socket", socket.to_str().unwrap()])
            .output()
            .unwrap()
    };
    write_registry_config(&dir, &["first", "second"], &[]);
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded on every shard"));
    let mut c = server.connect();
    c.initialize();
    assert_eq!(result_text(&c.call_tool("second", json!({}))), "second");
    // A definition that cannot be built: refused, said so, nothing changes.
    write_registry_config(&dir, &["first", "first"], &[]);
    let out = reload();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reload refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result_text(&c.call_tool("second", json!({}))), "second");
    // The socket is this server's: a second one cannot take it.
    write_registry_config(&dir, &["first"], &[]);
    let second = std::process::Command::new(tessera_bin())
        .args(["serve", "--tcp", "127.0.0.1:0", "--cores", "0"])
        .args(["--upgrade-socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another server is listening"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
