//! The thread-per-core runtime, at the bottom of the layers: it knows
//! nothing of MCP or HTTP.
//!
//! - [`executor`]: pinned glommio executor threads, started and restarted by
//!   the main thread, with a post-mortem when one dies;
//! - [`mesh`]: `Mesh<Req, Rep>`, bounded typed messages between executors,
//!   generic over what they carry (the composition root chooses);
//! - [`local`]: single-threaded primitives for code inside one executor
//!   (one-shot channels, flags, bounded pipes, thread-bound values);
//! - [`supervisor`]: OTP's restart intensity, dice for fault injection, the
//!   panic hook;
//! - [`process`]: what the main thread sets up before any executor exists
//!   (rlimits, signal routing, listen-port reservation);
//! - [`cores`]: `--cores` lists checked against the CPU affinity mask;
//! - [`random`]: bytes from the kernel's CSPRNG.
//!
//! Nothing here imports `server`, `transport`, `adapters` or `node`.

pub(crate) mod cores;
pub(crate) mod executor;
pub(crate) mod local;
pub(crate) mod mesh;
pub(crate) mod process;
pub(crate) mod random;
pub(crate) mod supervisor;
