//! The request hot path without I/O, reported per operation:
//! - `hot_path/*`: parse one NDJSON message, dispatch it, encode the response;
//! - `mesh/hop_round_trip`: one kv request to another core's executor over
//!   tessera's mesh and its reply back (two pinned executors, each waiting
//!   for the other in turn: the latency of a hop, not a throughput);
//! - `metrics/histogram_record`: recording one request's latency;
//! - `parse/*`: parsing one small request into a tape, by the scalar fast
//!   path and by simd-json alone.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::api::McpServer;
use tessera::config::Limits;
use tessera::internals::json::{small_fill_tape, Parser};
use tessera::internals::{Metrics, Shard, PARSE_PADDING};

fn padded(line: &[u8]) -> Vec<u8> {
    let mut v = line.to_vec();
    v.resize(line.len() + PARSE_PADDING, b' ');
    v
}

fn bench(c: &mut Criterion) {
    // The shard lives on a glommio executor like a real one (its handlers
    // may spawn tasks); criterion runs inside it.
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async { hot_path(c) });
}

fn hot_path(c: &mut Criterion) {
    let app = McpServer::new().with_builtins().build();
    let shard = Shard::new(&app, Limits::default(), None);
    let mut session = shard.session();
    let mut out = Vec::with_capacity(1 << 16);
    let mut init = padded(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#);
    let n = init.len() - PARSE_PADDING;
    assert!(session.handle(&mut init, n, &mut out));

    let line: &[u8] = br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}}}"#;
    let mut buf = padded(line);
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tools_call_echo", |b| {
        b.iter(|| {
            // Parsing unescapes in place; this line has no escapes, so reusing
            // the buffer leaves it unchanged.
            out.clear();
            let answered = session.handle(&mut buf, line.len(), &mut out);
            debug_assert!(answered);
            criterion::black_box(&out);
        })
    });
    let ping: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut pbuf = padded(ping);
    group.bench_function("ping", |b| {
        b.iter(|| {
            out.clear();
            session.handle(&mut pbuf, ping.len(), &mut out);
            criterion::black_box(&out);
        })
    });
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let line: &[u8] = br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}}}"#;
    let mut buf = padded(line);
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(line.len() as u64));
    let mut tape = Vec::with_capacity(64);
    group.bench_function("small_request_scalar", |b| {
        b.iter(|| {
            tape.clear();
            assert!(small_fill_tape(criterion::black_box(line), &mut tape));
            criterion::black_box(tape.len());
        })
    });
    let mut buffers = simd_json::Buffers::new(64 * 1024);
    let mut simd = simd_json::tape::Tape(Vec::with_capacity(64));
    group.bench_function("small_request_simd_json", |b| {
        b.iter(|| {
            let mut t = std::mem::replace(&mut simd, simd_json::tape::Tape(Vec::new())).reset();
            simd_json::fill_tape_padded(&mut buf, line.len(), &mut buffers, &mut t).unwrap();
            criterion::black_box(t.0.len());
            simd = t.reset();
        })
    });
    let mut parser = Parser::new();
    group.bench_function("small_request_parser", |b| {
        b.iter(|| criterion::black_box(parser.parse(&mut buf, line.len(), |v| v.is_ok())))
    });
    group.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let mut m = Metrics::default();
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));
    let mut ns = 0u64;
    group.bench_function("histogram_record", |b| {
        b.iter(|| {
            ns = (ns + 7919) % 5_000_000;
            m.record_tool_call(std::time::Duration::from_nanos(criterion::black_box(ns)));
        })
    });
    group.finish();
}

fn bench_mesh(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("hop_round_trip", |b| {
        b.iter_custom(tessera::internals::mesh_round_trips)
    });
    group.finish();
}

criterion_group!(benches, bench, bench_parse, bench_mesh, bench_metrics);
criterion_main!(benches);
