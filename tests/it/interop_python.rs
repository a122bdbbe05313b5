//! Interoperability: the official MCP Python SDK client (`mcp` on PyPI, 2.x)
//! drives the real server over Streamable HTTP and stdio, in both eras.
//!
//! The SDK is installed into a virtualenv under `target/` on first use (or
//! taken from `TESSERA_INTEROP_PYTHON`, a Python that has it), never assumed
//! to be on the machine. Without network access to PyPI these tests fail.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> &'static PathBuf {
    interop_python()
}

/// Runs the SDK client script; panics with its output unless every check passed.
pub fn run_client(args: &[&str]) {
    run_client_with(args, &[]);
}

/// [`run_client`] with environment variables for the client script
/// (`MCP_BEARER_TOKEN`: send it as `Authorization: Bearer` over HTTP;
/// `MCP_CA_FILE`: HTTPS trusting that CA only).
pub fn run_client_with(args: &[&str], env: &[(&str, &str)]) {
    let script = workspace().join("tests/interop/sdk_client.py");
    let mut cmd = Command::new(python());
    cmd.envs(env.iter().copied())
        .arg("-W")
        .arg("ignore::DeprecationWarning")
        .arg(&script)
        .args(args);
    run_checks(
        cmd,
        &format!("SDK client {args:?}"),
        Duration::from_secs(120),
    );
}

fn two_cores() -> String {
    let c = allowed_cores();
    if c.len() >= 2 {
        format!("{},{}", c[0], c[1])
    } else {
        c[0].to_string()
    }
}

#[test]
fn python_sdk_over_http_legacy_and_modern() {
    let server = Server::start_http(&["--cores", &two_cores()]);
    let url = format!("http://{}/mcp", server.http_addr.unwrap());
    run_client(&["http", "legacy", &url]);
    run_client(&["http", "modern", &url]);
}

/// The SDK's own HTTP client with a bearer token drives a whole session in
/// both eras against `--auth token`; without the token it is refused.
#[test]
fn python_sdk_over_authenticated_http() {
    let token = "sdk-interop-token-4242";
    let mut hasher = Command::new(tessera_bin())
        .args(["hash-token", "--principal", "sdk"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    hasher
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let line = String::from_utf8(hasher.wait_with_output().unwrap().stdout).unwrap();
    let file = std::env::temp_dir().join(format!("tessera-sdk-tokens-{}", std::process::id()));
    std::fs::write(&file, line).unwrap();
    let server = Server::start_http(&[
        "--cores",
        &two_cores(),
        "--auth",
        "token",
        "--auth-tokens",
        file.to_str().unwrap(),
    ]);
    let url = format!("http://{}/mcp", server.http_addr.unwrap());
    run_client_with(&["http", "legacy", &url], &[("MCP_BEARER_TOKEN", token)]);
    run_client_with(&["http", "modern", &url], &[("MCP_BEARER_TOKEN", token)]);
    let refused = std::panic::catch_unwind(|| run_client(&["http", "modern", &url]));
    assert!(
        refused.is_err(),
        "without the token the SDK client must fail"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn python_sdk_over_stdio_legacy_and_modern() {
    let bin = tessera_bin();
    let bin = bin.to_str().unwrap();
    let cores = two_cores();
    run_client(&[
        "stdio", "legacy", bin, "serve", "--stdio", "--cores", &cores,
    ]);
    run_client(&[
        "stdio", "modern", bin, "serve", "--stdio", "--cores", &cores,
    ]);
}

/// Prompts, resources and templates, resource-update notifications,
/// sampling, elicitation and roots through the SDK's callbacks, against
/// `--fixtures conformance`, in both eras, over HTTP and stdio.
#[test]
fn python_sdk_fixtures_both_eras_http_and_stdio() {
    let server = Server::start_http(&["--cores", &two_cores(), "--fixtures", "conformance"]);
    let url = format!("http://{}/mcp", server.http_addr.unwrap());
    run_client(&["http-fixtures", "legacy", &url]);
    run_client(&["http-fixtures", "modern", &url]);
    let bin = tessera_bin();
    let bin = bin.to_str().unwrap();
    for era in ["legacy", "modern"] {
        run_client(&[
            "stdio-fixtures",
            era,
            bin,
            "serve",
            "--stdio",
            "--fixtures",
            "conformance",
            "--cores",
            &two_cores(),
        ]);
    }
}
