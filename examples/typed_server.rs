//! A small MCP server built with tessera's typed library API.
//!
//! ```sh
//! cargo run --release --example typed_server -- 127.0.0.1:8181
//! ```
//!
//! It serves Streamable HTTP (both spec eras) at `http://ADDR/mcp` on the
//! first CPU this process may use: a typed tool with a derived JSON Schema
//! that reports progress and logs, a tool that asks the user a question
//! (a real `elicitation/create` request in the 2025-11-25 era, a
//! multi-round `InputRequiredResult` in 2026-07-28, same handler), a
//! resource, a resource template with completion, and a prompt.

use std::collections::HashMap;
use std::time::Duration;

use tessera::api::{
    complete_from, sleep, App, Ask, CallToolResult, Content, LogLevel, McpServer, PromptArgument,
    PromptDescriptor, PromptMessage, PromptResult, ResourceContent, ResourceDescriptor,
    TemplateDescriptor, ToolSpec,
};
use tessera::schemars::JsonSchema;
use tessera::serde::Deserialize;
use tessera::serde_json::json;
use tessera::ServerConfig;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "tessera::serde")]
#[schemars(crate = "tessera::schemars")]
struct Countdown {
    /// Where to start counting down from (at most 10).
    #[schemars(range(min = 1, max = 10))]
    from: u32,
}

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "tessera::serde")]
#[schemars(crate = "tessera::schemars")]
struct Greet {
    /// Greeting to use; the user's name is asked for.
    greeting: String,
}

fn app() -> App {
    McpServer::new()
        .instructions("A demo server: countdown, greet, a motd resource and a haiku prompt.")
        .tool(
            ToolSpec::new("countdown", "Counts down to zero, reporting progress as it goes"),
            |ctx, args: Countdown| async move {
                for i in (0..args.from).rev() {
                    if ctx.is_cancelled() {
                        break;
                    }
                    ctx.progress((args.from - i) as f64, Some(args.from as f64), Some(&format!("{i} left")));
                    ctx.log(LogLevel::Debug, Some("countdown"), format!("{i} left"));
                    sleep(Duration::from_millis(100)).await;
                }
                Ok(CallToolResult::text("liftoff").structured(json!({"reached": 0})))
            },
        )
        .tool(ToolSpec::new("greet", "Asks the user's name, then greets them"), |ctx, args: Greet| async move {
            let schema = json!({
                "message": "What is your name?",
                "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
            });
            let answer = ctx.ask(Ask::Elicit, "name", &schema).await?;
            let name = answer.pointer("/content/name").and_then(|n| n.as_str()).unwrap_or("stranger");
            Ok(CallToolResult::text(format!("{}, {name}!", args.greeting)))
        })
        .resource(
            ResourceDescriptor {
                uri: "demo://motd".into(),
                name: "motd".into(),
                mime_type: Some("text/plain".into()),
                ..Default::default()
            },
            |_ctx, uri| async move {
                Ok(vec![ResourceContent::Text { uri, mime_type: "text/plain".into(), text: "Have a fast day.".into() }])
            },
        )
        .resource_template(
            TemplateDescriptor {
                uri_template: "demo://square/{n}".into(),
                name: "square".into(),
                mime_type: Some("text/plain".into()),
                ..Default::default()
            },
            |_ctx, uri, vars: HashMap<String, String>| async move {
                let n: i64 = vars.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                Ok(vec![ResourceContent::Text { uri, mime_type: "text/plain".into(), text: (n * n).to_string() }])
            },
            Some(complete_from(&["1", "2", "3", "10"])),
        )
        .prompt(
            PromptDescriptor {
                name: "haiku".into(),
                description: Some("Write a haiku about a topic".into()),
                arguments: vec![PromptArgument { name: "topic".into(), description: None, required: true }],
                ..Default::default()
            },
            |_ctx, args: HashMap<String, String>| async move {
                let topic = args.get("topic").cloned().unwrap_or_default();
                Ok(PromptResult {
                    description: None,
                    messages: vec![PromptMessage::user(Content::Text(format!("Write a haiku about {topic}.").into()))],
                })
            },
            Some(complete_from(&["rust", "the sea", "cores"])),
        )
        .build()
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8181".into());
    // The first CPU this process may use.
    let cores = tessera::config::select_cores(None).expect("a CPU to run on");
    let config = ServerConfig::new(cores[..1].to_vec())
        .with_http(addr.parse().expect("an address like 127.0.0.1:8181"));
    eprintln!("typed_server: serving http://{addr}/mcp");
    if let Err(e) = tessera::serve(config, app()) {
        eprintln!("typed_server: {e}");
        std::process::exit(1);
    }
}
