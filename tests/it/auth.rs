//! `--auth token` over Streamable HTTP against the real binary: 401 with the
//! RFC 9728 challenge and metadata, bearer tokens from a hashed tokens file,
//! legacy sessions bound to their principal, and `tessera hash-token`.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use serde_json::{json, Value};

fn tokens_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("tokens-{}", text.len()));
    std::fs::write(&p, text).unwrap();
    p
}

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-9876543210";

fn start() -> Server {
    start_on(None)
}

/// The server of these tests, over TLS when `pki` is given.
fn start_on(pki: Option<&TestPki>) -> Server {
    let file = tokens_file(&format!(
        "# test tokens\n{}\n{}\n",
        hash_token(ALICE, "alice", "reader,writer"),
        hash_token(BOB, "bob", "reader")
    ));
    let args = [
        "--cores",
        "0",
        "--auth",
        "token",
        "--auth-tokens",
        file.to_str().unwrap(),
        "--auth-server",
        "https://auth.example.com",
    ];
    match pki {
        None => Server::start_http(&args),
        Some(pki) => Server::start_https(pki, &args),
    }
}

fn init_body() -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string()
}

fn post(c: &mut HttpConn, token: Option<&str>, session: Option<&str>, body: &str) -> HttpResp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
        headers.push(("mcp-protocol-version", "2025-11-25"));
    }
    c.request("POST", "/mcp", &headers, Some(body.as_bytes()))
}

#[test]
fn requests_without_a_valid_token_get_401_with_the_metadata_challenge() {
    requests_without_a_valid_token_get_401_with_the_metadata_challenge_on(start());
}

/// The TLS twin: the same, over HTTPS.
#[test]
fn requests_without_a_valid_token_get_401_with_the_metadata_challenge_over_tls() {
    let pki = TestPki::new("requests_without_a_valid");
    requests_without_a_valid_token_get_401_with_the_metadata_challenge_on(start_on(Some(&pki)));
}

fn requests_without_a_valid_token_get_401_with_the_metadata_challenge_on(server: Server) {
    let mut c = server.http();
    let r = post(&mut c, None, None, &init_body());
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge").to_string();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{challenge}"
    );
    assert!(!challenge.contains("invalid_token"), "{challenge}");
    let url = challenge.split('"').nth(1).unwrap().to_string();
    assert!(
        url.ends_with("/.well-known/oauth-protected-resource/mcp"),
        "{url}"
    );

    let mut c = server.http();
    let r = post(&mut c, Some("not-a-token"), None, &init_body());
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));

    // The metadata the challenge points at (RFC 9728), without a token.
    let path = url.split_once("//").unwrap().1;
    let path = &path[path.find('/').unwrap()..];
    let mut c = server.http();
    let r = c.request("GET", path, &[], None);
    assert_eq!(r.status, 200);
    let m: Value = r.json();
    assert!(m["resource"].as_str().unwrap().ends_with("/mcp"), "{m}");
    assert_eq!(
        m["authorization_servers"],
        json!(["https://auth.example.com"])
    );
    assert_eq!(m["bearer_methods_supported"], json!(["header"]));
}

#[test]
fn a_session_belongs_to_the_principal_that_created_it() {
    a_session_belongs_to_the_principal_that_created_it_on(start());
}

/// The TLS twin: the same, over HTTPS.
#[test]
fn a_session_belongs_to_the_principal_that_created_it_over_tls() {
    let pki = TestPki::new("a_session_belongs_to_the");
    a_session_belongs_to_the_principal_that_created_it_on(start_on(Some(&pki)));
}

fn a_session_belongs_to_the_principal_that_created_it_on(server: Server) {
    let mut c = server.http();
    let r = post(&mut c, Some(ALICE), None, &init_body());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let session = r.header("mcp-session-id").expect("session").to_string();
    let mut c = server.http();
    let r = post(
        &mut c,
        Some(ALICE),
        Some(&session),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
    );
    assert_eq!(r.status, 202);
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}).to_string();
    let mut c = server.http();
    let r = post(&mut c, Some(ALICE), Some(&session), &call);
    assert_eq!(r.status, 200);
    let v = sse_or_json(&r);
    assert_eq!(v["result"]["content"][0]["text"], "hi", "{v}");

    // Bob's valid token cannot use Alice's session: it does not exist for him.
    let mut c = server.http();
    let r = post(&mut c, Some(BOB), Some(&session), &call);
    assert_eq!(r.status, 404);
    // Nor can a request without a token.
    let mut c = server.http();
    assert_eq!(post(&mut c, None, Some(&session), &call).status, 401);

    // Stateless (2026-07-28) requests need the token too.
    let modern = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"m"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    for (token, status) in [(None, 401), (Some(BOB), 200)] {
        let r = modern_call(&server, token, "echo", &modern);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// The JSON-RPC message of a response sent as JSON or as one SSE event.
fn sse_or_json(r: &HttpResp) -> Value {
    let text = String::from_utf8_lossy(&r.body);
    if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")) {
        if let Ok(v) = serde_json::from_str(data.trim()) {
            return v;
        }
    }
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("no JSON in {text}"))
}

#[test]
fn bad_auth_settings_stop_startup_with_the_reason() {
    let bad = tokens_file("sha256:abc alice\n");
    for (args, want) in [
        (
            vec!["serve", "--http", "127.0.0.1:0", "--auth", "token"],
            "--auth token needs --auth-tokens FILE".to_string(),
        ),
        (
            vec![
                "serve",
                "--http",
                "127.0.0.1:0",
                "--auth",
                "token",
                "--auth-tokens",
                bad.to_str().unwrap(),
            ],
            format!("{}:1: expected sha256:", bad.display()),
        ),
        (
            vec!["serve", "--tcp", "127.0.0.1:0", "--auth", "jwt"],
            "--auth jwt needs a key".to_string(),
        ),
        (
            vec![
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "--auth",
                "jwt",
                "--jwt-public-key",
                bad.to_str().unwrap(),
            ],
            "not an RSA or P-256 EC public key".to_string(),
        ),
        (
            vec![
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "--auth",
                "jwt",
                "--jwt-public-key",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/jwt/ec-public.pem"
                ),
            ],
            "needs the audience".to_string(),
        ),
        (
            vec![
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "--jwt-jwks",
                bad.to_str().unwrap(),
            ],
            "need --auth jwt".to_string(),
        ),
    ] {
        let out = Command::new(tessera_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in {err}");
    }
}

#[test]
fn roles_limit_what_a_principal_sees_and_calls() {
    let tokens = tokens_file(&format!(
        "{}\n{}\n",
        hash_token(ALICE, "alice", "ops"),
        hash_token(BOB, "bob", "reader")
    ));
    let dir = std::env::temp_dir().join(format!("tessera-auth-{}", std::process::id()));
    let config = dir.join("roles.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\nauth = \"token\"\nauth_tokens = {:?}\n\n[[role]]\nname = \"reader\"\ntools = [\"echo\", \"kv_g*\"]\n\n[[role]]\nname = \"ops\"\ntools = [\"*\"]\nresources = [\"*\"]\nprompts = [\"*\"]\n",
            tokens.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start_http(&["--config", config.to_str().unwrap()]);

    // Bob: echo and kv_get only, in both eras.
    let mut c = server.http();
    let r = post(&mut c, Some(BOB), None, &init_body());
    assert_eq!(r.status, 200);
    let session = r.header("mcp-session-id").unwrap().to_string();
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}).to_string();
    let mut c = server.http();
    let tools = sse_or_json(&post(&mut c, Some(BOB), Some(&session), &list));
    let mut names: Vec<String> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["echo", "kv_get"], "{tools}");
    let set = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"k","value":1}}}).to_string();
    let mut c = server.http();
    let denied = sse_or_json(&post(&mut c, Some(BOB), Some(&session), &set));
    assert_eq!(denied["error"]["code"], json!(-31013), "{denied}");
    let modern = json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"kv_set","arguments":{"key":"k","value":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
    let r = modern_call(&server, Some(BOB), "kv_set", &modern);
    assert_eq!(
        r.json()["error"]["code"],
        json!(-31013),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // Alice's ops role grants everything.
    let mut c = server.http();
    let r = post(&mut c, Some(ALICE), None, &init_body());
    let session = r.header("mcp-session-id").unwrap().to_string();
    let mut c = server.http();
    let ok = sse_or_json(&post(&mut c, Some(ALICE), Some(&session), &set));
    assert!(ok["result"].is_object(), "{ok}");
    assert!(server
        .stderr()
        .contains("denied: principal bob may not use tool \"kv_set\""));

    // A tokens file naming a role nobody defined is refused at startup.
    let typo = dir.join("typo.toml");
    std::fs::write(
        &typo,
        format!(
            "http = \"127.0.0.1:0\"\nauth = \"token\"\nauth_tokens = {:?}\n[[role]]\nname = \"reader\"\n",
            tokens.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(tessera_bin())
        .args(["check-config", typo.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("roles no [[role]] defines: ops"), "{err}");
}
