//! The typed library API: define an MCP server from typed, async handlers.
//!
//! ```no_run
//! use tessera::api::{CallToolResult, McpServer, ToolSpec};
//! use tessera::schemars::{self, JsonSchema};
//! use tessera::serde::{self, Deserialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(crate = "tessera::serde")]
//! #[schemars(crate = "tessera::schemars")]
//! struct Greet {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! let app = McpServer::new()
//!     .tool(ToolSpec::new("greet", "Says hello"), |ctx, args: Greet| async move {
//!         ctx.progress(1.0, Some(1.0), None);
//!         Ok(CallToolResult::text(format!("Hello, {}!", args.name)))
//!     })
//!     .build();
//! let config = tessera::ServerConfig::new(vec![0]).with_tcp("127.0.0.1:7070".parse().unwrap());
//! tessera::serve(config, app).unwrap();
//! ```
//!
//! Handlers run on the shard that received the call (each core builds its own
//! copy of the server from the same definitions), get a [`Ctx`] to report
//! progress, log, check cancellation and ask the client (sampling,
//! elicitation, roots — a real request in the legacy era, a multi-round
//! `InputRequiredResult` in the modern era, with the same handler code), and
//! return a result. Panics cost the one request, never the connection.

pub use crate::server::api::{
    complete_from, is_enabled, resource_updated, samples, set_enabled, sleep, App, Ask,
    CallToolResult, ClientCaps, Content, Ctx, CtxError, ListKind, LogLevel, McpServer, NoArgs,
    PromptArgument, PromptDescriptor, PromptMessage, PromptResult, RegistryError, ResourceContent,
    ResourceDescriptor, RpcError, SkillSpec, TaskSupport, TemplateDescriptor, ToolError,
    ToolResponse, ToolSpec,
};
pub use crate::server::encode::Era;
