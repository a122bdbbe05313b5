//! Startup errors, signals, stats output: the binary's process behaviour.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(tessera_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tessera");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unavailable_or_malformed_cores_are_clear_errors() {
    let (code, err) = run_to_end(&["serve", "--tcp", "127.0.0.1:0", "--cores", "4000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("core(s) 4000 not available"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for bad in ["a", "3-1", "", "0,,1"] {
        let (code, err) = run_to_end(&["serve", "--tcp", "127.0.0.1:0", "--cores", bad]);
        assert_eq!(code, 2, "--cores {bad:?}: {err}");
        assert!(err.contains("core"), "{err}");
    }
}

#[test]
fn too_low_memlock_limit_says_how_to_raise_it() {
    let out = unsafe {
        Command::new(tessera_bin())
            .args(["serve", "--tcp", "127.0.0.1:0", "--cores", "0"])
            .stdin(Stdio::null())
            .pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 64 * 1024,
                    rlim_max: 64 * 1024,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .output()
            .expect("run tessera")
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("RLIMIT_MEMLOCK is 64 KiB"), "{err}");
    assert!(err.contains("ulimit -l"), "{err}");
    assert!(err.contains("LimitMEMLOCK"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_port_already_served_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_to_end(&["serve", "--tcp", &addr, "--cores", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already accepting connections"), "{err}");
}

#[test]
fn sigterm_and_sigint_print_the_summary_and_exit_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(&["--cores", "0"]);
        let mut c = server.connect();
        c.initialize();
        for _ in 0..10 {
            c.call_tool("echo", json!({"text": "x"}));
        }
        let status = server.stop_with(sig);
        assert!(status.success(), "signal {sig}: {status:?}");
        let err = server.stderr();
        assert!(err.contains("tessera summary"), "{err}");
        let row = err
            .lines()
            .find(|l| l.trim_start().starts_with("tools/call"))
            .unwrap_or_else(|| panic!("no tools/call row:\n{err}"));
        let count: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(count, 10, "{row}");
    }
}

#[test]
fn shutdown_finishes_in_flight_requests() {
    let mut server = Server::start(&["--cores", "0"]);
    let mut c = server.connect();
    c.initialize();
    c.send(
        &json!({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"ms": 400}}}),
    );
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.child().id() as i32, libc::SIGTERM);
    }
    let r = c.recv();
    assert_eq!(
        r["id"], "slow",
        "the in-flight call is answered during the drain: {r}"
    );
    assert_eq!(result_text(&r), "slept 400 ms");
    assert!(c.is_closed_by_server());
    let status = server.wait_exit(IO_TIMEOUT).expect("exit");
    assert!(status.success());
}

#[test]
fn stats_interval_prints_per_core_lines() {
    let mut server = Server::start(&["--cores", "0", "--stats-interval", "200ms"]);
    let mut c = server.connect();
    c.initialize();
    for _ in 0..100 {
        c.call_tool("echo", json!({"text": "x"}));
    }
    let line = server
        .wait_for_stderr("stats t=", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no stats line:\n{}", server.stderr()));
    assert!(line.contains("core 0:"), "{line}");
    assert!(line.contains("msg/s") && line.contains("p99="), "{line}");
}

#[test]
fn spin_before_park_and_default_cores_start() {
    let allowed = allowed_cores();
    let server = Server::start(&["--spin-before-park", "50"]);
    let err = server.stderr();
    for core in &allowed {
        assert!(
            err.contains(&format!("=core {core}")),
            "default --cores must use every allowed CPU:\n{err}"
        );
    }
    let mut c = server.connect();
    c.initialize();
    assert_eq!(
        result_text(&c.call_tool("echo", json!({"text": "spin"}))),
        "spin"
    );
}
