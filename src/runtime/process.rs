//! Process-wide setup done on the main thread before any shard starts:
//! resource limits, signal routing, the listen port check, and telling
//! systemd how the service is doing.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Locked memory each glommio executor needs for its io_uring rings.
pub const MEMLOCK_PER_EXECUTOR_BYTES: u64 = 512 * 1024;

/// Why the process cannot start its executors or listen.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("reading RLIMIT_MEMLOCK: {0}")]
    ReadMemlock(io::Error),
    #[error("{0}")]
    Memlock(String),
    #[error("cannot listen on {addr}: another process is already accepting connections there")]
    PortTaken { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

/// Makes sure RLIMIT_MEMLOCK covers `executors` glommio executors, raising the
/// soft limit up to the hard one if that is enough.
pub fn ensure_memlock(executors: usize) -> Result<(), ProcessError> {
    let need = MEMLOCK_PER_EXECUTOR_BYTES * executors as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own, valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(ProcessError::ReadMemlock(io::Error::last_os_error()));
    }
    let enough = |v: libc::rlim_t| v == libc::RLIM_INFINITY || v >= need;
    if enough(lim.rlim_cur) {
        return Ok(());
    }
    if enough(lim.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: need,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the initialised struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            log::debug!("raised RLIMIT_MEMLOCK soft limit to {} KiB", need / 1024);
            return Ok(());
        }
    }
    let kib = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    let need_kib = need / 1024;
    Err(ProcessError::Memlock(format!(
        "RLIMIT_MEMLOCK is {} (hard limit {}), but {executors} executor(s) need {need_kib} KiB \
         (glommio locks 512 KiB per executor for its io_uring rings). Raise it before starting: \
         `ulimit -l {need_kib}` in the shell (the hard limit must allow it; as root `ulimit -l unlimited`), \
         `LimitMEMLOCK={need_kib}K` in a systemd unit, or `<user> - memlock {need_kib}` in /etc/security/limits.conf",
        kib(lim.rlim_cur),
        kib(lim.rlim_max),
    )))
}

/// The signals the main thread takes: SIGINT and SIGTERM ask the server to
/// stop, SIGHUP to reload its configuration.
fn stop_signals() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset and
    // assume_init read it; the pointer is to our own stack slot.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGHUP);
        set.assume_init()
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread. Threads spawned after
/// this inherit the mask, so the signals stay pending for
/// [`wait_stop_signal`] on the main thread instead of killing an executor.
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is
    // allowed by pthread_sigmask(3).
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP; returns the signal
/// number.
pub fn wait_stop_signal(timeout: Duration) -> Option<i32> {
    let set = stop_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are live, initialised values for the call; a
    // null siginfo pointer is allowed by sigtimedwait(2).
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Refuses a fixed port another process is already serving: with
/// SO_REUSEPORT a second server of the same user would silently share it.
/// Port 0 (any free port) needs no check.
pub fn check_port_free(addr: SocketAddr) -> Result<(), ProcessError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    if TcpStream::connect_timeout(&probe, Duration::from_millis(250)).is_ok() {
        return Err(ProcessError::PortTaken { addr });
    }
    Ok(())
}

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) about the service:
/// `READY=1`, `MAINPID=<pid>` (a binary upgrade's new process takes the
/// service over before the old one exits). Nothing without the variable;
/// a failure to send is logged, never fatal.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> io::Result<()> {
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            // An abstract socket name.
            Some(name) => {
                <UnixAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
            }
            None => UnixAddr::from_pathname(std::path::Path::new(&path))?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("telling systemd {state:?}: {e}");
    }
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit: every connection
/// is a descriptor, and the usual soft default (1024) would cap a shard far
/// below `--max-connections-per-shard`. Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own, valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the initialised struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_needs_no_check() {
        check_port_free("127.0.0.1:0".parse().unwrap()).unwrap();
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = match check_port_free(l.local_addr().unwrap()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a served port must be refused"),
        };
        assert!(e.contains("cannot listen"), "{e}");
    }
}
