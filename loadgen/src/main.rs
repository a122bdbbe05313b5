//! `tessera-loadgen`: load for MCP servers over TCP (NDJSON), Streamable
//! HTTP (legacy sessions or the modern stateless era) and stdio, closed loop
//! (pipelined) or open loop (fixed rate, latency from the intended send
//! time), with latency in an HdrHistogram; plus a subscription fan-out
//! workload.
//!
//! Each selected core runs one pinned glommio executor driving its share of
//! the connections. Every response is checked against the request it answers;
//! a wrong or missing response makes the run fail (exit 1).

mod cpu;
mod driver;
mod fanout;
mod gate;
mod hgrm;
mod scan;
mod stats;
mod wire;
mod workload;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use glommio::{LocalExecutorBuilder, Placement};
use tessera::config::parse_duration;
use tessera::config::{format_core_list, select_cores};
use tessera::internals::{ensure_memlock, raise_nofile};

use driver::Plan;
use stats::{Outcome, Stats, Tick};
use wire::{HttpWire, Wire};
use workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "tessera-loadgen",
    version,
    about = "Load generator for MCP servers"
)]
struct Cli {
    #[command(subcommand)]
    transport: Transport,
}

#[derive(Subcommand, Debug)]
enum Transport {
    /// Newline-delimited JSON-RPC over TCP (`tessera serve --tcp`).
    Tcp(TcpArgs),
    /// Streamable HTTP POSTs (`tessera serve --http`), legacy or modern era.
    Http(HttpArgs),
    /// The server's stdio: spawns the command given after `--`.
    Stdio(StdioArgs),
    /// Subscription fan-out: S subscribers, P updates/s, delivery latency.
    Fanout(fanout::FanoutArgs),
}

#[derive(Args, Debug)]
struct TcpArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Era {
    /// 2025-11-25: initialize, then requests carry Mcp-Session-Id.
    Legacy,
    /// 2026-07-28: stateless; MCP-Protocol-Version, Mcp-Method, Mcp-Name
    /// headers and `_meta` in every request.
    Modern,
}

#[derive(Args, Debug)]
struct HttpArgs {
    /// Server address. Repeat it for a cluster: each connection then opens
    /// one socket to every address and spreads its session's requests over
    /// them (legacy: one session, made on the connection's first address,
    /// used on all of them; --pipeline applies per socket).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: Vec<SocketAddr>,
    /// Legacy: make each session on this node instead (a cluster node the
    /// load does not reach), so every request is relayed by the node it
    /// reaches; measures the relay.
    #[arg(long, value_name = "ADDR")]
    init_addr: Option<SocketAddr>,
    /// The MCP endpoint path.
    #[arg(long, default_value = "/mcp")]
    path: String,
    #[arg(long, value_enum, default_value = "modern")]
    era: Era,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args, Debug)]
struct StdioArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The server command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Connections to open, spread over the loadgen's threads (stdio: 1).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests kept in flight per connection (closed loop), or the most
    /// that may be outstanding (open loop).
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// Open loop: total requests per second, spread evenly over the
    /// connections; latency counts from each request's intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Length of the measured period (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load applied before measuring starts; its responses are checked but
    /// not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// CPUs for the loadgen's threads, one pinned thread each (e.g. `1`,
    /// `2-3`). Default: every CPU this process may use.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
    /// JSON-RPC method to call.
    #[arg(long, default_value = "tools/call")]
    method: String,
    /// Tool to call when --method is tools/call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Tool arguments (JSON object). Default: {"text":"hello"} for echo,
    /// {"a":1,"b":2} for add, {} otherwise.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// Method params (JSON object) for methods other than tools/call.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// A weighted mix of requests instead of --method (see README: one
    /// `WEIGHT METHOD TOOL|- [JSON]` per line; `{key}` is a kv key).
    #[arg(long, value_name = "FILE")]
    mix: Option<PathBuf>,
    /// Fraction of `{key}` requests whose key another shard owns (so the
    /// request crosses the mesh).
    #[arg(long, default_value_t = 0.0)]
    cross_shard: f64,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text,
    /// milliseconds) to this file.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Print the summary as JSON (with the full configuration) on stdout
    /// instead of text.
    #[arg(long)]
    json: bool,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Give up on a connection that receives nothing for this long while it
    /// has requests outstanding.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    response_timeout: Duration,
    /// Do not fail the run when responses are JSON-RPC errors or tool errors
    /// (wrong or missing responses still fail it).
    #[arg(long)]
    allow_errors: bool,
    /// When the server closes a connection (a drain, `Connection: close`),
    /// connect again (NDJSON: initialize again; legacy HTTP: same session)
    /// and send the requests it left unanswered again; counted as
    /// reconnects and resent. Refused connects are retried and counted.
    #[arg(long)]
    reconnect: bool,
    /// Microseconds each loadgen thread busy-polls before sleeping. A
    /// sleeping client costs the server a wake-up per response (an
    /// inter-processor interrupt; on a VM a vCPU kick); spinning removes that
    /// cost from the server's side, as it is absent when the client is
    /// saturated anyway. The busy figure then includes the spinning.
    #[arg(long, value_name = "MICROSECONDS")]
    spin_before_park: Option<u64>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let r = match Cli::parse().transport {
        Transport::Tcp(a) => {
            let target = Target::Tcp(a.addr);
            run(target, a.load)
        }
        Transport::Http(a) => {
            let target = Target::Http {
                init: a.init_addr,
                addrs: a.addr.clone(),
                wire: HttpWire {
                    modern: a.era == Era::Modern,
                    host: a.addr[0].to_string(),
                    path: a.path,
                    session: None,
                },
            };
            run(target, a.load)
        }
        Transport::Stdio(a) => run(Target::Stdio(a.command), a.load),
        Transport::Fanout(a) => fanout::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tessera-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

enum Target {
    Tcp(SocketAddr),
    Http {
        addrs: Vec<SocketAddr>,
        init: Option<SocketAddr>,
        wire: HttpWire,
    },
    Stdio(Vec<String>),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Tcp(a) => format!("tcp {a}"),
            Target::Http { addrs, wire, .. } => format!(
                "http {}{} {}",
                addrs
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" + "),
                wire.path,
                if wire.modern {
                    "modern (2026-07-28)"
                } else {
                    "legacy (2025-11-25)"
                }
            ),
            Target::Stdio(cmd) => format!("stdio `{}`", cmd.join(" ")),
        }
    }
}

fn run(target: Target, a: LoadArgs) -> Result<ExitCode, String> {
    let connections = if matches!(target, Target::Stdio(_)) {
        1
    } else {
        a.connections
    };
    if connections == 0 || a.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be greater than zero".into());
    }
    if a.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    if !(0.0..=1.0).contains(&a.cross_shard) {
        return Err("--cross-shard is a fraction between 0 and 1".into());
    }
    let mut workload = match &a.mix {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Workload::from_mix(&text)?
        }
        None => Workload::single(&a.method, &a.tool, a.args.as_deref(), a.params.as_deref())?,
    };
    workload.cross_shard = a.cross_shard;
    let cores = select_cores(a.cores.as_deref()).map_err(|e| e.to_string())?;
    let threads = cores.len().min(connections);
    ensure_memlock(threads).map_err(|e| e.to_string())?;
    raise_nofile();

    let mut child = None;
    let stdio_fd = match &target {
        Target::Stdio(cmd) => {
            let (ours, theirs) =
                std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            let out = theirs.try_clone().map_err(|e| format!("dup: {e}"))?;
            let c = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                    theirs,
                )))
                .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
                .spawn()
                .map_err(|e| format!("starting {}: {e}", cmd[0]))?;
            child = Some(c);
            Some(ours)
        }
        _ => None,
    };
    let mut stdio_fd = stdio_fd;

    let gate = gate::Gate::new(connections, a.warmup, a.duration);
    let wire = match &target {
        Target::Http { wire, .. } => Wire::Http(wire.clone()),
        _ => Wire::Ndjson,
    };
    let init_addr = match &target {
        Target::Http { init, .. } => *init,
        _ => None,
    };
    let addrs: Rc<Vec<SocketAddr>> = Rc::new(match &target {
        Target::Tcp(addr) => vec![*addr],
        Target::Http { addrs, .. } => addrs.clone(),
        Target::Stdio(_) => Vec::new(),
    });
    let (tick_tx, tick_rx) = std::sync::mpsc::channel::<Tick>();
    let printer = stats::spawn_printer(tick_rx, threads, a.warmup, a.quiet, "msg/s");
    let mut handles = Vec::with_capacity(threads);
    for (t, &core) in cores.iter().take(threads).enumerate() {
        let conns: Vec<usize> = (t..connections).step_by(threads).collect();
        let plan = Plan {
            wire: wire.clone(),
            workload: workload.clone(),
            pipeline: a.pipeline,
            rate_per_conn: a.rate.map(|r| r / connections as f64),
            response_timeout: a.response_timeout,
            reconnect: a.reconnect,
        };
        let fd = stdio_fd.take();
        let ticks = tick_tx.clone();
        let addrs: Vec<SocketAddr> = addrs.to_vec();
        let gate = gate.clone();
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("loadgen-{t}"))
            .io_memory(64 * 1024);
        if let Some(us) = a.spin_before_park {
            builder = builder.spin_before_park(Duration::from_micros(us));
        }
        let handle = builder
            .spawn(move || async move {
                let plan = Rc::new(plan);
                let cpu = cpu::watch(core, gate.clone());
                let stats = Rc::new(RefCell::new(Stats::new()));
                let done = Rc::new(Cell::new(false));
                glommio::spawn_local(report_ticks(
                    stats.clone(),
                    done.clone(),
                    gate.clone(),
                    ticks,
                ))
                .detach();
                let mut fd = fd;
                let tasks: Vec<_> = conns
                    .into_iter()
                    .map(|c| {
                        let (plan, stats) = (plan.clone(), stats.clone());
                        let fd = if c == 0 { fd.take() } else { None };
                        let addrs = addrs.clone();
                        let ticket = gate.ticket();
                        glommio::spawn_local(async move {
                            let r =
                                connect_and_run(&addrs, init_addr, fd, &plan, c, ticket, &stats)
                                    .await;
                            if let Err(e) = r {
                                stats.borrow_mut().total.failures.push(e);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await;
                }
                done.set(true);
                let mut total = std::mem::replace(&mut stats.borrow_mut().total, Outcome::new());
                if let Some(w) = gate.window() {
                    total.cpu.extend(cpu::collect(&cpu, w.end).await);
                }
                total
            })
            .map_err(|e| format!("starting a thread on core {core}: {e}"))?;
        handles.push(handle);
    }
    let mut total = stats::join_all(handles, &tick_tx, printer);
    if let Some(mut c) = child {
        // Our end of the pipe is closed: a well-behaved server exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
            total
                .failures
                .push("the stdio server did not exit within 5 s of EOF".into());
        }
        let _ = c.wait();
    }
    report(
        &target,
        &a,
        &workload,
        connections,
        &cores[..threads],
        total,
    )
}

/// Connection `conn`'s sockets: to each address, starting with its own
/// (connections take the addresses in turn).
async fn connect_and_run(
    addrs: &[SocketAddr],
    init_addr: Option<SocketAddr>,
    fd: Option<std::os::unix::net::UnixStream>,
    plan: &Plan,
    conn: usize,
    ticket: gate::Ticket,
    stats: &RefCell<Stats>,
) -> Result<(), String> {
    match (addrs.is_empty(), fd) {
        (false, _) => {
            let mut streams = Vec::with_capacity(addrs.len());
            for i in 0..addrs.len() {
                let addr = addrs[(conn + i) % addrs.len()];
                let s = glommio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                s.set_nodelay(true)
                    .map_err(|e| format!("TCP_NODELAY: {e}"))?;
                streams.push(s);
            }
            let first = streams.remove(0);
            let redial_to = addrs[conn % addrs.len()];
            let redial = move || -> driver::Dial<glommio::net::TcpStream> {
                Box::pin(async move {
                    let s = glommio::net::TcpStream::connect(redial_to)
                        .await
                        .map_err(std::io::Error::from)?;
                    let _ = s.set_nodelay(true);
                    Ok(s)
                })
            };
            let redial: Option<&dyn Fn() -> driver::Dial<glommio::net::TcpStream>> =
                (plan.reconnect && streams.is_empty() && init_addr.is_none())
                    .then_some(&redial as _);
            let init = match init_addr {
                Some(a) => Some(
                    glommio::net::TcpStream::connect(a)
                        .await
                        .map_err(|e| format!("connect {a}: {e}"))?,
                ),
                None => None,
            };
            driver::run(first, streams, init, redial, plan, conn, ticket, stats).await
        }
        (true, Some(fd)) => {
            // SAFETY: the descriptor is a live socket we own and hand over.
            let s = unsafe {
                <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(
                    std::os::fd::IntoRawFd::into_raw_fd(fd),
                )
            };
            driver::run(s, Vec::new(), None, None, plan, conn, ticket, stats).await
        }
        (true, None) => Err("no transport".into()),
    }
}

/// Ships this thread's tick every second, aligned on the run's start (when
/// the gate opens).
async fn report_ticks(
    stats: Rc<RefCell<Stats>>,
    done: Rc<Cell<bool>>,
    gate: std::sync::Arc<gate::Gate>,
    ticks: std::sync::mpsc::Sender<Tick>,
) {
    let start = gate.opened().await.start;
    for index in 0u64.. {
        let at = start + Duration::from_secs(index + 1);
        glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
        if done.get() {
            return;
        }
        let t = stats.borrow_mut().take_tick(index);
        if ticks.send(t).is_err() {
            return;
        }
    }
}

fn report(
    target: &Target,
    a: &LoadArgs,
    workload: &Workload,
    connections: usize,
    cores_used: &[usize],
    total: Outcome,
) -> Result<ExitCode, String> {
    let secs = a.duration.as_secs_f64();
    let h = &total.hist;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let throughput = total.measured as f64 / secs;
    let mode = match a.rate {
        Some(r) => format!(
            "open loop {r:.0} req/s, at most {} outstanding per connection",
            a.pipeline
        ),
        None => format!("{} pipeline", a.pipeline),
    };
    let header = format!(
        "tessera-loadgen: {} | {} connections x {} | {} thread(s) on cores {} | {} | {:.1} s measured after {:.1} s warm-up",
        target.describe(),
        connections,
        mode,
        cores_used.len(),
        format_core_list(cores_used),
        workload.describe(),
        secs,
        a.warmup.as_secs_f64()
    );
    if a.json {
        let q = |p: f64| serde_json::json!(us(p));
        let v = serde_json::json!({
            "config": {
                "target": target.describe(),
                "connections": connections,
                "pipeline": a.pipeline,
                "rate": a.rate,
                "duration_s": secs,
                "warmup_s": a.warmup.as_secs_f64(),
                "cores": format_core_list(cores_used),
                "workload": workload.describe(),
                "cross_shard": a.cross_shard,
                "mix": a.mix.as_ref().map(|p| p.display().to_string()),
                "response_timeout_s": a.response_timeout.as_secs_f64(),
                "spin_before_park_us": a.spin_before_park,
            },
            "requests_sent": total.sent,
            "responses_total": total.answered,
            "responses_measured": total.measured,
            "errors": total.errors,
            "wrong": total.wrong,
            "wrong_samples": total.wrong_samples,
            "missing": total.missing,
            "reconnects": total.reconnects,
            "resent": total.resent,
            "refused": total.refused,
            "resets": total.resets,
            "throughput_msg_per_s": throughput,
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999),
                "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0,
            },
            "failures": total.failures,
            "loadgen_cpu": cpu::json(&total.cpu),
        });
        println!("{v}");
    } else {
        println!("{header}");
        println!(
            "requests: {} sent | responses: {} measured, {} total, {} errors, {} wrong, {} missing",
            total.sent, total.measured, total.answered, total.errors, total.wrong, total.missing
        );
        if a.reconnect || total.refused + total.resets > 0 {
            println!(
                "connections: {} reconnects, {} requests resent, {} refused, {} reset",
                total.reconnects, total.resent, total.refused, total.resets
            );
        }
        println!("throughput: {throughput:.0} msg/s");
        println!(
            "latency (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0
        );
        println!("loadgen cpu: {}", cpu::describe(&total.cpu));
    }
    for w in cpu::warnings(&total.cpu) {
        eprintln!("tessera-loadgen: WARNING: {w}");
    }
    if let Some(path) = &a.hgrm {
        std::fs::write(path, hgrm::percentile_distribution(h))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(verdict(&total, a.allow_errors))
}

/// Prints why the run failed, if it did, and returns the exit status.
pub fn verdict(total: &Outcome, allow_errors: bool) -> ExitCode {
    let mut failed = false;
    for f in dedup_failures(&total.failures) {
        eprintln!("tessera-loadgen: {f}");
        failed = true;
    }
    for w in &total.wrong_samples {
        eprintln!("tessera-loadgen: wrong response: {w}");
    }
    if total.wrong > 0 || total.missing > 0 {
        eprintln!(
            "tessera-loadgen: FAIL: {} wrong and {} missing response(s)",
            total.wrong, total.missing
        );
        failed = true;
    }
    if total.errors > 0 && !allow_errors {
        eprintln!(
            "tessera-loadgen: FAIL: {} error response(s) (pass --allow-errors if expected)",
            total.errors
        );
        failed = true;
    }
    if total.measured == 0 {
        eprintln!("tessera-loadgen: FAIL: no response inside the measured period");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Collapses identical failure messages (one per connection) into counts.
fn dedup_failures(f: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for msg in f {
        match out.iter_mut().find(|(m, _)| m == msg) {
            Some((_, n)) => *n += 1,
            None => out.push((msg.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(m, n)| {
            if n > 1 {
                format!("{m} ({n} connections)")
            } else {
                m
            }
        })
        .collect()
}
