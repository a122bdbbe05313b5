//! When the measured run starts. Connections set up at their own pace
//! (connect, initialize, learn which keys are local); on a loaded machine
//! that can take longer than a short run, and a clock started before setup
//! would hand the setup's time to the warm-up or, worse, end the run before
//! a request is sent. So the run's window (warm-up, then duration) opens
//! once every connection has finished its setup or failed it, and every
//! thread measures the same window.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting connection looks at the gate.
const POLL: Duration = Duration::from_millis(1);

/// The measured run's instants, the same for every thread.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub warm_end: Instant,
    pub end: Instant,
}

/// Shared by every loadgen thread; opens when the last connection arrives.
pub struct Gate {
    epoch: Instant,
    pending: AtomicUsize,
    /// When the gate opened, in ns since `epoch` (0: not yet).
    opened_ns: AtomicU64,
    warmup: Duration,
    duration: Duration,
}

impl Gate {
    pub fn new(connections: usize, warmup: Duration, duration: Duration) -> Arc<Gate> {
        assert!(connections > 0, "a run has at least one connection");
        Arc::new(Gate {
            epoch: Instant::now(),
            pending: AtomicUsize::new(connections),
            opened_ns: AtomicU64::new(0),
            warmup,
            duration,
        })
    }

    /// One connection's place at the gate; hand it in with
    /// [`Ticket::enter`] after setup. Dropping it (setup failed) also counts,
    /// so a failed connection never holds the others back.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        Ticket {
            gate: Some(self.clone()),
        }
    }

    fn arrive(&self) {
        let left = self.pending.fetch_sub(1, Ordering::AcqRel);
        assert!(left > 0, "more arrivals than connections");
        if left == 1 {
            let ns = self.epoch.elapsed().as_nanos().max(1) as u64;
            self.opened_ns.store(ns, Ordering::Release);
        }
    }

    /// The window, once the gate has opened.
    pub fn window(&self) -> Option<Window> {
        let ns = self.opened_ns.load(Ordering::Acquire);
        (ns != 0).then(|| {
            let start = self.epoch + Duration::from_nanos(ns);
            let warm_end = start + self.warmup;
            Window {
                start,
                warm_end,
                end: warm_end + self.duration,
            }
        })
    }

    /// Waits (on this thread's executor) until the gate opens.
    pub async fn opened(&self) -> Window {
        loop {
            if let Some(w) = self.window() {
                return w;
            }
            glommio::timer::sleep(POLL).await;
        }
    }
}

/// See [`Gate::ticket`].
pub struct Ticket {
    gate: Option<Arc<Gate>>,
}

impl Ticket {
    /// This connection is ready: waits for the others, then returns the
    /// window to measure.
    pub async fn enter(mut self) -> Window {
        let gate = self.gate.take().expect("a ticket is entered once");
        gate.arrive();
        gate.opened().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.arrive();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_when_the_last_connection_arrives_or_gives_up() {
        let gate = Gate::new(3, Duration::from_secs(1), Duration::from_secs(2));
        let (a, b, c) = (gate.ticket(), gate.ticket(), gate.ticket());
        drop(a); // setup failed
        assert!(gate.window().is_none());
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async move {
            let waiting = glommio::spawn_local(b.enter());
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert!(gate.window().is_none(), "one connection still sets up");
            let w = c.enter().await;
            assert_eq!(waiting.await.start, w.start);
            assert_eq!(w.warm_end - w.start, Duration::from_secs(1));
            assert_eq!(w.end - w.warm_end, Duration::from_secs(2));
        });
    }
}
