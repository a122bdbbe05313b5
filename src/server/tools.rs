//! Tools: descriptors, the handler trait, results and argument helpers.
//!
//! A handler either finishes at once (`ToolReply::Ready`, borrowing from the
//! request's bytes, no copies) or hands back a future that owns what it needs
//! (`ToolReply::Pending`), polled on the same shard while the connection
//! serves other requests. This is the low-level library API; `api.rs` builds
//! typed, async tools on top of it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::content::Content;
use super::ctx::{CallCtx, CtxError};
use super::encode::{close_object, Close, Era};
use super::SharedNotifier;
use crate::protocol::json;

/// Tool arguments as parsed from the request, borrowed from its bytes.
pub type Args<'a> = TapeValue<'a, 'a>;

/// A JSON-RPC error raised instead of a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (JSON-RPC error {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    /// `error.data`, as compact JSON text.
    pub data: Option<String>,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, json: String) -> Self {
        self.data = Some(json);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(crate::protocol::jsonrpc::INVALID_PARAMS, message)
    }
}

/// Why a handler produced no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Rpc(RpcError),
    /// Modern era: the handler needs client input (see `ctx::Ctx::ask`).
    #[error("the handler needs input from the client")]
    InputRequired,
}

impl From<RpcError> for CallError {
    fn from(e: RpcError) -> Self {
        CallError::Rpc(e)
    }
}

impl From<CtxError> for CallError {
    fn from(e: CtxError) -> Self {
        match e {
            CtxError::InputRequired => CallError::InputRequired,
            other => CallError::Rpc(other.into()),
        }
    }
}

/// Where a request's `notifications/progress` go, when the client asked for
/// progress (`_meta.progressToken`) and the transport can deliver it.
#[derive(Clone)]
pub struct Progress {
    token: Box<[u8]>,
    sink: SharedNotifier,
}

impl Progress {
    pub fn new(token: Box<[u8]>, sink: SharedNotifier) -> Self {
        Self { token, sink }
    }

    /// Sends one progress notification. `progress` must grow with each call.
    pub fn report(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":");
        m.extend_from_slice(&self.token);
        m.extend_from_slice(b",\"progress\":");
        write_number(&mut m, progress);
        if let Some(t) = total {
            m.extend_from_slice(b",\"total\":");
            write_number(&mut m, t);
        }
        if let Some(msg) = message {
            m.extend_from_slice(b",\"message\":");
            json::write_str(&mut m, msg);
        }
        m.extend_from_slice(b"}}");
        self.sink.notify(&m);
    }
}

/// Whole numbers print without a fraction.
fn write_number(out: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json::write_i64(out, v as i64);
    } else {
        json::write_f64(out, v);
    }
}

/// A `CallToolResult`.
#[derive(Debug, Clone, Default)]
pub struct ToolResult<'a> {
    pub content: Vec<Content<'a>>,
    /// `structuredContent`, as compact JSON text.
    pub structured: Option<String>,
    /// The members of the result's `_meta` object, as JSON text without the
    /// braces (`"key":value,...`); the modern era adds the server identity.
    pub meta: Option<String>,
    pub is_error: bool,
}

impl<'a> ToolResult<'a> {
    pub fn text(s: impl Into<Cow<'a, str>>) -> Self {
        Self {
            content: vec![Content::Text(s.into())],
            ..Self::default()
        }
    }

    /// A failed call reported to the model (`isError: true`): tool execution
    /// errors are results, not protocol errors.
    pub fn error(message: impl Into<Cow<'a, str>>) -> Self {
        Self {
            is_error: true,
            ..Self::text(message)
        }
    }

    pub fn with_structured(mut self, json: String) -> Self {
        self.structured = Some(json);
        self
    }

    /// Sets the members of `_meta` (JSON text without the braces).
    pub fn with_meta(mut self, members: String) -> Self {
        self.meta = Some(members);
        self
    }

    /// Writes the result object (with `resultType` and the server's identity
    /// merged into `_meta` in the modern era).
    pub fn write_json(&self, out: &mut Vec<u8>, era: Era) {
        out.extend_from_slice(b"{\"content\":[");
        for (i, c) in self.content.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            c.write(out);
        }
        out.push(b']');
        if let Some(s) = &self.structured {
            out.extend_from_slice(b",\"structuredContent\":");
            out.extend_from_slice(s.as_bytes());
        }
        if self.is_error {
            out.extend_from_slice(b",\"isError\":true");
        }
        close_object(
            out,
            era,
            Close {
                meta: self.meta.as_deref(),
                ..Close::complete(true)
            },
        );
    }

    /// Detaches the result from the request's bytes.
    pub fn into_owned(self) -> ToolResult<'static> {
        ToolResult {
            content: self.content.into_iter().map(Content::into_owned).collect(),
            structured: self.structured,
            meta: self.meta,
            is_error: self.is_error,
        }
    }
}

pub type ToolOutcome<'a> = Result<ToolResult<'a>, CallError>;
pub type ToolFuture = Pin<Box<dyn Future<Output = ToolOutcome<'static>>>>;

pub enum ToolReply<'a> {
    Ready(ToolOutcome<'a>),
    Pending(ToolFuture),
}

/// Whether a tool runs as a task (experimental tasks, 2025-11-25; the tasks
/// extension in 2026-07-28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskSupport {
    #[default]
    Forbidden,
    Optional,
    Required,
}

impl TaskSupport {
    pub fn name(self) -> &'static str {
        match self {
            TaskSupport::Forbidden => "forbidden",
            TaskSupport::Optional => "optional",
            TaskSupport::Required => "required",
        }
    }
}

/// How a tool is listed, built once.
#[derive(Debug, Clone)]
pub struct ToolDescriptor {
    pub name: String,
    pub description: String,
    pub title: Option<String>,
    /// JSON Schema (2020-12) of the arguments object, as JSON text.
    pub input_schema: String,
    pub output_schema: Option<String>,
    /// `annotations` object as JSON text.
    pub annotations: Option<String>,
    pub task_support: TaskSupport,
    /// `icons` array as JSON text.
    pub icons: Option<String>,
    /// `_meta` object as JSON text.
    pub meta: Option<String>,
    /// Modern era, task-supporting tools: input gathered by multi-round
    /// requests before the task is created (kind, key, params JSON).
    pub pre_task_inputs: Vec<(super::ctx::Ask, String, String)>,
}

impl ToolDescriptor {
    pub fn new(name: &str, description: &str, input_schema: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            title: None,
            input_schema: input_schema.to_owned(),
            output_schema: None,
            annotations: None,
            task_support: TaskSupport::Forbidden,
            icons: None,
            meta: None,
            pre_task_inputs: Vec::new(),
        }
    }

    pub fn output_schema(mut self, s: &str) -> Self {
        self.output_schema = Some(s.to_owned());
        self
    }

    /// The `Tool` object for tools/list.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        json::write_str(out, &self.name);
        if let Some(t) = &self.title {
            out.extend_from_slice(b",\"title\":");
            json::write_str(out, t);
        }
        out.extend_from_slice(b",\"description\":");
        json::write_str(out, &self.description);
        out.extend_from_slice(b",\"inputSchema\":");
        out.extend_from_slice(self.input_schema.as_bytes());
        if let Some(s) = &self.output_schema {
            out.extend_from_slice(b",\"outputSchema\":");
            out.extend_from_slice(s.as_bytes());
        }
        if let Some(a) = &self.annotations {
            out.extend_from_slice(b",\"annotations\":");
            out.extend_from_slice(a.as_bytes());
        }
        if self.task_support != TaskSupport::Forbidden {
            out.extend_from_slice(b",\"execution\":{\"taskSupport\":\"");
            out.extend_from_slice(self.task_support.name().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        if let Some(i) = &self.icons {
            out.extend_from_slice(b",\"icons\":");
            out.extend_from_slice(i.as_bytes());
        }
        if let Some(m) = &self.meta {
            out.extend_from_slice(b",\"_meta\":");
            out.extend_from_slice(m.as_bytes());
        }
        out.push(b'}');
    }

    /// Properties mirrored into `Mcp-Param-{Name}` headers (`x-mcp-header`).
    pub fn header_params(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bytes = self.input_schema.clone().into_bytes();
        if let Ok(tape) = simd_json::to_tape(&mut bytes) {
            if let Some(props) = tape
                .as_value()
                .get("properties")
                .and_then(|p| p.as_object())
            {
                for (name, prop) in props.iter() {
                    if let Some(h) = prop.get("x-mcp-header").and_then(|h| h.into_string()) {
                        out.push((name.to_owned(), h.to_owned()));
                    }
                }
            }
        }
        out
    }
}

/// A tool a client can call. Implementations are built once per shard.
pub trait Tool {
    fn descriptor(&self) -> &ToolDescriptor;
    fn call<'a>(&self, cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a>;
}

/// Why a tool's arguments are not acceptable; the model sees the message in
/// an `isError` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

impl From<&str> for ArgError {
    fn from(s: &str) -> Self {
        ArgError(s.to_owned())
    }
}

/// Reads a required string argument.
pub fn arg_str<'a>(args: &Args<'a>, key: &str) -> Result<&'a str, ArgError> {
    match args.get(key) {
        Some(v) => v
            .into_string()
            .ok_or_else(|| ArgError(format!("invalid arguments: `{key}` must be a string"))),
        None => Err(ArgError(format!(
            "invalid arguments: missing required `{key}`"
        ))),
    }
}

/// A JSON number argument, kept exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

/// Reads a required number argument.
pub fn arg_number(args: &Args<'_>, key: &str) -> Result<Number, ArgError> {
    let v = args
        .get(key)
        .ok_or_else(|| ArgError(format!("invalid arguments: missing required `{key}`")))?;
    if let Some(i) = v.as_i64() {
        Ok(Number::Int(i as i128))
    } else if let Some(u) = v.as_u64() {
        Ok(Number::Int(u as i128))
    } else if let Some(f) = v.as_f64() {
        Ok(Number::Float(f))
    } else {
        Err(ArgError(format!(
            "invalid arguments: `{key}` must be a number"
        )))
    }
}

/// Rejects arguments the schema does not declare (`additionalProperties: false`).
pub fn deny_unknown(args: &Args<'_>, known: &[&str]) -> Result<(), ArgError> {
    if let Some(obj) = args.as_object() {
        for (k, _) in obj.iter() {
            if !known.contains(&k) {
                return Err(ArgError(format!(
                    "invalid arguments: unknown argument `{k}`"
                )));
            }
        }
    }
    Ok(())
}
