//! NDJSON framing + JSON-RPC decode + MCP dispatch, through the same
//! connection driver TCP and stdio use. Oracle: every line the server writes
//! is a JSON-RPC 2.0 object (responses and notifications alike).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{run, settle, shard, split_input, MemStream, INPUT_BUDGET};

const INIT: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"fuzz\",\"version\":\"0\"}}}\n";

fuzz_target!(|data: &[u8]| {
    let (chunks, body) = split_input(data);
    // Half the inputs start from an initialised session so the fuzzer
    // spends its time past the lifecycle gate too.
    let mut input = Vec::with_capacity(body.len() + INIT.len());
    if data.first().is_some_and(|b| b & 4 != 0) {
        input.extend_from_slice(INIT);
    }
    input.extend_from_slice(body);
    let stream = MemStream::new(input, chunks);
    let output = stream.output.clone();
    run(async move {
        let shard = shard(false);
        let serve = shard.serve_ndjson(stream);
        let _ = futures_lite::future::or(
            async {
                let _ = serve.await;
            },
            glommio::timer::sleep(INPUT_BUDGET),
        )
        .await;
        settle(&shard).await;
    });
    let out = output.borrow();
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "server wrote invalid JSON ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        });
        assert_eq!(v["jsonrpc"], "2.0", "not JSON-RPC 2.0: {v}");
    }
});
