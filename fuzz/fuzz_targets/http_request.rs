//! The Streamable HTTP request path: hyper's HTTP/1 parser, header checks,
//! body reading, both protocol eras, sessions and SSE, through the same
//! connection server the HTTP listener uses. Oracle: whatever the server
//! writes starts with an HTTP/1.x status line (1.0 requests get 1.0 answers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{run, settle, shard, split_input, MemStream, INPUT_BUDGET};

fuzz_target!(|data: &[u8]| {
    let (chunks, body) = split_input(data);
    let stream = MemStream::new(body.to_vec(), chunks);
    let output = stream.output.clone();
    run(async move {
        let shard = shard(true);
        futures_lite::future::or(
            shard.serve_http(stream),
            glommio::timer::sleep(INPUT_BUDGET),
        )
        .await;
        settle(&shard).await;
    });
    let out = output.borrow();
    if !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
    }
});
