//! The scalar JSON fast path against simd-json: whatever the fast path takes
//! (`small_fill_tape` returns true), simd-json must take too, with the same
//! tape, node for node and variant for variant (Debug, because StaticNode's
//! `==` is numeric). What it declines goes to simd-json in the server, so
//! declining is always allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::internals::json::small_fill_tape;

fuzz_target!(|data: &[u8]| {
    let mut tape = Vec::new();
    if !small_fill_tape(data, &mut tape) {
        return;
    }
    let mut copy = data.to_vec();
    let simd = simd_json::to_tape(&mut copy)
        .unwrap_or_else(|e| panic!("fast path took what simd-json refuses ({e}): {data:?}"));
    assert_eq!(format!("{tape:?}"), format!("{:?}", simd.0), "input {data:?}");
});
