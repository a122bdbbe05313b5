//! The bundled load generator against the real server.

mod common;

use std::process::Command;

use common::*;

/// Runs `tessera-loadgen tcp` against `addr` with a short run and `extra`
/// flags; returns (exit code, stdout, stderr).
fn loadgen(
    addr: &str,
    connections: u32,
    pipeline: u32,
    duration: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let (c, p) = (connections.to_string(), pipeline.to_string());
    let mut args = vec![
        "tcp",
        "--addr",
        addr,
        "--connections",
        &c,
        "--pipeline",
        &p,
        "--duration",
        duration,
    ];
    if !extra.contains(&"--warmup") {
        args.extend(["--warmup", "0s"]);
    }
    args.extend_from_slice(extra);
    let out = Command::new(loadgen_bin())
        .args(&args)
        .output()
        .expect("run loadgen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn number_after(text: &str, label: &str) -> f64 {
    let rest = text
        .split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn loadgen_measures_echo_and_writes_hgrm() {
    let server = Server::start(&["--cores", "0"]);
    let addr = server.addr().to_string();
    let hgrm = std::env::temp_dir().join(format!("tessera-test-{}.hgrm", std::process::id()));
    let (code, out, err) = loadgen(
        &addr,
        4,
        8,
        "1s",
        &["--warmup", "200ms", "--hgrm", hgrm.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 errors, 0 wrong, 0 missing"), "{out}");
    assert!(number_after(&out, "throughput:") > 1000.0, "{out}");
    assert!(number_after(&out, "p50") > 0.0, "{out}");
    let text = std::fs::read_to_string(&hgrm).unwrap();
    std::fs::remove_file(&hgrm).unwrap();
    assert!(
        text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
        "{text}"
    );
    assert!(text.contains("#[Max     ="), "{text}");
}

#[test]
fn loadgen_fails_on_error_responses_unless_allowed() {
    let server = Server::start(&["--cores", "0"]);
    let addr = server.addr().to_string();
    let (code, out, err) = loadgen(&addr, 2, 4, "300ms", &["--tool", "no_such_tool"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("error response(s)"), "{err}");
    let (code, out, err) = loadgen(
        &addr,
        2,
        4,
        "300ms",
        &["--tool", "no_such_tool", "--allow-errors"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(number_after(&out, "total,") > 0.0, "{out}");
}

#[test]
fn loadgen_fails_when_the_server_is_absent() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _out, err) = loadgen(&format!("127.0.0.1:{port}"), 1, 1, "200ms", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("connect"), "{err}");
}

#[test]
fn loadgen_drives_other_methods() {
    let server = Server::start(&["--cores", "0"]);
    let addr = server.addr().to_string();
    let (code, out, err) = loadgen(&addr, 2, 2, "300ms", &["--method", "ping"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("| ping |"), "{out}");
    let (code, out, err) = loadgen(
        &addr,
        1,
        4,
        "300ms",
        &["--tool", "add", "--args", "{\"a\":2,\"b\":40}"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
}
