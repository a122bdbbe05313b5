//! The request hot path without I/O: parse one NDJSON tools/call, dispatch it
//! to `echo`, encode the response. Reported per message.

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

criterion_group!(benches, bench);
criterion_main!(benches);
