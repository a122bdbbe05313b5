//! The latency of one cross-core hop on tessera's mesh, idle: one pinned
//! executor calls another (the first and last allowed CPUs) and awaits the
//! reply, one call at a time, with and without `--spin-before-park`. Prints
//! p50, p99 and the CPU both executors burned per round trip, so the price
//! of spinning is next to what it buys.
//!
//! `cargo run --release --example mesh_hop -- [CALLS] [SPIN-MICROSECONDS...]`
//! (default: 20000 calls; no spin, then 50 and 200 µs)

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args
        .next()
        .map(|a| a.parse().expect("CALLS is a number"))
        .unwrap_or(20_000);
    let mut spins: Vec<Option<u64>> = args
        .map(|a| Some(a.parse().expect("SPIN-MICROSECONDS is a number")))
        .collect();
    if spins.is_empty() {
        spins = vec![None, Some(50), Some(200)];
    }
    println!(
        "{:>12} {:>9} {:>9} {:>9} {:>14} {:>10}",
        "spin (us)", "p50 us", "p99 us", "mean us", "CPU us/trip", "CPU busy"
    );
    for spin in spins {
        // A short first run warms both executors and the mesh's queues.
        let _ = tessera::internals::mesh_hop_round_trips(1_000, spin.map(Duration::from_micros));
        let run = tessera::internals::mesh_hop_round_trips(calls, spin.map(Duration::from_micros));
        let mut us: Vec<f64> = run
            .round_trips
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
        let wall_us = run.wall.as_secs_f64() * 1e6;
        let cpu_us = run.cpu.as_secs_f64() * 1e6;
        println!(
            "{:>12} {:>9.1} {:>9.1} {:>9.1} {:>14.1} {:>9.0}%",
            spin.map_or("off".to_string(), |s| s.to_string()),
            at(0.5),
            at(0.99),
            wall_us / us.len() as f64,
            cpu_us / us.len() as f64,
            // Two executors: 200% is both cores fully busy.
            cpu_us / wall_us * 100.0
        );
    }
}
