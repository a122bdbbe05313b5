//! The fixture set the official MCP conformance suite exercises
//! (`tessera serve --fixtures conformance`), built with the public
//! [`super::api`] like any embedding program would.
//!
//! Names, arguments and texts are the ones the suite's scenarios
//! (`@modelcontextprotocol/conformance`) call and check; each handler does
//! what its scenario's description asks, through the same context every
//! tool gets (progress, logging, questions to the client in both eras).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{
    is_enabled, samples, set_enabled, Ask, CallToolResult, Content, Ctx, CtxError, ListKind,
    LogLevel, McpServer, NoArgs, PromptArgument, PromptMessage, PromptResult, ResourceContent,
    ToolError, ToolSpec,
};
use super::registry::{App, PromptDescriptor, ResourceDescriptor, TemplateDescriptor};

const STATIC_TEXT: &str = "This is the content of the static text resource.";

/// The conformance fixtures, plus the built-in tools.
pub fn conformance() -> App {
    let server = McpServer::new().with_builtins();
    let server = content_tools(server);
    let server = client_tools(server);
    let server = modern_tools(server);
    let server = resources(server);
    let server = prompts(server);
    let server = task_tools(server);
    let server = skills(server);
    server.build()
}

fn sleep_ms(ms: u64) -> glommio::timer::Timer {
    glommio::timer::Timer::new(Duration::from_millis(ms))
}

fn content_tools(s: McpServer) -> McpServer {
    s.tool(
        ToolSpec::new("test_simple_text", "Returns a fixed text content block"),
        |_ctx, _: NoArgs| async move { Ok(CallToolResult::text("This is a simple text response for testing.")) },
    )
    .tool(
        ToolSpec::new("test_image_content", "Returns an image content block (PNG)"),
        |_ctx, _: NoArgs| async move {
            Ok(CallToolResult::new(vec![Content::image(samples::PNG_1X1_BASE64, "image/png")]))
        },
    )
    .tool(
        ToolSpec::new("test_audio_content", "Returns an audio content block (WAV)"),
        |_ctx, _: NoArgs| async move {
            Ok(CallToolResult::new(vec![Content::audio(samples::WAV_SILENCE_BASE64, "audio/wav")]))
        },
    )
    .tool(
        ToolSpec::new("test_embedded_resource", "Returns an embedded text resource"),
        |_ctx, _: NoArgs| async move {
            Ok(CallToolResult::new(vec![Content::resource_text(
                "test://embedded-resource",
                Some("text/plain"),
                "This is an embedded resource content.",
            )]))
        },
    )
    .tool(
        ToolSpec::new("test_multiple_content_types", "Returns text, image and resource content"),
        |_ctx, _: NoArgs| async move {
            Ok(CallToolResult::new(vec![
                Content::Text("Multiple content types test:".into()),
                Content::image(samples::PNG_1X1_BASE64, "image/png"),
                Content::resource_text(
                    "test://mixed-content-resource",
                    Some("application/json"),
                    r#"{"test":"data","value":123}"#,
                ),
            ]))
        },
    )
    .tool(
        ToolSpec::new("test_resource_link", "Returns a link to a resource"),
        |_ctx, _: NoArgs| async move {
            Ok(CallToolResult::new(vec![Content::resource_link(
                "test://static-text",
                "static-text",
                Some("text/plain"),
                Some("The static text resource"),
            )]))
        },
    )
    .tool(
        ToolSpec::new("test_tool_with_logging", "Sends three info log messages while it runs"),
        |ctx, _: NoArgs| async move {
            ctx.log(LogLevel::Info, Some("conformance"), "\"Tool execution started\"");
            sleep_ms(50).await;
            ctx.log(LogLevel::Info, Some("conformance"), "\"Tool processing data\"");
            sleep_ms(50).await;
            ctx.log(LogLevel::Info, Some("conformance"), "\"Tool execution completed\"");
            Ok(CallToolResult::text("Tool with logging executed successfully"))
        },
    )
    .tool(
        ToolSpec::new("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100"),
        |ctx, _: NoArgs| async move {
            for (i, p) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                if i > 0 {
                    sleep_ms(50).await;
                }
                ctx.progress(p, Some(100.0), Some(&format!("Completed step {i} of 2")));
            }
            Ok(CallToolResult::text("Tool with progress executed successfully"))
        },
    )
    .tool(
        ToolSpec::new("test_error_handling", "Always fails with a tool error"),
        |_ctx, _: NoArgs| async move { Ok(CallToolResult::error("This tool intentionally returns an error for testing")) },
    )
    .tool(
        ToolSpec::new("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features").input_schema(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "$anchor": "addressDef",
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}}
                }
            },
            "properties": {
                "name": {"type": "string"},
                "address": {"$ref": "#/$defs/address"},
                "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                "phone": {"type": "string"},
                "email": {"type": "string"}
            },
            "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
            "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
            "then": {"required": ["phone"]},
            "else": {"required": ["email"]},
            "additionalProperties": false
        })),
        |_ctx, args: Value| async move { Ok(CallToolResult::text(format!("Received: {args}"))) },
    )
    .tool(
        ToolSpec::new(
            "test_reconnection",
            "Closes its SSE stream mid-call, then answers on the resumed stream (SEP-1699)",
        ),
        |ctx, _: NoArgs| async move {
            sleep_ms(50).await;
            ctx.close_stream();
            sleep_ms(200).await;
            Ok(CallToolResult::text("Reconnection test completed"))
        },
    )
    .tool(
        ToolSpec::new("test_header_echo", "Echoes `region`, which also travels in the Mcp-Param-Region header")
            .input_schema(json!({
                "type": "object",
                "properties": {
                    "region": {"type": "string", "x-mcp-header": "Region", "description": "Where to run"},
                    "query": {"type": "string"}
                },
                "required": ["region"]
            })),
        |_ctx, args: Value| async move {
            let region = args.get("region").and_then(Value::as_str).unwrap_or_default();
            Ok(CallToolResult::text(format!("region={region}")))
        },
    )
}

#[derive(Deserialize, schemars::JsonSchema)]
struct PromptArg {
    /// The prompt to send to the LLM.
    prompt: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct MessageArg {
    /// The message to show the user.
    message: String,
}

/// Asks the client and turns its answer into JSON.
async fn ask(ctx: &Ctx, kind: Ask, key: &str, params: Value) -> Result<Value, ToolError> {
    let answer = ctx.ask(kind, key, &params.to_string()).await?;
    Ok(serde_json::from_str(&answer).unwrap_or(Value::Null))
}

fn elicitation_text(prefix: &str, answer: &Value) -> String {
    let action = answer
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let content = answer.get("content").cloned().unwrap_or(Value::Null);
    format!("{prefix}action={action}, content={content}")
}

/// Tools that ask the client something: legacy-era requests on the
/// session's stream, modern-era `InputRequiredResult` rounds.
fn client_tools(s: McpServer) -> McpServer {
    s.tool(
        ToolSpec::new("test_sampling", "Asks the client's LLM to answer `prompt`"),
        |ctx, a: PromptArg| async move {
            let r = ask(
                &ctx,
                Ask::Sample,
                "sampling",
                json!({"messages": [{"role": "user", "content": {"type": "text", "text": a.prompt}}], "maxTokens": 100}),
            )
            .await?;
            let text = r.pointer("/content/text").and_then(Value::as_str).unwrap_or("");
            Ok(CallToolResult::text(format!("LLM response: {text}")))
        },
    )
    .tool(
        ToolSpec::new("test_elicitation", "Asks the user for a username and email"),
        |ctx, a: MessageArg| async move {
            let r = ask(
                &ctx,
                Ask::Elicit,
                "elicitation",
                json!({
                    "message": a.message,
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "username": {"type": "string", "description": "User's response"},
                            "email": {"type": "string", "description": "User's email address"}
                        },
                        "required": ["username", "email"]
                    }
                }),
            )
            .await?;
            Ok(CallToolResult::text(elicitation_text("User response: ", &r)))
        },
    )
    .tool(
        ToolSpec::new("test_elicitation_sep1034_defaults", "Elicits with a default for every primitive type"),
        |ctx, _: NoArgs| async move {
            let r = ask(
                &ctx,
                Ask::Elicit,
                "defaults",
                json!({
                    "message": "Please review and update the form fields with defaults",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "description": "User name", "default": "John Doe"},
                            "age": {"type": "integer", "description": "User age", "default": 30},
                            "score": {"type": "number", "description": "User score", "default": 95.5},
                            "status": {
                                "type": "string",
                                "description": "User status",
                                "enum": ["active", "inactive", "pending"],
                                "default": "active"
                            },
                            "verified": {"type": "boolean", "description": "Verification status", "default": true}
                        }
                    }
                }),
            )
            .await?;
            Ok(CallToolResult::text(elicitation_text("Elicitation completed: ", &r)))
        },
    )
    .tool(
        ToolSpec::new("test_elicitation_sep1330_enums", "Elicits with every enum schema form"),
        |ctx, _: NoArgs| async move {
            let r = ask(
                &ctx,
                Ask::Elicit,
                "enums",
                json!({
                    "message": "Please select options from the enum fields",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "untitledSingle": {
                                "type": "string",
                                "description": "Select one option",
                                "enum": ["option1", "option2", "option3"]
                            },
                            "titledSingle": {
                                "type": "string",
                                "description": "Select one option with titles",
                                "oneOf": [
                                    {"const": "value1", "title": "First Option"},
                                    {"const": "value2", "title": "Second Option"},
                                    {"const": "value3", "title": "Third Option"}
                                ]
                            },
                            "legacyEnum": {
                                "type": "string",
                                "description": "Select one option (legacy)",
                                "enum": ["opt1", "opt2", "opt3"],
                                "enumNames": ["Option One", "Option Two", "Option Three"]
                            },
                            "untitledMulti": {
                                "type": "array",
                                "description": "Select multiple options",
                                "minItems": 1,
                                "maxItems": 3,
                                "items": {"type": "string", "enum": ["option1", "option2", "option3"]}
                            },
                            "titledMulti": {
                                "type": "array",
                                "description": "Select multiple options with titles",
                                "minItems": 1,
                                "maxItems": 3,
                                "items": {
                                    "anyOf": [
                                        {"const": "value1", "title": "First Choice"},
                                        {"const": "value2", "title": "Second Choice"},
                                        {"const": "value3", "title": "Third Choice"}
                                    ]
                                }
                            }
                        }
                    }
                }),
            )
            .await?;
            Ok(CallToolResult::text(elicitation_text("Elicitation completed: ", &r)))
        },
    )
    .tool(
        ToolSpec::new("test_url_elicitation", "Sends the user to a URL (URL-mode elicitation), then reports completion"),
        |ctx, _: NoArgs| async move {
            let r = ask(
                &ctx,
                Ask::Elicit,
                "url",
                json!({
                    "mode": "url",
                    "message": "Please authorize in your browser",
                    "url": "https://example.com/authorize?session=conformance",
                    "elicitationId": "conformance-url-1"
                }),
            )
            .await?;
            ctx.elicitation_complete("conformance-url-1");
            Ok(CallToolResult::text(elicitation_text("URL elicitation: ", &r)))
        },
    )
    .tool(
        ToolSpec::new("test_list_roots", "Asks the client for its roots"),
        |ctx, _: NoArgs| async move {
            let r = ask(&ctx, Ask::Roots, "roots", json!({})).await?;
            let n = r.get("roots").and_then(Value::as_array).map_or(0, Vec::len);
            Ok(CallToolResult::text(format!("Client has {n} root(s): {r}")))
        },
    )
}

fn name_schema(message: &str, field: &str) -> Value {
    json!({
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {field: {"type": "string"}},
            "required": [field]
        }
    })
}

fn content_field(answer: &str, field: &str) -> String {
    let v: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
    v.pointer(&format!("/content/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Modern-era diagnostics: multi-round requests, capability checks, list
/// changes.
fn modern_tools(s: McpServer) -> McpServer {
    s.tool(
        ToolSpec::new("test_missing_capability", "Needs the client's sampling capability"),
        |ctx, _: NoArgs| async move {
            let r = ask(
                &ctx,
                Ask::Sample,
                "probe",
                json!({"messages": [{"role": "user", "content": {"type": "text", "text": "ping"}}], "maxTokens": 10}),
            )
            .await?;
            Ok(CallToolResult::text(format!("sampled: {r}")))
        },
    )
    .tool(
        ToolSpec::new("test_streaming_elicitation", "Asks the user a question while streaming"),
        |ctx, _: NoArgs| async move {
            ctx.progress(0.0, Some(1.0), Some("asking"));
            let r = ask(&ctx, Ask::Elicit, "question", name_schema("What is your name?", "name")).await?;
            Ok(CallToolResult::text(elicitation_text("Streaming elicitation: ", &r)))
        },
    )
    .tool(
        ToolSpec::new("test_logging_tool", "Logs at every level; only what the request's level allows is sent"),
        |ctx, _: NoArgs| async move {
            for level in LogLevel::ALL {
                ctx.log(level, Some("conformance"), &format!("\"log at {}\"", level.name()));
            }
            Ok(CallToolResult::text("logged"))
        },
    )
    .tool(
        ToolSpec::new("test_trigger_tool_change", "Adds or removes test_dynamic_tool"),
        |ctx, _: NoArgs| async move {
            let on = !is_enabled(&ctx, ListKind::Tools, "test_dynamic_tool");
            set_enabled(&ctx, ListKind::Tools, "test_dynamic_tool", on);
            Ok(CallToolResult::text(format!("test_dynamic_tool enabled={on}")))
        },
    )
    .tool(
        ToolSpec::new("test_dynamic_tool", "Offered only after test_trigger_tool_change").disabled(),
        |_ctx, _: NoArgs| async move { Ok(CallToolResult::text("dynamic tool")) },
    )
    .tool(
        ToolSpec::new("test_trigger_prompt_change", "Adds or removes test_dynamic_prompt"),
        |ctx, _: NoArgs| async move {
            let on = !is_enabled(&ctx, ListKind::Prompts, "test_dynamic_prompt");
            set_enabled(&ctx, ListKind::Prompts, "test_dynamic_prompt", on);
            Ok(CallToolResult::text(format!("test_dynamic_prompt enabled={on}")))
        },
    )
    .tool(
        ToolSpec::new("test_trigger_resource_update", "Reports that test://watched-resource changed"),
        |ctx, _: NoArgs| async move {
            super::api::resource_updated(&ctx, "test://watched-resource");
            Ok(CallToolResult::text("updated test://watched-resource"))
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_elicitation", "Asks for the user's name (one round)"),
        |ctx, _: NoArgs| async move {
            let a = ctx
                .ask(Ask::Elicit, "user_name", &name_schema("What is your name?", "name").to_string())
                .await?;
            Ok(CallToolResult::text(format!("Hello, {}!", content_field(&a, "name"))))
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_sampling", "Asks the client's LLM a question (one round)"),
        |ctx, _: NoArgs| async move {
            let params = json!({
                "messages": [{"role": "user", "content": {"type": "text", "text": "What is the capital of France?"}}],
                "maxTokens": 100
            });
            let a = ctx.ask(Ask::Sample, "capital_question", &params.to_string()).await?;
            let v: Value = serde_json::from_str(&a).unwrap_or(Value::Null);
            let text = v.pointer("/content/text").and_then(Value::as_str).unwrap_or("");
            Ok(CallToolResult::text(format!("The model said: {text}")))
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_list_roots", "Asks for the client's roots (one round)"),
        |ctx, _: NoArgs| async move {
            let a = ctx.ask(Ask::Roots, "client_roots", "{}").await?;
            let v: Value = serde_json::from_str(&a).unwrap_or(Value::Null);
            let uris: Vec<&str> = v
                .get("roots")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(|x| x.get("uri").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            Ok(CallToolResult::text(format!("Roots: {}", uris.join(", "))))
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_request_state", "Round-trips signed requestState"),
        |ctx, _: NoArgs| async move {
            let params = json!({
                "message": "Please confirm",
                "requestedSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
            });
            match ctx.input(Ask::Elicit, "confirm", &params.to_string()) {
                Some(_) if ctx.request_state() == Some("awaiting-confirm") => {
                    Ok(CallToolResult::text("Confirmed: state-ok"))
                }
                Some(_) => Err(ToolError::Rpc(super::tools::RpcError::invalid_params(
                    "requestState missing: round 2 must echo the state of round 1",
                ))),
                None => {
                    ctx.set_request_state("awaiting-confirm");
                    Err(CtxError::InputRequired.into())
                }
            }
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_multiple_inputs", "Asks for three inputs at once"),
        |ctx, _: NoArgs| async move {
            let name = ctx.input(Ask::Elicit, "user_name", &name_schema("What is your name?", "name").to_string());
            let greeting = ctx.input(
                Ask::Sample,
                "greeting",
                &json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": "Generate a greeting"}}],
                    "maxTokens": 50
                })
                .to_string(),
            );
            let roots = ctx.input(Ask::Roots, "client_roots", "{}");
            match (name, greeting, roots) {
                (Some(n), Some(g), Some(r)) => {
                    let g: Value = serde_json::from_str(&g).unwrap_or(Value::Null);
                    Ok(CallToolResult::text(format!(
                        "name={}, greeting={}, roots={}",
                        content_field(&n, "name"),
                        g.pointer("/content/text").and_then(Value::as_str).unwrap_or(""),
                        r
                    )))
                }
                _ => {
                    ctx.set_request_state("multiple-inputs");
                    Err(CtxError::InputRequired.into())
                }
            }
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_multi_round", "Asks two questions in two rounds"),
        |ctx, _: NoArgs| async move {
            match ctx.request_state() {
                None => {
                    ctx.input(Ask::Elicit, "step1", &name_schema("Step 1: What is your name?", "name").to_string());
                    ctx.set_request_state("step1");
                    Err(CtxError::InputRequired.into())
                }
                Some("step1") => {
                    let Some(a) = ctx.input(Ask::Elicit, "step1", &name_schema("Step 1: What is your name?", "name").to_string())
                    else {
                        ctx.set_request_state("step1");
                        return Err(CtxError::InputRequired.into());
                    };
                    let name = content_field(&a, "name");
                    ctx.input(
                        Ask::Elicit,
                        "step2",
                        &name_schema("Step 2: What is your favorite color?", "color").to_string(),
                    );
                    ctx.set_request_state(json!({"step": 2, "name": name}).to_string());
                    Err(CtxError::InputRequired.into())
                }
                Some(state) => {
                    let st: Value = serde_json::from_str(state).unwrap_or(Value::Null);
                    let name = st.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
                    let Some(a) = ctx.input(
                        Ask::Elicit,
                        "step2",
                        &name_schema("Step 2: What is your favorite color?", "color").to_string(),
                    ) else {
                        ctx.set_request_state(state.to_owned());
                        return Err(CtxError::InputRequired.into());
                    };
                    Ok(CallToolResult::text(format!(
                        "{name}'s favorite color is {}",
                        content_field(&a, "color")
                    )))
                }
            }
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_tampered_state", "Refuses requestState it did not sign"),
        |ctx, _: NoArgs| async move {
            let params = name_schema("What is your name?", "name").to_string();
            match (ctx.input(Ask::Elicit, "user_name", &params), ctx.request_state()) {
                (Some(a), Some("issued")) => Ok(CallToolResult::text(format!(
                    "Hello, {}! (state verified)",
                    content_field(&a, "name")
                ))),
                _ => {
                    ctx.set_request_state("issued");
                    Err(CtxError::InputRequired.into())
                }
            }
        },
    )
    .tool(
        ToolSpec::new("test_input_required_result_capabilities", "Asks only for what the client declared"),
        |ctx, _: NoArgs| async move {
            let caps = ctx.client_caps();
            let e = caps
                .elicitation
                .then(|| ctx.input(Ask::Elicit, "user_name", &name_schema("What is your name?", "name").to_string()));
            let s = caps.sampling.then(|| {
                ctx.input(
                    Ask::Sample,
                    "greeting",
                    &json!({
                        "messages": [{"role": "user", "content": {"type": "text", "text": "Generate a greeting"}}],
                        "maxTokens": 50
                    })
                    .to_string(),
                )
            });
            if !caps.elicitation && !caps.sampling {
                return Err(CtxError::MissingCapability("sampling").into());
            }
            if matches!(e, Some(None)) || matches!(s, Some(None)) {
                return Err(CtxError::InputRequired.into());
            }
            Ok(CallToolResult::text("all declared inputs received"))
        },
    )
}

#[derive(Deserialize, schemars::JsonSchema)]
struct GreetArgs {
    /// Who to greet.
    name: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct SlowArgs {
    /// Seconds to work before answering (0: at once).
    #[serde(default)]
    seconds: f64,
    /// A label echoed in the result.
    #[serde(default)]
    label: Option<String>,
}

fn confirm_params(what: &str) -> Value {
    json!({
        "message": format!("Really delete {what}?"),
        "requestedSchema": {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
    })
}

/// The tasks extension's fixtures (SEP-2663 scenarios) and the 2025-11-25
/// experimental tasks: which tools may or must run as tasks.
fn task_tools(s: McpServer) -> McpServer {
    use super::api::TaskSupport;
    s.tool(
        ToolSpec::new("greet", "Says hello (never a task)"),
        |_ctx, a: GreetArgs| async move { Ok(CallToolResult::text(format!("Hello, {}!", a.name))) },
    )
    .tool(
        ToolSpec::new(
            "slow_compute",
            "Works for `seconds`, then answers; runs as a task when the client allows",
        )
        .task_support(TaskSupport::Optional),
        |_ctx, a: SlowArgs| async move {
            let ms = (a.seconds.clamp(0.0, 600.0) * 1000.0) as u64;
            if ms > 0 {
                sleep_ms(ms).await;
            }
            let label = a.label.unwrap_or_default();
            Ok(
                CallToolResult::text(format!("Computed after {} s {label}", a.seconds))
                    .structured(json!({"seconds": a.seconds, "label": label})),
            )
        },
    )
    .tool(
        ToolSpec::new(
            "failing_job",
            "Always ends with a tool error after about a second; task only",
        )
        .task_support(TaskSupport::Required),
        |_ctx, _: Value| async move {
            sleep_ms(1000).await;
            Ok(CallToolResult::error("failing_job failed on purpose"))
        },
    )
    .tool(
        ToolSpec::new(
            "protocol_error_job",
            "Fails with an internal error (a panic the supervisor catches)",
        )
        .task_support(TaskSupport::Optional),
        |_ctx, _: Value| async move {
            sleep_ms(100).await;
            if std::hint::black_box(true) {
                panic!("protocol_error_job: deliberate failure");
            }
            Ok(CallToolResult::text("unreachable"))
        },
    )
    .tool(
        ToolSpec::new(
            "confirm_delete",
            "Asks the user to confirm, then deletes (pretend)",
        )
        .task_support(TaskSupport::Optional),
        |ctx, a: Value| async move {
            let what = a
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("the item")
                .to_owned();
            let answer = ask(&ctx, Ask::Elicit, "confirm", confirm_params(&what)).await?;
            let yes = answer
                .pointer("/content/confirm")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let accepted = answer.get("action").and_then(Value::as_str) == Some("accept");
            Ok(CallToolResult::text(if yes && accepted {
                format!("Deleted {what}")
            } else {
                format!("Kept {what}")
            }))
        },
    )
    .tool(
        ToolSpec::new(
            "multi_input",
            "Asks two questions at once, then combines the answers",
        )
        .task_support(TaskSupport::Optional),
        |ctx, _: Value| async move {
            let first = ctx.input(
                Ask::Elicit,
                "first",
                &name_schema("First value?", "value").to_string(),
            );
            let second = ctx.input(
                Ask::Elicit,
                "second",
                &name_schema("Second value?", "value").to_string(),
            );
            match (first, second) {
                (Some(a), Some(b)) => Ok(CallToolResult::text(format!(
                    "first={}, second={}",
                    content_field(&a, "value"),
                    content_field(&b, "value")
                ))),
                _ if ctx.era().is_modern() => Err(CtxError::InputRequired.into()),
                _ => {
                    let a = ask(
                        &ctx,
                        Ask::Elicit,
                        "first",
                        name_schema("First value?", "value"),
                    )
                    .await?;
                    let b = ask(
                        &ctx,
                        Ask::Elicit,
                        "second",
                        name_schema("Second value?", "value"),
                    )
                    .await?;
                    Ok(CallToolResult::text(format!(
                        "first={}, second={}",
                        a.pointer("/content/value")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                        b.pointer("/content/value")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    )))
                }
            }
        },
    )
    .tool(
        ToolSpec::new(
            "test_tool_with_task",
            "Asks for a name by multi-round request, then works on it as a task",
        )
        .task_support(TaskSupport::Required)
        .pre_task_input(
            Ask::Elicit,
            "user_name",
            name_schema("What is your name?", "name"),
        ),
        |ctx, _: NoArgs| async move {
            let name = match ctx.input(
                Ask::Elicit,
                "user_name",
                &name_schema("What is your name?", "name").to_string(),
            ) {
                Some(a) => content_field(&a, "name"),
                None => {
                    let a = ask(
                        &ctx,
                        Ask::Elicit,
                        "user_name",
                        name_schema("What is your name?", "name"),
                    )
                    .await?;
                    a.pointer("/content/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                }
            };
            sleep_ms(200).await;
            Ok(CallToolResult::text(format!(
                "Task finished for user_name={name}"
            )))
        },
    )
}

/// Two skills for the SEP-2640 scenarios: one with nested directories.
fn skills(s: McpServer) -> McpServer {
    use super::api::SkillSpec;
    s.skill(
        SkillSpec::new(
            "conformance/pdf-processing",
            "pdf-processing",
            "Extract text and tables from PDF files",
            "# PDF processing\n\nRun `scripts/extract.sh FILE` to get the text of a PDF.\nSee reference/forms.md for form fields.\n",
        )
        .file("scripts/extract.sh", "text/x-shellscript", "#!/bin/sh\npdftotext \"$1\" -\n")
        .file("reference/forms.md", "text/markdown", "# Forms\n\nFill fields with `pdftk`.\n"),
    )
    .skill(
        SkillSpec::new(
            "code-review",
            "code-review",
            "Review a change for correctness and style",
            "# Code review\n\nRead the diff, then check tests, naming and limits.\n",
        )
        .file("checklist.md", "text/markdown", "- tests\n- names carry units\n- every queue bounded\n"),
    )
}

fn resources(s: McpServer) -> McpServer {
    let d = |uri: &str, name: &str, description: &str, mime: &str| ResourceDescriptor {
        uri: uri.into(),
        name: name.into(),
        description: Some(description.into()),
        mime_type: Some(mime.into()),
        ..Default::default()
    };
    s.resource(
        d(
            "test://static-text",
            "static-text",
            "A static text resource",
            "text/plain",
        ),
        |_ctx, uri| async move {
            Ok(vec![ResourceContent::Text {
                uri,
                mime_type: "text/plain".into(),
                text: STATIC_TEXT.into(),
            }])
        },
    )
    .resource(
        d(
            "test://static-binary",
            "static-binary",
            "A static binary resource (PNG)",
            "image/png",
        ),
        |_ctx, uri| async move {
            Ok(vec![ResourceContent::Blob {
                uri,
                mime_type: "image/png".into(),
                blob_base64: samples::PNG_1X1_BASE64.into(),
            }])
        },
    )
    .resource(
        d(
            "test://watched-resource",
            "watched-resource",
            "A resource that changes when test_trigger_resource_update runs",
            "text/plain",
        ),
        |_ctx, uri| async move {
            Ok(vec![ResourceContent::Text {
                uri,
                mime_type: "text/plain".into(),
                text: "Watched resource content".into(),
            }])
        },
    )
    .resource_template(
        TemplateDescriptor {
            uri_template: "test://template/{id}/data".into(),
            name: "template-data".into(),
            description: Some("Data for one id".into()),
            mime_type: Some("application/json".into()),
            ..Default::default()
        },
        |_ctx, uri, vars: HashMap<String, String>| async move {
            let id = vars.get("id").cloned().unwrap_or_default();
            let text =
                json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
            Ok(vec![ResourceContent::Text {
                uri,
                mime_type: "application/json".into(),
                text: text.to_string(),
            }])
        },
        Some(super::api::complete_from(&["1", "2", "3", "123"])),
    )
}

fn prompts(s: McpServer) -> McpServer {
    let p = |name: &str, description: &str, args: Vec<PromptArgument>| PromptDescriptor {
        name: name.into(),
        description: Some(description.into()),
        arguments: args,
        ..Default::default()
    };
    let arg = |name: &str, description: &str| PromptArgument {
        name: name.into(),
        description: Some(description.into()),
        required: true,
    };
    let no_completions = None::<fn(&str, &str) -> Vec<String>>;
    s.prompt(
        p("test_simple_prompt", "A prompt without arguments", vec![]),
        |_ctx, _args| async move {
            Ok(PromptResult {
                description: None,
                messages: vec![PromptMessage::user(Content::Text(
                    "This is a simple prompt for testing.".into(),
                ))],
            })
        },
        no_completions,
    )
    .prompt(
        p(
            "test_prompt_with_arguments",
            "A prompt with two required arguments",
            vec![
                arg("arg1", "First test argument"),
                arg("arg2", "Second test argument"),
            ],
        ),
        |_ctx, args: HashMap<String, String>| async move {
            let a1 = args.get("arg1").cloned().unwrap_or_default();
            let a2 = args.get("arg2").cloned().unwrap_or_default();
            Ok(PromptResult {
                description: None,
                messages: vec![PromptMessage::user(Content::Text(
                    format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'").into(),
                ))],
            })
        },
        Some(super::api::complete_from(&[
            "paris", "park", "party", "hello", "world",
        ])),
    )
    .prompt(
        p(
            "test_prompt_with_embedded_resource",
            "A prompt that embeds a resource",
            vec![arg("resourceUri", "URI of the resource to embed")],
        ),
        |_ctx, args: HashMap<String, String>| async move {
            let uri = args.get("resourceUri").cloned().unwrap_or_default();
            Ok(PromptResult {
                description: None,
                messages: vec![
                    PromptMessage::user(Content::resource_text(
                        &uri,
                        Some("text/plain"),
                        "Embedded resource content for testing.",
                    )),
                    PromptMessage::user(Content::Text(
                        "Please process the embedded resource above.".into(),
                    )),
                ],
            })
        },
        no_completions,
    )
    .prompt(
        p("test_prompt_with_image", "A prompt with an image", vec![]),
        |_ctx, _args| async move {
            Ok(PromptResult {
                description: None,
                messages: vec![
                    PromptMessage::user(Content::image(samples::PNG_1X1_BASE64, "image/png")),
                    PromptMessage::user(Content::Text("Please analyze the image above.".into())),
                ],
            })
        },
        no_completions,
    )
    .prompt(
        p(
            "test_input_required_result_prompt",
            "A prompt that asks the user for context first",
            vec![],
        ),
        |ctx, _args| async move {
            let a = ctx
                .ask(
                    Ask::Elicit,
                    "user_context",
                    &name_schema("What context should the prompt use?", "context").to_string(),
                )
                .await?;
            Ok(PromptResult {
                description: None,
                messages: vec![PromptMessage::user(Content::Text(
                    format!("Use this context: {}", content_field(&a, "context")).into(),
                ))],
            })
        },
        no_completions,
    )
    .prompt_disabled(
        p(
            "test_dynamic_prompt",
            "Offered only after test_trigger_prompt_change",
            vec![],
        ),
        |_ctx, _args| async move {
            Ok(PromptResult {
                description: None,
                messages: vec![PromptMessage::user(Content::Text("dynamic prompt".into()))],
            })
        },
    )
}
