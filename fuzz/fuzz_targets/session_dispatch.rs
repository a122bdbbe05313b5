//! A session without a transport: message classification, the lifecycle,
//! the one dispatch table and every synchronous handler, on one long-lived
//! shard. Each input is newline-separated messages for a fresh session
//! (initialized first when the first byte says so). Oracle: every answer is
//! one JSON-RPC 2.0 object with the `id` rules of a response.
#![no_main]

use std::cell::OnceCell;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use tessera::internals::{Shard, PARSE_PADDING};
use tessera_fuzz::{run, shard};

const INIT: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{\"sampling\":{},\"elicitation\":{}},\"clientInfo\":{\"name\":\"fuzz\",\"version\":\"0\"}}}";

/// Messages one input may send: enough for any sequence the dispatch
/// table distinguishes, few enough that a long input does not cost as much
/// as many short ones.
const MAX_MESSAGES: usize = 16;

thread_local! {
    static SHARD: OnceCell<Shard> = const { OnceCell::new() };
}

/// A JSON-RPC 2.0 response as the oracle sees it: which members are present
/// (a `null` counts as present), and a well-formed error. Decoded straight
/// from the bytes (no `serde_json::Value`): the oracle costs little of an
/// input's time.
#[derive(Deserialize)]
struct Response {
    jsonrpc: JsonRpc,
    #[serde(default, deserialize_with = "present")]
    id: bool,
    #[serde(default, deserialize_with = "present")]
    result: bool,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
enum JsonRpc {
    #[serde(rename = "2.0")]
    V2,
}

#[derive(Deserialize)]
#[allow(dead_code)] // decoded to check their types
struct ErrorObject {
    code: i64,
    message: String,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn check(out: &[u8]) {
    let text = || String::from_utf8_lossy(out);
    let r: Response = serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not a JSON-RPC 2.0 response ({e}): {:?}", text()));
    let JsonRpc::V2 = r.jsonrpc;
    assert!(r.id, "an answer without an id: {:?}", text());
    assert!(
        r.result != r.error.is_some(),
        "an answer needs exactly one of result and error: {:?}",
        text()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    run(async {
        SHARD.with(|cell| {
            let shard = cell.get_or_init(|| shard(false));
            let mut session = shard.session();
            let mut out = Vec::with_capacity(4096);
            let messages = (flags & 1 != 0)
                .then_some(INIT)
                .into_iter()
                .chain(body.split(|&b| b == b'\n'));
            let mut buf = Vec::with_capacity(1024);
            for msg in messages.filter(|m| !m.is_empty()).take(MAX_MESSAGES) {
                buf.clear();
                buf.extend_from_slice(msg);
                buf.resize(msg.len() + PARSE_PADDING, b' ');
                out.clear();
                if session.handle(&mut buf, msg.len(), &mut out) && !out.is_empty() {
                    check(&out);
                }
            }
        });
    });
});
