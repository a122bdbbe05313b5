//! Not part of tessera's API: what the bundled load generator, the
//! benchmarks and the fuzz targets need from inside the crate. Built only
//! with the `internals` feature; it may change with any release.

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};

use crate::api::App;
use crate::config::{HttpConfig, Limits};
use crate::metrics::{MethodKind, ShardMetrics};
use crate::runtime::local::Flag;
use crate::server::core::{Core, CoreParts, FaultRates};
use crate::server::mrtr::StateKey;
use crate::transport::http::HttpShard;
use crate::transport::{conn, Net};

pub use crate::protocol::PARSE_PADDING;
pub use crate::runtime::process::{ensure_memlock, raise_nofile};

/// The shard that owns `key` among `shards` (the server's own function).
pub fn kv_owner(key: &str, shards: usize) -> usize {
    crate::server::kv::owner(key, shards)
}

/// The server's JSON output helpers, and its message parser: the scalar
/// fast path alone (`small_fill_tape`) and the whole parser as a shard
/// runs it (`Parser`: the fast path, else simd-json).
pub mod json {
    pub use crate::protocol::json::{encode_value, write_str};
    pub use crate::protocol::small::fill_tape as small_fill_tape;
    pub use crate::protocol::Parser;
}

/// One shard with no mesh and no listener, for code that drives the
/// protocol and the connection drivers directly. Create it inside a glommio
/// executor.
pub struct Shard {
    core: Rc<Core>,
    net: Rc<Net>,
    http: Option<Rc<HttpShard>>,
}

impl Shard {
    /// A shard serving `app` under `limits`, with Streamable HTTP settings
    /// when `http` is set.
    pub fn new(app: &App, limits: Limits, http: Option<HttpConfig>) -> Self {
        let registry = app.build().expect("a valid server definition");
        let l = &limits;
        let core = Rc::new(Core::new(CoreParts {
            id: 0,
            shard_count: 1,
            limits: crate::node::server_limits(l),
            registry,
            state_key: StateKey::random(),
            auth: None,
            faults: FaultRates::default(),
            shutdown: Rc::new(Flag::default()),
        }));
        let net = Rc::new(Net::new(
            core.clone(),
            crate::node::net_limits(l, 0.0),
            Default::default(),
        ));
        let http = http.map(|cfg| Rc::new(HttpShard::new(net.clone(), cfg)));
        Self { core, net, http }
    }

    /// A session of this shard, as a connection without a socket has.
    pub fn session(&self) -> Session {
        Session {
            inner: crate::server::session::Session::new(&self.core, None),
            core: self.core.clone(),
        }
    }

    /// Serves one NDJSON client on `stream` (the TCP driver).
    pub fn serve_ndjson<S>(&self, stream: S) -> impl Future<Output = std::io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn::serve(stream, self.net.clone(), conn::Kind::Tcp, None)
    }

    /// Serves one HTTP/1.1 connection on `stream`.
    pub fn serve_http<S>(&self, stream: S) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let http = self
            .http
            .clone()
            .expect("the shard was made with HTTP settings");
        crate::transport::http::serve_connection(http, stream, Default::default())
    }

    /// Stops what an input left running (handlers, sweepers).
    pub async fn settle(&self) {
        self.core.shutdown.raise();
        self.net.conns.wake_all();
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// A session without a transport.
pub struct Session {
    inner: crate::server::session::Session,
    core: Rc<Core>,
}

impl Session {
    /// Handles the message in `buf[..len]` (`buf` extends `PARSE_PADDING`
    /// further) and appends the answer to `out`; false when the answer is
    /// not ready yet (the request went on as a task, which is dropped).
    pub fn handle(&mut self, buf: &mut [u8], len: usize, out: &mut Vec<u8>) -> bool {
        let mut clock = Instant::now();
        self.inner
            .handle_message(&self.core, buf, len, out, None, &mut clock)
            .is_none()
    }

    /// The protocol version `initialize` agreed, once it has happened.
    pub fn negotiated_version(&self) -> Option<&'static str> {
        self.inner.negotiated_version()
    }
}

/// A shard's latency histograms, for the recording benchmark.
#[derive(Default)]
pub struct Metrics(ShardMetrics);

impl Metrics {
    /// Records one `tools/call` that took `took`.
    pub fn record_tool_call(&mut self, took: Duration) {
        self.0.record(MethodKind::ToolsCall, took);
    }
}

/// `iters` mesh round trips between two pinned executors: the latency of one
/// hop there and back.
pub fn mesh_round_trips(iters: u64) -> Duration {
    crate::runtime::mesh::bench_round_trips(iters)
}

pub use crate::runtime::cores::thread_cpu_time;
pub use crate::runtime::mesh::HopRun;

/// `iters` timed mesh round trips between two pinned executors, both
/// spinning `spin` before they park when given (examples/mesh_hop.rs).
pub fn mesh_hop_round_trips(iters: u64, spin: Option<Duration>) -> HopRun {
    crate::runtime::mesh::hop_round_trips(iters, spin)
}

/// The server's signed cursors and request state, for fuzzing their
/// decoding.
pub struct Signer(StateKey);

/// A fresh signing key.
pub fn signer() -> Signer {
    Signer(StateKey::random())
}

impl Signer {
    /// Seals `state` for `target`.
    pub fn seal(&self, target: &str, state: &str) -> String {
        self.0.seal(target, state)
    }

    /// Opens sealed state for `target`; the handler's text, or why not.
    pub fn open(&self, target: &str, sealed: &str, ttl_ms: u64) -> Result<String, &'static str> {
        self.0.open(target, sealed, ttl_ms)
    }

    /// One page of a list of `len` for `cursor`: `(start, end, next)`.
    pub fn page(
        &self,
        len: usize,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Option<(usize, usize, Option<String>)> {
        crate::server::registry::page(len, cursor, page_size, "tools", &self.0).ok()
    }
}

/// Runs every check an HTTP request's headers go through (`Accept`,
/// `Origin`, `Host`, and the 2026-07-28 header/body agreement against
/// `body`), for fuzzing them; panics only on a bug.
pub fn http_header_checks(headers: &[(String, String)], body: &[u8]) {
    crate::transport::http::request::fuzz_checks(headers, body);
}
