//! The bundled load generator against the real server.

use std::process::Command;

use crate::common::*;

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

/// Runs `tessera-loadgen ARGS`; returns (exit code, stdout, stderr).
fn loadgen_raw(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(loadgen_bin())
        .args(args)
        .output()
        .expect("run loadgen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_summary(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("--json output ({e}): {out}"))
}

#[test]
fn loadgen_drives_streamable_http_in_both_eras() {
    let server = Server::start_http(&["--cores", "0"]);
    let addr = server.http_addr.unwrap().to_string();
    for (era, pipeline) in [("legacy", "1"), ("modern", "4")] {
        let (code, out, err) = loadgen_raw(&[
            "http",
            "--addr",
            &addr,
            "--era",
            era,
            "--connections",
            "2",
            "--pipeline",
            pipeline,
            "--duration",
            "1100ms",
            "--warmup",
            "0s",
            "--cores",
            "0",
            "--json",
        ]);
        assert_eq!(code, 0, "{era}: {out}\n{err}");
        let v = json_summary(&out);
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["wrong"], 0, "{v}");
        assert_eq!(v["missing"], 0, "{v}");
        assert_eq!(v["requests_sent"], v["responses_total"], "{v}");
        assert!(v["responses_measured"].as_u64().unwrap() > 100, "{v}");
        assert!(v["config"]["target"].as_str().unwrap().contains(era), "{v}");
        // The per-second progress goes to stderr, never into the JSON.
        assert!(err.contains("msg/s"), "{err}");
    }
    // The modern era has no ping: every response is an error, and says so.
    let (code, _out, err) = loadgen_raw(&[
        "http",
        "--addr",
        &addr,
        "--era",
        "modern",
        "--method",
        "ping",
        "--connections",
        "1",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--cores",
        "0",
        "--quiet",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error response(s)"), "{err}");
}

#[test]
fn loadgen_spawns_a_stdio_server_and_it_exits_afterwards() {
    let bin = tessera_bin();
    let core = allowed_cores()[0].to_string();
    let (code, out, err) = loadgen_raw(&[
        "stdio",
        "--pipeline",
        "8",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--cores",
        &core,
        "--quiet",
        "--",
        bin.to_str().unwrap(),
        "serve",
        "--stdio",
        "--cores",
        &core,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("stdio `"), "{out}");
    assert!(out.contains("0 errors, 0 wrong, 0 missing"), "{out}");
    assert!(!err.contains("did not exit"), "{err}");
}

#[test]
fn open_loop_holds_the_requested_rate_and_times_from_the_schedule() {
    let server = Server::start(&["--cores", "0"]);
    let addr = server.addr().to_string();
    let (code, out, err) = loadgen_raw(&[
        "tcp",
        "--addr",
        &addr,
        "--connections",
        "4",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v = json_summary(&out);
    let got = v["throughput_msg_per_s"].as_f64().unwrap();
    // A rate, not a race: far below what the server can do, so the
    // schedule alone decides how many requests go out.
    assert!((1500.0..=2500.0).contains(&got), "{v}");
    assert_eq!(v["config"]["rate"], 2000.0, "{v}");
    assert_eq!(v["requests_sent"], v["responses_total"], "{v}");
    // The self-check: every loadgen thread measured, and at 2,000 req/s
    // none busy enough to warn.
    let threads = v["loadgen_cpu"]["threads"].as_array().expect("loadgen_cpu");
    assert_eq!(threads.len(), allowed_cores().len().min(4), "{v}");
    for t in threads {
        let busy = t["busy"].as_f64().unwrap();
        assert!(busy > 0.0 && busy < 0.9, "{v}");
    }
    assert_eq!(
        v["loadgen_cpu"]["warnings"].as_array().unwrap().len(),
        0,
        "{v}"
    );
    assert!(!err.contains("may be the bound"), "{err}");
}

#[test]
fn a_mix_with_cross_shard_keys_reaches_every_shard() {
    let cores = allowed_cores();
    if cores.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let list = format!("{},{}", cores[0], cores[1]);
    let mut server = Server::start(&["--cores", &list]);
    let addr = server.addr().to_string();
    let mix = std::env::temp_dir().join(format!("tessera-mix-{}.txt", std::process::id()));
    std::fs::write(
        &mix,
        "# echo most of the time, kv the rest\n6 tools/call echo {\"text\":\"x\"}\n2 tools/call kv_set {\"key\":\"{key}\",\"value\":1}\n2 tools/call kv_get {\"key\":\"{key}\"}\n",
    )
    .unwrap();
    let (code, out, err) = loadgen_raw(&[
        "tcp",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--mix",
        mix.to_str().unwrap(),
        "--cross-shard",
        "1",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--json",
        "--quiet",
    ]);
    std::fs::remove_file(&mix).unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    let v = json_summary(&out);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(
        v["config"]["workload"]
            .as_str()
            .unwrap()
            .contains("kv_set x2"),
        "{v}"
    );
    // With every key remote, the mesh carried kv requests (the summary lists
    // counters that are not zero).
    let st = server.stop_with(libc::SIGTERM);
    let stderr = server.stderr();
    assert!(st.success(), "{stderr}");
    assert!(stderr.contains("mesh_requests_sent="), "{stderr}");
    // A malformed mix is refused with the line number.
    let bad = std::env::temp_dir().join(format!("tessera-badmix-{}.txt", std::process::id()));
    std::fs::write(&bad, "5 tools/call echo\nx ping\n").unwrap();
    let (code, _o, err) = loadgen_raw(&[
        "tcp",
        "--addr",
        &addr,
        "--mix",
        bad.to_str().unwrap(),
        "--duration",
        "100ms",
    ]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mix line 2"), "{err}");
}

#[test]
fn fanout_delivers_every_update_to_every_subscriber() {
    let server = Server::start(&["--cores", "0"]);
    let addr = server.addr().to_string();
    let (code, out, err) = loadgen_raw(&[
        "fanout",
        "--addr",
        &addr,
        "--subscribers",
        "50",
        "--updates-per-sec",
        "100",
        "--keys",
        "5",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--grace",
        "1s",
        "--json",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v = json_summary(&out);
    let updates = v["updates"].as_u64().unwrap();
    assert!(updates >= 80, "{v}");
    assert_eq!(
        v["notifications_expected"].as_u64().unwrap(),
        updates * 50,
        "{v}"
    );
    assert_eq!(
        v["notifications_received"], v["notifications_expected"],
        "{v}"
    );
    assert_eq!(v["missing"], 0, "{v}");
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
}
