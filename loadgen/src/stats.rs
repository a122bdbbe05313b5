//! What a run observed: totals for the summary and per-second ticks for the
//! progress lines. Each loadgen thread keeps one `Stats` shared by its
//! connections (single-threaded, no atomics); a per-thread task ships a tick
//! to the main thread every second.

use std::time::Duration;

use hdrhistogram::Histogram;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds")
}

/// What one thread (or, merged, the whole run) observed.
pub struct Outcome {
    /// Latency of responses received inside the measurement window, in ns.
    pub hist: Histogram<u64>,
    /// Responses received inside the measurement window.
    pub measured: u64,
    /// Requests written (warm-up included).
    pub sent: u64,
    /// Every response matched to a request, window or not.
    pub answered: u64,
    /// JSON-RPC errors, tool results with `isError: true`, HTTP errors.
    pub errors: u64,
    /// Responses with an id we had not sent or had already seen, or
    /// messages that are not JSON-RPC.
    pub wrong: u64,
    /// What the first [`WRONG_SAMPLES`] wrong responses were, for the
    /// report.
    pub wrong_samples: Vec<String>,
    /// Requests never answered.
    pub missing: u64,
    /// `--reconnect`: connections opened again after the server closed one.
    pub reconnects: u64,
    /// `--reconnect`: unanswered requests sent again on the new connection.
    pub resent: u64,
    /// Connection attempts the server refused (ECONNREFUSED).
    pub refused: u64,
    /// Connections the server reset (ECONNRESET, EPIPE) instead of closing.
    pub resets: u64,
    pub failures: Vec<String>,
    /// Each loadgen thread's CPU use over the measured window.
    pub cpu: Vec<crate::cpu::ThreadCpu>,
}

/// How many wrong responses a run describes (the rest are only counted).
pub const WRONG_SAMPLES: usize = 8;

/// How much of a wrong response a sample keeps, in bytes.
const WRONG_SAMPLE_BYTES: usize = 200;

impl Outcome {
    /// Counts a wrong response and, among the first few, says why and
    /// what it was.
    pub fn note_wrong(&mut self, why: &str, frame: &[u8]) {
        self.wrong += 1;
        if self.wrong_samples.len() < WRONG_SAMPLES {
            let shown = &frame[..frame.len().min(WRONG_SAMPLE_BYTES)];
            self.wrong_samples
                .push(format!("{why}: {}", String::from_utf8_lossy(shown)));
        }
    }

    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            measured: 0,
            sent: 0,
            answered: 0,
            errors: 0,
            wrong: 0,
            wrong_samples: Vec::new(),
            missing: 0,
            reconnects: 0,
            resent: 0,
            refused: 0,
            resets: 0,
            failures: Vec::new(),
            cpu: Vec::new(),
        }
    }

    pub fn merge(&mut self, o: Outcome) {
        self.hist.add(&o.hist).expect("same bounds");
        self.measured += o.measured;
        self.sent += o.sent;
        self.answered += o.answered;
        self.errors += o.errors;
        self.wrong += o.wrong;
        let room = WRONG_SAMPLES.saturating_sub(self.wrong_samples.len());
        self.wrong_samples
            .extend(o.wrong_samples.into_iter().take(room));
        self.missing += o.missing;
        self.reconnects += o.reconnects;
        self.resent += o.resent;
        self.refused += o.refused;
        self.resets += o.resets;
        self.failures.extend(o.failures);
        self.cpu.extend(o.cpu);
    }
}

/// One second of one thread, for the progress line.
pub struct Tick {
    pub index: u64,
    pub answered: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Tick {
    /// Tells the progress printer the run is over.
    pub fn last() -> Tick {
        Tick {
            index: u64::MAX,
            answered: 0,
            errors: 0,
            hist: new_histogram(),
        }
    }
}

pub struct Stats {
    pub total: Outcome,
    tick: Tick,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            total: Outcome::new(),
            tick: Tick {
                index: 0,
                answered: 0,
                errors: 0,
                hist: new_histogram(),
            },
        }
    }

    /// Counts one matched response with its latency.
    pub fn answered(&mut self, failed: bool, measuring: bool, latency: Duration) {
        let ns = (latency.as_nanos() as u64).max(1);
        self.total.answered += 1;
        self.total.errors += failed as u64;
        if measuring {
            self.total.measured += 1;
            self.total.hist.saturating_record(ns);
        }
        self.tick.answered += 1;
        self.tick.errors += failed as u64;
        self.tick.hist.saturating_record(ns);
    }

    /// Hands over the current tick and starts the next.
    pub fn take_tick(&mut self, index: u64) -> Tick {
        let next = Tick {
            index: index + 1,
            answered: 0,
            errors: 0,
            hist: new_histogram(),
        };
        let mut t = std::mem::replace(&mut self.tick, next);
        t.index = index;
        t
    }
}

/// Merges the threads' ticks and prints one progress line per second.
pub struct Progress {
    threads: usize,
    pending: Vec<(u64, usize, Tick)>,
    /// Seconds inside the warm-up are labelled so.
    pub warmup: Duration,
}

impl Progress {
    pub fn new(threads: usize, warmup: Duration) -> Self {
        Self {
            threads,
            pending: Vec::new(),
            warmup,
        }
    }

    /// Adds a thread's tick; returns the line for the second once every
    /// thread reported it.
    pub fn add(&mut self, t: Tick) -> Option<String> {
        let index = t.index;
        match self.pending.iter_mut().find(|(i, _, _)| *i == index) {
            Some((_, n, merged)) => {
                *n += 1;
                merged.answered += t.answered;
                merged.errors += t.errors;
                merged.hist.add(&t.hist).expect("same bounds");
            }
            None => self.pending.push((index, 1, t)),
        }
        let pos = self
            .pending
            .iter()
            .position(|(i, n, _)| *i == index && *n == self.threads)?;
        let (_, _, m) = self.pending.remove(pos);
        let phase = if Duration::from_secs(index + 1) <= self.warmup {
            " (warm-up)"
        } else {
            ""
        };
        let us = |q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
        Some(format!(
            "{:>4}s {:>10} msg/s  errors {:<6} p50 {:>9.1} us  p99 {:>9.1} us{phase}",
            index + 1,
            m.answered,
            m.errors,
            us(0.5),
            us(0.99)
        ))
    }
}

/// Prints merged progress lines from the threads' ticks on stderr (`unit`
/// names what is counted) until `Tick::last` arrives.
pub fn spawn_printer(
    ticks: std::sync::mpsc::Receiver<Tick>,
    threads: usize,
    warmup: Duration,
    quiet: bool,
    unit: &'static str,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut p = Progress::new(threads, warmup);
        for t in ticks {
            if t.index == u64::MAX {
                break;
            }
            if let Some(line) = p.add(t) {
                if !quiet {
                    eprintln!("{}", line.replace("msg/s", unit));
                }
            }
        }
    })
}

/// Waits for every loadgen thread and merges what they saw; then stops the
/// printer. Detached tick tasks may outlive their executors (glommio does
/// not drop them), so their senders never close: the printer is told.
pub fn join_all(
    handles: Vec<glommio::ExecutorJoinHandle<Outcome>>,
    ticks: &std::sync::mpsc::Sender<Tick>,
    printer: std::thread::JoinHandle<()>,
) -> Outcome {
    let mut total = Outcome::new();
    for h in handles {
        match h.join() {
            Ok(o) => total.merge(o),
            Err(e) => total.failures.push(format!("loadgen thread failed: {e}")),
        }
    }
    let _ = ticks.send(Tick::last());
    let _ = printer.join();
    total
}
