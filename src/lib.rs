//! tessera: a thread-per-core, shared-nothing MCP (Model Context Protocol) server.
//!
//! Each selected CPU runs one pinned glommio executor (a *shard*) that owns its
//! connections, its slice of the key-value store and its metrics. Shards never
//! share mutable state: cross-core work is an explicit message over the mesh
//! (`runtime::mesh`). The crate is split so that the parts that touch bytes on
//! a socket (`transport`) are the only ones doing I/O; `protocol` (JSON-RPC and
//! MCP wire types) and `server` (method dispatch, tools) are pure and can be
//! driven from benchmarks and unit tests without an executor.
//!
//! See `docs/ARCHITECTURE.md` for the data path of one request.

pub mod cli;
pub mod config;
pub mod config_file;
pub mod metrics;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod transport;
