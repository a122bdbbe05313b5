//! Supervision on a thread-per-core runtime: what OTP gives an Erlang
//! server, rebuilt for glommio.
//!
//! Three layers, innermost first:
//! 1. Every tool, resource and prompt handler, and the dispatch of every
//!    request, runs under `catch_unwind`: a panic costs that one request
//!    (answered -32603, details only in the log).
//! 2. Every connection task runs under a [`RestartIntensity`]: a panic in
//!    the connection handler itself (framing, I/O bookkeeping) restarts it
//!    on the same socket with the state the shard holds for it (session,
//!    subscriptions, pending server-to-client requests, unprocessed input),
//!    at most `max_restarts` times per `restart_period_ms`.
//! 3. The main thread watches every executor thread; one that dies anyway is
//!    restarted on the same core and the mesh is rebuilt (`runtime::serve`).
//!
//! glommio 0.9 caveat: a panic escaping a task that runs in a task queue
//! other than the default one leaves the executor's queue bookkeeping
//! borrowed and the process aborts on the way out, which no supervisor can
//! catch. tessera creates no task queues; every handler runs in the default
//! queue, where an escaping panic unwinds `LocalExecutor::run` normally and
//! layer 3 sees the thread end.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// OTP's restart intensity: at most `max` restarts in any `period`.
#[derive(Debug, Default)]
pub struct RestartIntensity {
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// Records a crash at `now`; `true` when a restart is still allowed.
    pub fn allow(&mut self, now: Instant, max: u32, period: Duration) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= max as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Restarts inside the current window.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }
}

/// A per-shard pseudo-random source for chaos decisions (xorshift64*; no
/// atomics, no syscalls on the request path).
#[derive(Debug)]
pub struct Dice {
    state: Cell<u64>,
}

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Cell::new(seed | 1),
        }
    }

    /// `true` with probability `p`.
    pub fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (r as f64) / ((1u64 << 53) as f64) < p
    }
}

/// Panic messages logged per thread per second; the rest are counted and
/// summarised, so a storm of caught panics (chaos mode, a bad deploy)
/// cannot turn stderr into the bottleneck.
const PANIC_LOGS_PER_SEC: u32 = 10;

thread_local! {
    static PANIC_WINDOW: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
}

/// Installs the process panic hook: panics go to the log with their
/// thread and location (never to a client), at most `PANIC_LOGS_PER_SEC`
/// per thread per second.
pub fn install_panic_hook() {
    let started = Instant::now();
    std::panic::set_hook(Box::new(move |info| {
        let sec = started.elapsed().as_secs();
        let (window, count) = PANIC_WINDOW.with(|w| {
            let (s, c) = w.get();
            let next = if s == sec { (s, c + 1) } else { (sec, 1) };
            w.set(next);
            (s, c)
        });
        if window == sec && count >= PANIC_LOGS_PER_SEC {
            return;
        }
        let suppressed = if window != sec && count > PANIC_LOGS_PER_SEC {
            format!(
                " ({} more panic(s) on this thread in the previous second not shown)",
                count - PANIC_LOGS_PER_SEC
            )
        } else {
            String::new()
        };
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic)".into()
        };
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!("panic in thread {name} at {at}: {msg}{suppressed}");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_per_period() {
        let t0 = Instant::now();
        let mut r = RestartIntensity::default();
        let p = Duration::from_secs(60);
        for i in 0..5 {
            assert!(r.allow(t0 + Duration::from_secs(i), 5, p));
        }
        assert!(!r.allow(t0 + Duration::from_secs(10), 5, p));
        // The first restart leaves the window after 60 s.
        assert!(r.allow(t0 + Duration::from_secs(61), 5, p));
    }

    #[test]
    fn dice_follows_probability() {
        let d = Dice::new(42);
        let hits = (0..100_000).filter(|_| d.roll(0.01)).count();
        assert!((700..1300).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| d.roll(0.0)));
        assert!((0..1000).all(|_| d.roll(1.0)));
    }
}
