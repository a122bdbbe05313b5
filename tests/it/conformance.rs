//! The official MCP conformance suite against the real binary: runs
//! `tests/conformance/run.sh` (which installs Node and the pinned suite
//! under `target/conformance`, starts `tessera serve --fixtures conformance`
//! on an ephemeral port, and fails on any FAILURE, WARNING or SKIPPED check).
//! Needs network access to PyPI and npm on first run.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn official_conformance_suite_passes() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/run.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .arg(crate::common::tessera_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop the server it started too.
        .process_group(0)
        .spawn()
        .expect("run tests/conformance/run.sh");
    // Installing Node and the suite on a fresh machine takes a minute or
    // two; the runs themselves well under one.
    let deadline = Instant::now() + Duration::from_secs(900);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // SAFETY: signalling the process group we created above.
            unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "conformance suite failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
