//! Signed multi-round `requestState` and list cursors: what a client echoes
//! back is attacker-controlled. Oracles: opening arbitrary text never panics
//! and never succeeds for text this key did not seal; sealing then opening
//! gives back the state, for its target only; a page is within the list and
//! its `nextCursor` continues where it ended.
#![no_main]

use std::cell::OnceCell;

use libfuzzer_sys::fuzz_target;
use tessera::internals::{signer, Signer};

thread_local! {
    static SIGNER: OnceCell<Signer> = const { OnceCell::new() };
}

const TTL_MS: u64 = 600_000;
/// How many pages one input walks (each is a seal and an open).
const WALK_PAGES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    SIGNER.with(|cell| {
        let s = cell.get_or_init(signer);
        match mode % 3 {
            0 => {
                // Arbitrary text as sealed state.
                assert!(
                    s.open("tool", &text, TTL_MS).is_err(),
                    "forged state opened: {text:?}"
                );
            }
            1 => {
                let sealed = s.seal("tool", &text);
                assert_eq!(s.open("tool", &sealed, TTL_MS).as_deref(), Ok(&*text));
                assert!(
                    s.open("other", &sealed, TTL_MS).is_err(),
                    "state opened for another target"
                );
                // One flipped character must not open.
                let mut bytes = sealed.into_bytes();
                let at = usize::from(mode) % bytes.len();
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                if let Ok(tampered) = String::from_utf8(bytes) {
                    if let Ok(opened) = s.open("tool", &tampered, TTL_MS) {
                        assert_eq!(opened, text, "a tampered state opened to something else");
                    }
                }
            }
            _ => {
                let len = rest.first().map_or(0, |&b| usize::from(b) * 3);
                let page_size = rest.get(1).map_or(1, |&b| usize::from(b % 16) + 1);
                // A cursor from the client: refused, or a page of the list.
                let fuzzed = String::from_utf8_lossy(rest.get(2..).unwrap_or_default());
                if let Some((start, end, _)) = s.page(len, Some(&fuzzed), page_size) {
                    assert!(start <= end && end <= len, "page {start}..{end} of {len}");
                }
                // From the start, nextCursor walks the list without a gap
                // or a repeat (the first WALK_PAGES pages; to the end when
                // the list is that short).
                let (mut at, mut cursor) = (0, None::<String>);
                for _ in 0..WALK_PAGES {
                    let (start, end, next) = s
                        .page(len, cursor.as_deref(), page_size)
                        .expect("our own cursor is accepted");
                    assert_eq!(start, at, "a page skipped or repeated items");
                    assert!(end >= start && end - start <= page_size && end <= len);
                    at = end;
                    match next {
                        Some(n) => {
                            assert!(end > start, "an empty page with a next cursor");
                            cursor = Some(n);
                        }
                        None => {
                            assert_eq!(end, len, "the last page ended early");
                            break;
                        }
                    }
                }
            }
        }
    });
});
