//! Subscription fan-out: S subscriber connections each subscribe to M
//! `kv://fan-{j}` resources; one publisher updates them round-robin at P
//! updates/s (open loop). Every update must reach every subscriber as a
//! `notifications/resources/updated`; delivery latency is measured from the
//! moment the publisher wrote the update to the moment a subscriber read the
//! notification. With M keys each key changes every M/P seconds, so a
//! notification is matched to the latest update of its key unambiguously as
//! long as delivery takes less than that.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use memchr::memmem;
use tessera::config::parse_duration;
use tessera::config::{format_core_list, select_cores};
use tessera::internals::{ensure_memlock, raise_nofile};

use crate::cpu::ThreadCpu;
use crate::driver::{initialize, Reader};
use crate::stats::{self, Outcome, Stats, Tick};
use crate::wire::{Frame, Wire};

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Server address (NDJSON over TCP).
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Resource updates per second, round-robin over --keys.
    #[arg(long, default_value_t = 100.0)]
    updates_per_sec: f64,
    /// Distinct resources every subscriber watches.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Length of the measured period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long after the last update subscribers wait for stragglers.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    grace: Duration,
    /// CPUs for the loadgen's threads (the first also runs the publisher).
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
    /// Write the delivery latency distribution (.hgrm) to this file.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<std::path::PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
}

/// State every thread shares (atomics are fine here: this is the loadgen).
struct Shared {
    epoch: Instant,
    /// When each key was last written, in ns since `epoch`.
    published: Vec<AtomicU64>,
    keys_ready: AtomicBool,
    subscribed: AtomicUsize,
    failed: AtomicBool,
    /// When publishing started, in ns since `epoch` (0: not yet).
    started_ns: AtomicU64,
    /// Updates written (and acknowledged or not) after every subscriber
    /// was in place.
    updates: AtomicU64,
    /// Publishing is over (ns since `epoch`, 0: not yet).
    stopped_ns: AtomicU64,
}

impl Shared {
    fn ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(a: FanoutArgs) -> Result<ExitCode, String> {
    if a.subscribers == 0 || a.keys == 0 || a.updates_per_sec <= 0.0 {
        return Err("--subscribers, --keys and --updates-per-sec must be positive".into());
    }
    let cores = select_cores(a.cores.as_deref()).map_err(|e| e.to_string())?;
    let threads = cores.len().min(a.subscribers);
    ensure_memlock(threads).map_err(|e| e.to_string())?;
    let nofile = raise_nofile();
    if nofile < a.subscribers as u64 + 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}; {} subscribers need more (ulimit -n)",
            a.subscribers
        ));
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        published: (0..a.keys).map(|_| AtomicU64::new(0)).collect(),
        keys_ready: AtomicBool::new(false),
        subscribed: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        started_ns: AtomicU64::new(0),
        updates: AtomicU64::new(0),
        stopped_ns: AtomicU64::new(0),
    });
    let (tick_tx, tick_rx) = std::sync::mpsc::channel::<Tick>();
    let mut handles = Vec::new();
    let a = Arc::new(a);
    for (t, &core) in cores.iter().take(threads).enumerate() {
        let subs: Vec<usize> = (t..a.subscribers).step_by(threads).collect();
        let (shared, a, ticks) = (shared.clone(), a.clone(), tick_tx.clone());
        let h = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("fanout-{t}"))
            .io_memory(64 * 1024)
            .spawn(move || async move {
                let stats = Rc::new(RefCell::new(Stats::new()));
                glommio::spawn_local(ticker(stats.clone(), shared.clone(), ticks)).detach();
                let cpu = watch_cpu(core, shared.clone(), a.clone());
                let publisher = (t == 0).then(|| {
                    let (shared, a) = (shared.clone(), a.clone());
                    glommio::spawn_local(async move { publish(&a, &shared).await })
                });
                let tasks: Vec<_> = subs
                    .into_iter()
                    .map(|_| {
                        let (shared, a, stats) = (shared.clone(), a.clone(), stats.clone());
                        glommio::spawn_local(async move { subscribe(&a, &shared, &stats).await })
                    })
                    .collect();
                let mut failures = Vec::new();
                for task in tasks {
                    if let Err(e) = task.await {
                        shared.failed.store(true, Ordering::Relaxed);
                        failures.push(e);
                    }
                }
                if let Some(p) = publisher {
                    if let Err(e) = p.await {
                        shared.failed.store(true, Ordering::Relaxed);
                        failures.push(format!("publisher: {e}"));
                    }
                }
                let mut total = std::mem::replace(&mut stats.borrow_mut().total, Outcome::new());
                total.failures = failures;
                if let Some((_, end)) = cpu.1.get() {
                    total.cpu.extend(crate::cpu::collect(&cpu.0, end).await);
                }
                total
            })
            .map_err(|e| format!("starting a thread on core {core}: {e}"))?;
        handles.push(h);
    }
    let printer = stats::spawn_printer(tick_rx, threads, Duration::ZERO, a.quiet, "notif/s");
    let mut total = stats::join_all(handles, &tick_tx, printer);
    let updates = shared.updates.load(Ordering::Relaxed);
    let expected = updates * a.subscribers as u64;
    let received = total.answered;
    total.missing = expected.saturating_sub(received);
    total.wrong += received.saturating_sub(expected);
    total.sent = expected;
    let secs = a.duration.as_secs_f64();
    let h = &total.hist;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = total.measured as f64 / secs;
    if a.json {
        let v = serde_json::json!({
            "config": {
                "target": format!("fanout tcp {}", a.addr),
                "subscribers": a.subscribers, "keys": a.keys,
                "updates_per_sec": a.updates_per_sec,
                "duration_s": secs, "warmup_s": a.warmup.as_secs_f64(),
                "cores": format_core_list(&cores[..threads]),
            },
            "updates": updates, "notifications_expected": expected,
            "notifications_received": received, "missing": total.missing,
            "notifications_per_s": rate,
            "latency_us": {"p50": us(0.5), "p90": us(0.9), "p99": us(0.99),
                "p99_9": us(0.999), "max": h.max() as f64 / 1000.0},
            "failures": total.failures,
            "loadgen_cpu": crate::cpu::json(&total.cpu),
        });
        println!("{v}");
    } else {
        println!(
            "tessera-loadgen: fanout tcp {} | {} subscribers x {} keys | {:.0} updates/s | {} thread(s) on cores {} | {:.1} s measured after {:.1} s warm-up",
            a.addr,
            a.subscribers,
            a.keys,
            a.updates_per_sec,
            threads,
            format_core_list(&cores[..threads]),
            secs,
            a.warmup.as_secs_f64()
        );
        println!(
            "updates: {updates} | notifications: {expected} expected, {received} received, {} missing, {} unexpected",
            total.missing, total.wrong
        );
        println!("throughput: {rate:.0} notifications/s");
        println!(
            "delivery latency (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0
        );
        println!("loadgen cpu: {}", crate::cpu::describe(&total.cpu));
    }
    for w in crate::cpu::warnings(&total.cpu) {
        eprintln!("tessera-loadgen: WARNING: {w}");
    }
    if let Some(path) = &a.hgrm {
        std::fs::write(path, crate::hgrm::percentile_distribution(h))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(crate::verdict(&total, false))
}

async fn ticker(
    stats: Rc<RefCell<Stats>>,
    shared: Arc<Shared>,
    ticks: std::sync::mpsc::Sender<Tick>,
) {
    // Ticks start with publishing so every thread's seconds line up.
    while shared.started_ns.load(Ordering::Relaxed) == 0 {
        if shared.failed.load(Ordering::Relaxed) || shared.stopped_ns.load(Ordering::Relaxed) > 0 {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let start = shared.epoch + Duration::from_nanos(shared.started_ns.load(Ordering::Relaxed));
    for index in 0u64.. {
        let at = start + Duration::from_secs(index + 1);
        glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
        let t = stats.borrow_mut().take_tick(index);
        if ticks.send(t).is_err() {
            return;
        }
        let stopped = shared.stopped_ns.load(Ordering::Relaxed);
        if stopped > 0 && shared.ns() > stopped {
            return;
        }
    }
}

/// This thread's CPU use over the measured window, which starts `--warmup`
/// after publishing does (the cell's second half holds the window once known).
#[allow(clippy::type_complexity)]
fn watch_cpu(
    core: usize,
    shared: Arc<Shared>,
    a: Arc<FanoutArgs>,
) -> (
    Rc<Cell<Option<ThreadCpu>>>,
    Rc<Cell<Option<(Instant, Instant)>>>,
) {
    let (out, window) = (Rc::new(Cell::new(None)), Rc::new(Cell::new(None)));
    let (cell, win) = (out.clone(), window.clone());
    glommio::spawn_local(async move {
        while shared.started_ns.load(Ordering::Relaxed) == 0 {
            if shared.failed.load(Ordering::Relaxed)
                || shared.stopped_ns.load(Ordering::Relaxed) > 0
            {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let start = shared.epoch + Duration::from_nanos(shared.started_ns.load(Ordering::Relaxed));
        let (from, to) = (start + a.warmup, start + a.warmup + a.duration);
        win.set(Some((from, to)));
        let busy = crate::cpu::busy_between(from, to).await;
        cell.set(Some(ThreadCpu { core, busy }));
    })
    .detach();
    (out, window)
}

async fn connect(a: &FanoutArgs) -> Result<(TcpStream, Reader, Wire), String> {
    let mut s = TcpStream::connect(a.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", a.addr))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut reader = Reader::new();
    let mut wire = Wire::Ndjson;
    initialize(&mut s, &mut reader, &mut wire, SETUP_TIMEOUT).await?;
    Ok((s, reader, wire))
}

/// Sends one request line and waits for its (numeric-id) response.
async fn call(
    s: &mut TcpStream,
    reader: &mut Reader,
    wire: &mut Wire,
    id: u64,
    body: &str,
) -> Result<(), String> {
    let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},{body}}}\n");
    let want = format!("\"id\":{id},");
    crate::driver::exchange(
        s,
        reader,
        wire,
        line.as_bytes(),
        SETUP_TIMEOUT,
        |f| match f {
            Frame::Json(j) if memmem::find(&j, want.as_bytes()).is_some() => Some(
                if memmem::find(&j, b"\"error\"").is_some()
                    || memmem::find(&j, b"\"isError\":true").is_some()
                {
                    Err(format!("request failed: {}", String::from_utf8_lossy(&j)))
                } else {
                    Ok(())
                },
            ),
            _ => None,
        },
    )
    .await
}

fn set_body(key: usize, value: u64) -> String {
    format!(
        r#""method":"tools/call","params":{{"name":"kv_set","arguments":{{"key":"fan-{key}","value":{value}}}}}"#
    )
}

async fn publish(a: &FanoutArgs, shared: &Shared) -> Result<(), String> {
    let r = publish_inner(a, shared).await;
    if shared.stopped_ns.load(Ordering::Relaxed) == 0 {
        shared
            .stopped_ns
            .store(shared.ns().max(1), Ordering::Relaxed);
    }
    r
}

async fn publish_inner(a: &FanoutArgs, shared: &Shared) -> Result<(), String> {
    let (mut s, mut reader, mut wire) = connect(a).await?;
    for k in 0..a.keys {
        call(&mut s, &mut reader, &mut wire, k as u64, &set_body(k, 0)).await?;
    }
    shared.keys_ready.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while shared.subscribed.load(Ordering::Relaxed) < a.subscribers {
        if shared.failed.load(Ordering::Relaxed) {
            return Err("a subscriber failed during setup".into());
        }
        if Instant::now() > deadline {
            return Err("subscribers were not all in place within 60 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    let start = Instant::now();
    shared
        .started_ns
        .store(shared.ns().max(1), Ordering::Relaxed);
    let interval = Duration::from_secs_f64(1.0 / a.updates_per_sec);
    let end = start + a.warmup + a.duration;
    let mut due = start;
    let mut n = 0u64;
    let mut line = Vec::new();
    while due < end {
        glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
        // Every update that is due goes out now, in one write.
        line.clear();
        let now = Instant::now();
        let mut batch = 0;
        while due <= now && due < end {
            let key = (n % a.keys as u64) as usize;
            shared.published[key].store(shared.ns(), Ordering::Relaxed);
            line.extend_from_slice(
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{},{}}}\n",
                    1_000_000 + n,
                    set_body(key, n + 1)
                )
                .as_bytes(),
            );
            n += 1;
            batch += 1;
            due += interval;
        }
        s.write_all(&line)
            .await
            .map_err(|e| format!("write: {e}"))?;
        shared.updates.fetch_add(batch, Ordering::Relaxed);
        // Acknowledgements are read so they never back up; their content was
        // checked during setup.
        while reader.next_frame(&mut wire)?.is_some() {}
        let _ = reader.fill(&mut s, Instant::now()).await?;
    }
    shared
        .stopped_ns
        .store(shared.ns().max(1), Ordering::Relaxed);
    Ok(())
}

async fn subscribe(a: &FanoutArgs, shared: &Shared, stats: &RefCell<Stats>) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !shared.keys_ready.load(Ordering::Relaxed) {
        if shared.failed.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err("the publisher never created the keys".into());
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    let (mut s, mut reader, mut wire) = connect(a).await?;
    for k in 0..a.keys {
        let body = format!(r#""method":"resources/subscribe","params":{{"uri":"kv://fan-{k}"}}"#);
        call(&mut s, &mut reader, &mut wire, k as u64, &body).await?;
    }
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    let marker = memmem::Finder::new(b"notifications/resources/updated");
    let uri = memmem::Finder::new(b"\"uri\":\"kv://fan-");
    loop {
        let stopped = shared.stopped_ns.load(Ordering::Relaxed);
        let until = if stopped > 0 {
            shared.epoch + Duration::from_nanos(stopped) + a.grace
        } else {
            Instant::now() + Duration::from_millis(100)
        };
        if stopped > 0 && Instant::now() >= until {
            return Ok(());
        }
        if shared.failed.load(Ordering::Relaxed) && stopped == 0 {
            return Err("another connection failed".into());
        }
        match reader.fill(&mut s, until).await? {
            Some(0) => return Err("the server closed a subscriber connection".into()),
            None => continue,
            Some(_) => {}
        }
        let now_ns = shared.ns();
        let started = shared.started_ns.load(Ordering::Relaxed);
        let warm_end = started + a.warmup.as_nanos() as u64;
        let end = warm_end + a.duration.as_nanos() as u64;
        let measuring = started > 0 && now_ns >= warm_end && now_ns <= end;
        let mut st = stats.borrow_mut();
        while let Some(f) = reader.next_frame(&mut wire)? {
            let Frame::Json(j) = f else { continue };
            if marker.find(&j).is_none() {
                continue;
            }
            let Some(at) = uri.find(&j) else {
                st.total.wrong += 1;
                continue;
            };
            let digits = &j[at + uri.needle().len()..];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            let key: usize = std::str::from_utf8(&digits[..n])
                .ok()
                .and_then(|d| d.parse().ok())
                .filter(|&k| k < a.keys)
                .ok_or("a notification for a key nobody updated")?;
            let published = shared.published[key].load(Ordering::Relaxed);
            st.answered(
                false,
                measuring,
                Duration::from_nanos(now_ns.saturating_sub(published)),
            );
        }
    }
}
