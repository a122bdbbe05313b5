//! What the fuzz targets share: one glommio executor per fuzzing process,
//! an in-memory byte stream the server's connection code reads from and
//! writes to, shards without sockets, and the binary's command-line and
//! config-file modules (compiled in from `src/` so the fuzzer runs the very
//! code the binary does).
//!
//! Two targets run the server's real connection drivers (NDJSON and HTTP),
//! so framing, decoding, dispatch and encoding are all under the fuzzer at
//! once; the others drive one pure layer each (a session's dispatch, the
//! HTTP header checks, signed state and cursors, config files) at tens of
//! thousands of inputs a second.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use tessera::api::McpServer;
use tessera::config::{HttpConfig, Limits};
use tessera::internals::Shard;

/// The binary's flag definitions, as `src/main.rs` has them.
#[path = "../../src/cli.rs"]
#[allow(dead_code)]
pub mod cli;
/// The binary's config-file reader, as `src/main.rs` has it.
#[path = "../../src/config_file.rs"]
#[allow(dead_code)]
pub mod config_file;

/// How long one input may keep the server busy (async tools such as `sleep`
/// are cut off here; the fuzzer looks for crashes, not for slow tools).
pub const INPUT_BUDGET: Duration = Duration::from_millis(20);

thread_local! {
    static EXECUTOR: LocalExecutor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .expect("a glommio executor (RLIMIT_MEMLOCK >= 512 KiB)");
}

/// Runs `f` to completion on this process's executor.
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    EXECUTOR.with(|ex| ex.run(f));
}

/// Limits small enough that small inputs reach the bounds.
pub fn small_limits() -> Limits {
    Limits {
        max_message_bytes: 4096,
        max_inflight_per_conn: 8,
        max_output_buffer_bytes: 64 * 1024,
        ..Limits::default()
    }
}

/// One shard with the built-in tools, small limits and, when `http` is
/// set, Streamable HTTP on. Create it inside [`run`].
pub fn shard(http: bool) -> Shard {
    let app = McpServer::new().with_builtins().build();
    let http = http.then(|| HttpConfig::new(([127, 0, 0, 1], 0).into()));
    Shard::new(&app, small_limits(), http)
}

/// Stops what an input left running (handlers, sweepers) so no task of one
/// input survives into the next.
pub async fn settle(shard: &Shard) {
    shard.settle().await;
}

/// A byte stream that hands the server `input` in chunks (sizes taken from
/// `chunk_sizes`, cycling, so line and header boundaries fall anywhere) and
/// collects everything it writes.
pub struct MemStream {
    input: Vec<u8>,
    pos: usize,
    chunk_sizes: Vec<usize>,
    next_chunk: usize,
    pub output: Rc<RefCell<Vec<u8>>>,
}

impl MemStream {
    pub fn new(input: Vec<u8>, chunk_sizes: Vec<usize>) -> Self {
        Self {
            input,
            pos: 0,
            chunk_sizes: if chunk_sizes.is_empty() {
                vec![usize::MAX]
            } else {
                chunk_sizes
            },
            next_chunk: 0,
            output: Rc::new(RefCell::new(Vec::new())),
        }
    }
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let left = self.input.len() - self.pos;
        let size = self.chunk_sizes[self.next_chunk % self.chunk_sizes.len()].max(1);
        self.next_chunk += 1;
        let n = left.min(size).min(buf.len());
        let start = self.pos;
        buf[..n].copy_from_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Chunk sizes from the first bytes of an input: byte 0 says how many
/// (0..=3) sizes follow; the rest is the stream.
pub fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = (head & 3) as usize;
    if rest.len() < count {
        return (Vec::new(), rest);
    }
    let sizes = rest[..count].iter().map(|&b| b as usize + 1).collect();
    (sizes, &rest[count..])
}
