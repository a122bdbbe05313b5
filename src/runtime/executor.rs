//! Pinned executor threads: one glommio executor per selected CPU, started
//! (and restarted) by the main thread, with a post-mortem when a panic
//! escapes the executor itself.
//!
//! The thread keeps whatever the executor's main future registers in its
//! [`Slot`] outside the executor, so when a panic unwinds `executor.run` the
//! thread can still look at what died (and shut its sockets) before it
//! ends. What the slot holds is up to the caller; this module only starts
//! threads and reports.

use std::cell::RefCell;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

/// Where an executor's main future leaves the state a post-mortem needs.
pub type Slot<T> = Rc<RefCell<Option<Rc<T>>>>;

/// How to start one executor thread.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    /// The thread's name (log lines carry it).
    pub name: String,
    /// The CPU the executor is pinned to.
    pub cpu: usize,
    /// glommio's registered I/O memory.
    pub io_memory_bytes: usize,
    /// Busy-poll this long before sleeping in the kernel.
    pub spin_before_park: Option<Duration>,
}

/// Why an executor thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("spawning the thread for CPU {cpu}: {source}")]
    Thread { cpu: usize, source: std::io::Error },
    #[error("starting the executor on CPU {cpu}: {message}")]
    Executor { cpu: usize, message: String },
    #[error("the executor thread for CPU {cpu} did not report within {timeout:?}")]
    Silent { cpu: usize, timeout: Duration },
}

/// A running executor thread.
pub struct Launched {
    pub join: JoinHandle<()>,
}

/// Starts a thread with a pinned executor and calls `run(executor, slot)`
/// on it (which runs the executor's main future). When `run` returns, the
/// executor is dropped (its remaining tasks with it) and `after(output)`
/// runs on the thread: the place for blocking clean-up, such as joining a
/// writer thread. If a panic escapes the executor instead,
/// `post_mortem(what the slot held, panic message)` runs on the thread
/// before it ends, with the executor still alive (glommio cannot drop a dead
/// executor's tasks). Returns once the executor exists.
pub fn launch<T, O, R, A, P>(
    spec: ExecutorSpec,
    report_within: Duration,
    run: R,
    after: A,
    post_mortem: P,
) -> Result<Launched, LaunchError>
where
    T: 'static,
    R: FnOnce(&LocalExecutor, Slot<T>) -> O + Send + 'static,
    A: FnOnce(O) + Send + 'static,
    P: FnOnce(Option<Rc<T>>, String) + Send + 'static,
{
    let cpu = spec.cpu;
    let (made_tx, made_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let join = std::thread::Builder::new()
        .name(spec.name.clone())
        .spawn(move || {
            let mut builder = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu))
                .name(&spec.name)
                .io_memory(spec.io_memory_bytes);
            if let Some(spin) = spec.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            let executor = match builder.make() {
                Ok(ex) => ex,
                Err(e) => {
                    let _ = made_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = made_tx.send(Ok(()));
            let slot: Slot<T> = Rc::default();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&executor, slot.clone())
            }));
            match ran {
                Ok(output) => {
                    drop(slot);
                    drop(executor);
                    after(output);
                }
                Err(panic) => {
                    let held = slot.borrow_mut().take();
                    post_mortem(held, panic_message(panic.as_ref()));
                }
            }
        })
        .map_err(|source| LaunchError::Thread { cpu, source })?;
    match made_rx.recv_timeout(report_within) {
        Ok(Ok(())) => Ok(Launched { join }),
        Ok(Err(message)) => {
            let _ = join.join();
            Err(LaunchError::Executor { cpu, message })
        }
        Err(_) => Err(LaunchError::Silent {
            cpu,
            timeout: report_within,
        }),
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}
