//! Who may do what, over TCP with `--auth token` against the real binary:
//! every method that names a tool, prompt, resource or template is checked
//! against the principal's roles (-31013), and a panic inside the token
//! check never opens a connection (-31014 after it).

use std::path::PathBuf;

use crate::common::*;
use serde_json::{json, Value};

const TOKEN: &str = "access-test-token-0123456789";

/// A config file serving the conformance fixtures (tools, prompts,
/// templates, skills) under `--auth token`, where alice's one role may call
/// `echo` and nothing else.
fn echo_only_config(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-access-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("{}\n", hash_token(TOKEN, "alice", "echoer")),
    )
    .unwrap();
    let config = dir.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\nfixtures = \"conformance\"\nauth = \"token\"\nauth_tokens = {:?}\n\n[[role]]\nname = \"echoer\"\ntools = [\"echo\"]\nresources = []\nprompts = []\n",
            tokens.to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

fn bearer() -> Value {
    json!({"authorization": format!("Bearer {TOKEN}")})
}

fn initialize_with_token(c: &mut Client) -> Value {
    c.request(
        "initialize",
        json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "access", "version": "1"},
            "_meta": bearer(),
        }),
    )
}

fn modern(mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "authorization": format!("Bearer {TOKEN}"),
    });
    params
}

#[test]
fn every_method_that_names_something_is_checked_against_the_roles() {
    let config = echo_only_config("roles");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    let init = initialize_with_token(&mut c);
    assert!(init["result"].is_object(), "{init}");
    let refused = [
        (
            "tools/call",
            json!({"name": "kv_get", "arguments": {"key": "k"}}),
        ),
        ("prompts/get", json!({"name": "test_simple_prompt"})),
        ("resources/read", json!({"uri": "kv://k"})),
        ("resources/subscribe", json!({"uri": "kv://k"})),
        ("resources/unsubscribe", json!({"uri": "kv://k"})),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "kv://{key}"}, "argument": {"name": "key", "value": ""}}),
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": ""}}),
        ),
        (
            "skills/get",
            json!({"uri": "skill://conformance/pdf-processing/SKILL.md"}),
        ),
        (
            "resources/directory/read",
            json!({"uri": "skill://conformance/pdf-processing/"}),
        ),
        (
            "subscriptions/listen",
            modern(json!({"notifications": {"resourceSubscriptions": ["kv://k"]}})),
        ),
    ];
    for (method, params) in refused {
        let r = c.request(method, params.clone());
        assert_eq!(error_code(&r), -31013, "{method} {params}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("alice"),
            "{r}"
        );
    }
    // What the role grants still works, on the same connection.
    let r = c.call_tool("echo", json!({"text": "allowed"}));
    assert_eq!(result_text(&r), "allowed");
}

#[test]
fn a_panic_in_the_token_check_never_opens_the_connection() {
    let config = echo_only_config("panic");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--chaos-auth-panic-rate",
        "1",
    ]);
    let mut c = server.connect();
    // The check panics: the supervisor answers this request -32603 ...
    let r = initialize_with_token(&mut c);
    assert_eq!(error_code(&r), -32603, "{r}");
    // ... and the connection is no more open than before it.
    for (method, params) in [
        (
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        ),
        ("tools/list", json!({})),
        (
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "a", "version": "1"}}),
        ),
    ] {
        let r = c.request(method, params);
        assert_eq!(error_code(&r), -31014, "{method}: {r}");
    }
    // Every later token check panics too, and each costs only its request.
    let r = initialize_with_token(&mut c);
    assert_eq!(error_code(&r), -32603, "{r}");
    assert!(c.request("ping", json!({}))["result"].is_object());
}
