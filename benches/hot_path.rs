//! The request hot path without I/O, reported per operation:
//! - `hot_path/*`: parse one NDJSON message, dispatch it, encode the response;
//! - `mesh/hop_round_trip`: one kv request to another core's executor over
//!   tessera's mesh and its reply back (two pinned executors, each waiting
//!   for the other in turn: the latency of a hop, not a throughput);
//! - `metrics/histogram_record`: recording one request's latency.

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::config::Limits;
use tessera::protocol::PARSE_PADDING;
use tessera::runtime::shard::Shard;
use tessera::server::api::McpServer;
use tessera::server::Session;

fn padded(line: &[u8]) -> Vec<u8> {
    let mut v = line.to_vec();
    v.resize(line.len() + PARSE_PADDING, b' ');
    v
}

fn bench(c: &mut Criterion) {
    let registry = McpServer::new()
        .with_builtins()
        .build()
        .build()
        .expect("built-in registry");
    let shard = Rc::new(Shard::standalone(Limits::default(), registry));
    let mut session = Session::new(&shard, None);
    let mut out = Vec::with_capacity(1 << 16);
    let mut init = padded(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#);
    let n = init.len() - PARSE_PADDING;
    assert!(session
        .handle_message(&shard, &mut init, n, &mut out, None)
        .is_none());

    let line: &[u8] = br#"{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello world"}}}"#;
    let mut buf = padded(line);
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tools_call_echo", |b| {
        b.iter(|| {
            // Parsing unescapes in place; this line has no escapes, so reusing
            // the buffer leaves it unchanged.
            out.clear();
            let pending = session.handle_message(&shard, &mut buf, line.len(), &mut out, None);
            debug_assert!(pending.is_none());
            criterion::black_box(&out);
        })
    });
    let ping: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut pbuf = padded(ping);
    group.bench_function("ping", |b| {
        b.iter(|| {
            out.clear();
            session.handle_message(&shard, &mut pbuf, ping.len(), &mut out, None);
            criterion::black_box(&out);
        })
    });
    group.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let mut m = tessera::metrics::ShardMetrics::new();
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));
    let mut ns = 0u64;
    group.bench_function("histogram_record", |b| {
        b.iter(|| {
            ns = (ns + 7919) % 5_000_000;
            m.record(
                tessera::metrics::MethodKind::ToolsCall,
                std::time::Duration::from_nanos(criterion::black_box(ns)),
            );
        })
    });
    group.finish();
}

/// `iters` mesh round trips between two executors; returns the time the
/// round trips took (setup excluded).
fn mesh_round_trips(iters: u64) -> std::time::Duration {
    use futures_lite::StreamExt;
    use glommio::{LocalExecutorBuilder, Placement};
    use tessera::runtime::mesh::{Mesh, MeshBuilders, Reply, ReplyMsg, Request};
    use tessera::server::kv::{KvOp, KvReply};

    let cores = tessera::runtime::cores::allowed_cores().expect("cores");
    let (a_core, b_core) = (cores[0], cores[cores.len() - 1]);
    let builders = MeshBuilders::new(2, 1024);
    let b_builders = builders.clone();
    let owner = LocalExecutorBuilder::new(Placement::Fixed(b_core))
        .spawn(move || async move {
            let mut j = b_builders.join().await.expect("join");
            let mut reqs = j.req_rx.streams();
            let (peer, mut rx) = reqs.pop().expect("one peer");
            // Exactly `iters` requests come: a detached task on the caller
            // keeps its senders alive (glommio leaks it), so the stream
            // would never end by itself.
            for _ in 0..iters {
                let Some(msg) = rx.next().await else { break };
                let reply = ReplyMsg {
                    corr: msg.corr,
                    body: Reply::Kv(KvReply::Get(None)),
                };
                if j.rep_tx.send_to(peer, reply).await.is_err() {
                    break;
                }
            }
        })
        .expect("owner executor");
    let caller = LocalExecutorBuilder::new(Placement::Fixed(a_core))
        .spawn(move || async move {
            let mut j = builders.join().await.expect("join");
            let me = j.req_tx.peer_id();
            let peers = if me == 0 { vec![0, 1] } else { vec![1, 0] };
            let mesh = Rc::new(Mesh::new(
                0,
                peers,
                j.req_tx,
                j.rep_tx,
                1024,
                std::time::Duration::from_secs(5),
            ));
            let mut reps = j.rep_rx.streams();
            let (_, mut rx) = reps.pop().expect("one peer");
            let m2 = mesh.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.next().await {
                    m2.complete(msg);
                }
            })
            .detach();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let op = Request::Kv(KvOp::Get { key: String::new() });
                let r = mesh.call(1, op).expect("queued").await.expect("reply");
                criterion::black_box(r);
            }
            start.elapsed()
        })
        .expect("caller executor");
    let took = caller.join().expect("caller");
    owner.join().expect("owner");
    took
}

fn bench_mesh(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("hop_round_trip", |b| b.iter_custom(mesh_round_trips));
    group.finish();
}

criterion_group!(benches, bench, bench_mesh, bench_metrics);
criterion_main!(benches);
