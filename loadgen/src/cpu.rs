//! The loadgen's self-check: how busy each of its threads was during the
//! measured window, so a run can say when the load generator itself may be
//! what limits the figures. A thread's busy fraction is its CPU time (user
//! and system, `CLOCK_THREAD_CPUTIME_ID`) over the window's wall time; an
//! executor that runs out of work parks, so an idle client shows well below
//! 100%.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Above this busy fraction a loadgen thread is reported as a possible bound.
pub const BUSY_WARN_FRACTION: f64 = 0.90;

/// One loadgen thread's CPU use over the measured window.
#[derive(Clone, Copy, Debug)]
pub struct ThreadCpu {
    pub core: usize,
    /// CPU time / wall time over the window, 0.0 ..= ~1.0.
    pub busy: f64,
}

use tessera::internals::thread_cpu_time;

use crate::gate::Gate;

/// Waits until `from`, then until `to`, and returns this thread's busy
/// fraction between the two. Run it as a task on the thread to measure.
pub async fn busy_between(from: Instant, to: Instant) -> f64 {
    assert!(to > from, "an empty window has no busy fraction");
    glommio::timer::sleep(from.saturating_duration_since(Instant::now())).await;
    let (wall0, cpu0) = (Instant::now(), thread_cpu_time());
    glommio::timer::sleep(to.saturating_duration_since(Instant::now())).await;
    let (wall1, cpu1) = (Instant::now(), thread_cpu_time());
    let wall = wall1.duration_since(wall0).as_secs_f64();
    (cpu1 - cpu0).as_secs_f64() / wall.max(1e-9)
}

/// Spawns a detached task that measures this thread over the run's measured
/// window (after warm-up, once the gate opens) and
/// leaves the result in the returned cell (None if the run ended first).
pub fn watch(core: usize, gate: Arc<Gate>) -> Rc<Cell<Option<ThreadCpu>>> {
    let out = Rc::new(Cell::new(None));
    let cell = out.clone();
    glommio::spawn_local(async move {
        let w = gate.opened().await;
        let busy = busy_between(w.warm_end, w.end).await;
        cell.set(Some(ThreadCpu { core, busy }));
    })
    .detach();
    out
}

/// The measurement [`watch`] left, once the run is over. A run that ended
/// near `to` (an open-loop connection may finish its last exchange a little
/// before it) waits for the sampling task's last sample, at most `GRACE`
/// past `to`; a run that ended well before (a failure) has none.
pub async fn collect(cell: &Cell<Option<ThreadCpu>>, to: Instant) -> Option<ThreadCpu> {
    const GRACE: Duration = Duration::from_millis(200);
    if Instant::now() + GRACE < to {
        return cell.get();
    }
    while cell.get().is_none() && Instant::now() < to + GRACE {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    cell.get()
}

/// The warnings a run's threads call for, one per thread above
/// [`BUSY_WARN_FRACTION`].
pub fn warnings(threads: &[ThreadCpu]) -> Vec<String> {
    threads
        .iter()
        .filter(|t| t.busy > BUSY_WARN_FRACTION)
        .map(|t| {
            format!(
                "loadgen core {} was {:.0}% busy: the load generator may be the bound",
                t.core,
                t.busy * 100.0
            )
        })
        .collect()
}

/// `core N: B%` for each thread, for the summary.
pub fn describe(threads: &[ThreadCpu]) -> String {
    threads
        .iter()
        .map(|t| format!("core {} {:.0}% busy", t.core, t.busy * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `--json` form: per-thread figures and the warnings.
pub fn json(threads: &[ThreadCpu]) -> serde_json::Value {
    serde_json::json!({
        "threads": threads.iter().map(|t| serde_json::json!({"core": t.core, "busy": t.busy})).collect::<Vec<_>>(),
        "warn_above": BUSY_WARN_FRACTION,
        "warnings": warnings(threads),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_above_the_threshold() {
        let t = [
            ThreadCpu {
                core: 1,
                busy: 0.95,
            },
            ThreadCpu { core: 2, busy: 0.5 },
        ];
        let w = warnings(&t);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("core 1 was 95% busy"), "{w:?}");
    }

    #[test]
    fn a_spinning_thread_measures_busy_and_a_sleeping_one_idle() {
        let (idle, busy) = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let now = Instant::now();
                let idle = busy_between(now, now + Duration::from_millis(200)).await;
                // Another task keeps the thread on the CPU across the window;
                // the samples are taken whenever it lets the timers run.
                let start = Instant::now();
                let spinner = glommio::spawn_local(async move {
                    while start.elapsed() < Duration::from_millis(600) {
                        std::hint::spin_loop();
                        glommio::yield_if_needed().await;
                    }
                });
                let from = start + Duration::from_millis(10);
                let busy = busy_between(from, from + Duration::from_millis(300)).await;
                spinner.await;
                (idle, busy)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(idle < 0.5, "a sleeping thread measured {idle}");
        assert!(busy > 0.5, "a spinning thread measured {busy}");
    }
}
