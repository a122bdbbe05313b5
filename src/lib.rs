//! tessera: a thread-per-core, shared-nothing MCP (Model Context Protocol)
//! server.
//!
//! Each selected CPU runs one pinned glommio executor (a *shard*) that owns
//! its connections, its sessions, its slice of the key-value store and its
//! metrics. Shards never share mutable state: cross-core work is an explicit
//! message over the mesh.
//!
//! The public surface is what an embedder needs:
//! - [`api`]: define a server: [`api::McpServer`] with typed tools,
//!   resources, templates and prompts, and what handlers get
//!   ([`api::Ctx`], results, content);
//! - [`config`]: [`ServerConfig`] and the settings of each feature;
//! - [`serve`]: run it on the cores and transports chosen.
//!
//! `serde`, `serde_json` and `schemars` are re-exported so derives match the
//! versions tessera uses. The layers inside (and which may import which) are
//! described in `docs/ARCHITECTURE.md`:
//! `runtime` < `protocol`, `metrics` < `server` < `transport`, `adapters` <
//! `node`.

mod adapters;
pub mod api;
pub mod config;
mod metrics;
mod node;
mod protocol;
mod runtime;
mod server;
mod transport;

#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;

pub use config::{Limits, ServerConfig};
pub use node::{serve, serve_reloadable, Reload, ServeError};
pub use runtime::supervisor::install_panic_hook;
pub use server::session::log_session;
pub use transport::control_socket;

pub use schemars;
pub use serde;
pub use serde_json;
