//! `--auth jwt` against the real binary: HS256, RS256 and ES256 tokens (PEM
//! keys and a JWKS file) over Streamable HTTP with every claim check, roles
//! from the token, and TCP/stdio authentication through `_meta`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-more-than-32-bytes-0123456789";
const AUD: &str = "http://mcp.test/mcp";
const ISS: &str = "https://as.test";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 300, "roles": ["reader"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap()
        }
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn jwt_args(extra: &[&str]) -> Vec<String> {
    let secret = scratch("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut args: Vec<String> = [
        "--cores",
        "0",
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-public-key",
        fixture("rsa-public.pem").to_str().unwrap(),
        "--jwt-public-key",
        fixture("ec-public.pem").to_str().unwrap(),
        "--jwt-issuer",
        ISS,
        "--auth-resource",
        AUD,
        "--jwt-leeway-s",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn init_body() -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string()
}

fn initialize(server: &Server, token: &str) -> HttpResp {
    let auth = format!("Bearer {token}");
    server.http().request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", &auth),
        ],
        Some(init_body().as_bytes()),
    )
}

#[test]
fn http_accepts_valid_hs256_rs256_es256_tokens_and_names_what_is_wrong_with_the_others() {
    let args = jwt_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_http(&args);
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let r = initialize(&server, &sign(alg, None, &claims("alice")));
        assert_eq!(
            r.status,
            200,
            "{alg:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("mcp-session-id").is_some());
    }
    let with = |k: &str, v: Value| {
        let mut c = claims("alice");
        c[k] = v;
        sign(Algorithm::ES256, None, &c)
    };
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_aud = claims("alice");
    no_aud.as_object_mut().unwrap().remove("aud");
    let forged = {
        // Signed with the RSA private key but claiming HS256 with the RSA
        // public key as the secret: algorithm confusion must not work.
        let pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
        encode(
            &Header::new(Algorithm::HS256),
            &claims("mallory"),
            &EncodingKey::from_secret(&pem),
        )
        .unwrap()
    };
    for (token, why) in [
        (with("exp", json!(now() - 5)), "expired"),
        (with("nbf", json!(now() + 600)), "not valid yet"),
        (
            with("aud", json!("http://other.test/mcp")),
            "another audience",
        ),
        (
            with("iss", json!("https://evil.test")),
            "issuer is not trusted",
        ),
        (sign(Algorithm::ES256, None, &no_exp), "no `exp` claim"),
        (sign(Algorithm::ES256, None, &no_aud), "no `aud` claim"),
        (with("sub", json!("")), "no `sub` claim"),
        (forged, "bad signature"),
        ("not.a.jwt".to_string(), "not a JWT"),
    ] {
        let r = initialize(&server, &token);
        assert_eq!(r.status, 401, "{why}");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(why),
            "{why}: {challenge}"
        );
        assert!(
            String::from_utf8_lossy(&r.body).contains(why),
            "{why}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn a_jwks_file_selects_keys_by_kid_and_token_roles_apply() {
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let mut k1 = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    k1.common.key_id = Some("rsa-1".into());
    let mut k2 = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    k2.common.key_id = Some("ec-1".into());
    let jwks = scratch("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet { keys: vec![k1, k2] }).unwrap(),
    )
    .unwrap();
    let config = scratch("jwt-roles.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\nauth = \"jwt\"\njwt_jwks = {:?}\nauth_resource = {AUD:?}\njwt_roles_claim = \"scope\"\n\n[[role]]\nname = \"tools:echo\"\ntools = [\"echo\"]\n",
            jwks.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start_http(&["--config", config.to_str().unwrap()]);
    let mut c = claims("carol");
    c["scope"] = json!("tools:echo other");
    let token = sign(Algorithm::RS256, Some("rsa-1"), &c);
    assert_eq!(
        initialize(&server, &sign(Algorithm::ES256, Some("ec-1"), &c)).status,
        200
    );
    // The kid names the RSA key: an EC signature under it does not verify.
    assert_eq!(
        initialize(&server, &sign(Algorithm::ES256, Some("rsa-1"), &c)).status,
        401
    );

    let call = |tool: &str| {
        let body = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":tool,"arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string();
        let auth = format!("Bearer {token}");
        server
            .http()
            .request(
                "POST",
                "/mcp",
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", tool),
                    ("authorization", &auth),
                ],
                Some(body.as_bytes()),
            )
            .json()
    };
    let echo = call("echo");
    assert_eq!(echo["result"]["content"][0]["text"], json!("hi"), "{echo}");
    let denied = call("kv_set");
    assert_eq!(denied["error"]["code"], json!(-31013), "{denied}");
}

fn meta_init(token: Option<&str>) -> Value {
    let mut p = json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}});
    if let Some(t) = token {
        p["_meta"] = json!({"authorization": format!("Bearer {t}")});
    }
    p
}

#[test]
fn tcp_sessions_authenticate_with_a_meta_token() {
    let args = jwt_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let alice = sign(Algorithm::HS256, None, &claims("alice"));
    let bob = sign(Algorithm::HS256, None, &claims("bob"));

    let mut c = server.connect();
    // ping needs no token; initialize without one is refused.
    assert!(c.request("ping", json!({}))["result"].is_object());
    let r = c.request("initialize", meta_init(None));
    assert_eq!(error_code(&r), -31014, "{r}");
    let r = c.request("initialize", meta_init(Some("garbage")));
    assert_eq!(error_code(&r), -31014, "{r}");
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 10);
    let r = c.request(
        "initialize",
        meta_init(Some(&sign(Algorithm::HS256, None, &expired))),
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("expired"),
        "{r}"
    );
    let r = c.request("initialize", meta_init(Some(&alice)));
    assert!(r["result"]["protocolVersion"].is_string(), "{r}");
    // The connection is alice's from now on: no token needed, bob's refused.
    let r = c.call_tool("echo", json!({"text":"hello"}));
    assert_eq!(result_text(&r), "hello");
    let r = c.request(
        "tools/call",
        json!({"name":"echo","arguments":{"text":"x"},"_meta":{"authorization":format!("Bearer {bob}")}}),
    );
    assert_eq!(error_code(&r), -31014, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("authenticated as \"alice\""));

    // Modern (stateless) requests over TCP carry the token themselves.
    let mut c = server.connect();
    let modern = |token: Option<&str>| {
        let mut meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
        if let Some(t) = token {
            meta["authorization"] = json!(format!("Bearer {t}"));
        }
        json!({"name":"echo","arguments":{"text":"m"},"_meta":meta})
    };
    assert_eq!(error_code(&c.request("tools/call", modern(None))), -31014);
    let r = c.request("tools/call", modern(Some(&bob)));
    assert_eq!(result_text(&r), "m", "{r}");
    assert!(
        server.stderr_shows("authenticated as alice", IO_TIMEOUT),
        "{}",
        server.stderr()
    );
}

#[test]
fn stdio_authenticates_with_a_meta_token() {
    let args = jwt_args(&["--stdio"]);
    let mut full = vec!["serve"];
    full.extend(args.iter().map(String::as_str));
    let mut child = Command::new(tessera_bin())
        .args(&full)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut ask = |v: Value| -> Value {
        writeln!(stdin, "{v}").unwrap();
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("an answer");
        serde_json::from_str(&line).unwrap()
    };
    let tools = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
    assert_eq!(error_code(&ask(tools.clone())), -31014);
    let token = sign(Algorithm::ES256, None, &claims("dave"));
    let init =
        json!({"jsonrpc":"2.0","id":2,"method":"initialize","params":meta_init(Some(&token))});
    assert!(ask(init)["result"].is_object());
    assert!(ask(tools)["result"]["tools"].is_array());
    let _ = child.kill();
    let _ = child.wait();
}

/// A TCP connection authenticated by a JWT is refused once that token's
/// `exp` passes (until it brings a fresh token), not served for ever.
#[test]
fn a_tcp_connection_is_refused_once_its_jwt_expires() {
    let args = jwt_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let mut short = claims("alice");
    short["exp"] = json!(now() + 2);
    let mut c = server.connect();
    let r = c.request(
        "initialize",
        meta_init(Some(&sign(Algorithm::HS256, None, &short))),
    );
    assert!(r["result"]["protocolVersion"].is_string(), "{r}");
    assert_eq!(
        result_text(&c.call_tool("echo", json!({"text":"in time"}))),
        "in time"
    );
    // Lower bound only: the token is past its exp after 3 s, however
    // loaded the machine is.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let r = c.call_tool("echo", json!({"text":"late"}));
    assert_eq!(error_code(&r), -31014, "{r}");
    // A fresh token of the same principal binds the connection again.
    let fresh = sign(Algorithm::HS256, None, &claims("alice"));
    let r = c.request(
        "tools/call",
        json!({"name":"echo","arguments":{"text":"renewed"},"_meta":{"authorization":format!("Bearer {fresh}")}}),
    );
    assert_eq!(result_text(&r), "renewed", "{r}");
    assert!(
        server.stderr_shows("its token expired", IO_TIMEOUT),
        "{}",
        server.stderr()
    );
}
