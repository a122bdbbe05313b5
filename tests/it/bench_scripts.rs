//! The measuring scripts users run on their hosts: `tuning/check.sh` (read-only
//! host report) and `bench/idle_conns.py` (RSS per idle connection against the
//! real binary). Both must keep working as the code around them changes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_sh_reports_every_section_and_changes_nothing() {
    let limits_before = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok();
    let out = Command::new("bash")
        .arg(repo().join("tuning/check.sh"))
        .args(["--cores", "0"])
        .output()
        .expect("run check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "Process limits",
        "CPU affinity",
        "Frequency and idle states",
        "Interrupts",
        "Network stack",
        "Memory",
        "NUMA",
    ] {
        assert!(
            stdout.contains(section),
            "no {section:?} section:\n{stdout}"
        );
    }
    assert!(stdout.contains("RLIMIT_MEMLOCK hard ="), "{stdout}");
    assert!(stdout.contains("net.core.somaxconn"), "{stdout}");
    // Every item line is judged.
    for line in stdout.lines().filter(|l| l.starts_with("  ")) {
        let tag = line.split_whitespace().next().unwrap_or("");
        assert!(
            ["ok", "WARN", "info"].contains(&tag),
            "unjudged line {line:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok(),
        limits_before
    );

    let bad = Command::new("bash")
        .arg(repo().join("tuning/check.sh"))
        .args(["--cores", "zero"])
        .output()
        .expect("run check.sh");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn idle_conns_measures_rss_per_connection_of_the_real_server() {
    let mut child = Command::new("python3")
        .arg(repo().join("bench/idle_conns.py"))
        .args(["--total", "600", "--warm", "100", "--json", "--server"])
        .arg(tessera_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run idle_conns.py");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("idle_conns.py did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["connections"], 600);
    let warm = v["rss_warm_kib"].as_u64().expect("rss_warm_kib");
    let full = v["rss_full_kib"].as_u64().expect("rss_full_kib");
    assert!(warm > 1000 && full >= warm, "{v}");
    // 500 sessions cannot be free, and must stay far below 64 KiB each.
    let per = v["rss_per_connection_bytes"]
        .as_i64()
        .expect("per connection");
    assert!((1..65_536).contains(&per), "{v}");
}
