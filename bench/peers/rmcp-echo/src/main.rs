//! The comparison peer for bench/compare.sh: rmcp (the official Rust MCP
//! SDK) serving an `echo` tool like tessera's over Streamable HTTP, tuned
//! the way a careful user would: current-thread tokio runtime, TCP_NODELAY,
//! JSON responses, stateless (no sessions). Run under `taskset` to pin it.
//!
//! Usage: rmcp-echo ADDR [--sessions]

use axum::serve::ListenerExt;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_router};

#[derive(Clone)]
struct Echo;

#[derive(serde::Deserialize, schemars::JsonSchema, Default)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[tool_router(server_handler)]
impl Echo {
    #[tool(name = "echo", description = "Returns its text argument")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let sessions = args.any(|a| a == "--sessions");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(sessions)
            .with_json_response(true)
            .disable_allowed_hosts();
        let service: StreamableHttpService<Echo, LocalSessionManager> =
            StreamableHttpService::new(|| Ok(Echo), Default::default(), config);
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .expect("bind")
            .tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
        eprintln!("rmcp-echo listening on http://{addr}/mcp");
        axum::serve(listener, router).await.expect("serve");
    });
}
