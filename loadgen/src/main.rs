//! `tessera-loadgen`: closed-loop, pipelined load for MCP servers over TCP
//! (newline-delimited JSON-RPC), with latency in an HdrHistogram.
//!
//! Each selected core runs one pinned glommio executor driving its share of
//! the connections. Every response is checked against the request it answers;
//! a wrong or missing response makes the run fail.

mod hgrm;
mod scan;
mod tcp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use glommio::{LocalExecutorBuilder, Placement};
use simd_json::prelude::*;
use tessera::cli::parse_duration;
use tessera::protocol::json;
use tessera::runtime::{cores, process};

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
}

#[derive(Args, Debug)]
struct TcpArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Connections to open, spread over the loadgen's threads.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests kept in flight per connection.
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
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
    /// Write the latency percentile distribution (HdrHistogram .hgrm text,
    /// milliseconds) to this file.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<std::path::PathBuf>,
    /// Give up on a connection that receives nothing for this long while it
    /// has requests outstanding.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    response_timeout: Duration,
    /// Do not fail the run when responses are JSON-RPC errors or tool errors
    /// (wrong or missing responses still fail it).
    #[arg(long)]
    allow_errors: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let Transport::Tcp(args) = Cli::parse().transport;
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tessera-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Checks that `s` is a JSON object and returns it in compact form.
fn json_object(what: &str, s: &str) -> Result<String, String> {
    let mut bytes = s.as_bytes().to_vec();
    let tape =
        simd_json::to_tape(&mut bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    let v = tape.as_value();
    if !v.is_object() {
        return Err(format!("{what} must be a JSON object"));
    }
    Ok(json::encode_value(v))
}

fn request_suffix(a: &TcpArgs) -> Result<Vec<u8>, String> {
    let mut s = Vec::new();
    s.extend_from_slice(b",\"method\":");
    json::write_str(&mut s, &a.method);
    if a.method == "tools/call" {
        let args = match (&a.args, a.tool.as_str()) {
            (Some(j), _) => json_object("--args", j)?,
            (None, "echo") => r#"{"text":"hello"}"#.into(),
            (None, "add") => r#"{"a":1,"b":2}"#.into(),
            (None, _) => "{}".into(),
        };
        s.extend_from_slice(b",\"params\":{\"name\":");
        json::write_str(&mut s, &a.tool);
        s.extend_from_slice(b",\"arguments\":");
        s.extend_from_slice(args.as_bytes());
        s.push(b'}');
    } else if let Some(p) = &a.params {
        s.extend_from_slice(b",\"params\":");
        s.extend_from_slice(json_object("--params", p)?.as_bytes());
    }
    s.extend_from_slice(b"}\n");
    Ok(s)
}

fn run(a: TcpArgs) -> Result<ExitCode, String> {
    if a.connections == 0 || a.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be greater than zero".into());
    }
    let cores = cores::select(a.cores.as_deref())?;
    let threads = cores.len().min(a.connections);
    process::ensure_memlock(threads)?;

    let suffix = request_suffix(&a)?;
    let start = Instant::now();
    let warm_end = start + a.warmup;
    let end = warm_end + a.duration;
    let mut handles = Vec::with_capacity(threads);
    for (t, &core) in cores.iter().take(threads).enumerate() {
        let conns = (t..a.connections).step_by(threads).count();
        let plan = tcp::Plan {
            addr: a.addr,
            pipeline: a.pipeline,
            prefix: br#"{"jsonrpc":"2.0","id":"#.to_vec(),
            suffix: suffix.clone(),
            warm_end,
            end,
            response_timeout: a.response_timeout,
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("loadgen-{t}"))
            .io_memory(64 * 1024)
            .spawn(move || async move {
                let plan = Rc::new(plan);
                let tasks: Vec<_> = (0..conns)
                    .map(|_| glommio::spawn_local(tcp::run(plan.clone())))
                    .collect();
                let mut total = tcp::Outcome::new();
                for task in tasks {
                    total.merge(task.await);
                }
                total
            })
            .map_err(|e| format!("starting a thread on core {core}: {e}"))?;
        handles.push(handle);
    }
    let mut total = tcp::Outcome::new();
    for h in handles {
        match h.join() {
            Ok(o) => total.merge(o),
            Err(e) => total.failures.push(format!("loadgen thread failed: {e}")),
        }
    }

    let secs = a.duration.as_secs_f64();
    let h = &total.hist;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let what = if a.method == "tools/call" {
        format!("tools/call {}", a.tool)
    } else {
        a.method.clone()
    };
    println!(
        "tessera-loadgen: tcp {} | {} connections x {} pipeline | {} thread(s) on cores {} | {} | {:.1} s measured after {:.1} s warm-up",
        a.addr,
        a.connections,
        a.pipeline,
        threads,
        cores::format_core_list(&cores[..threads]),
        what,
        secs,
        a.warmup.as_secs_f64()
    );
    println!(
        "requests: {} sent | responses: {} measured, {} total, {} errors, {} wrong, {} missing",
        total.sent, total.measured, total.answered, total.errors, total.wrong, total.missing
    );
    println!("throughput: {:.0} msg/s", total.measured as f64 / secs);
    println!(
        "latency (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0,
        h.mean() / 1000.0
    );
    if let Some(path) = &a.hgrm {
        std::fs::write(path, hgrm::percentile_distribution(h))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut failed = false;
    for f in dedup_failures(&total.failures) {
        eprintln!("tessera-loadgen: {f}");
        failed = true;
    }
    if total.wrong > 0 || total.missing > 0 {
        eprintln!(
            "tessera-loadgen: FAIL: {} wrong and {} missing response(s)",
            total.wrong, total.missing
        );
        failed = true;
    }
    if total.errors > 0 && !a.allow_errors {
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
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
