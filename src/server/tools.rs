//! Tools: the handler trait, results, and the per-shard registry.
//!
//! The registry is read-mostly and every shard builds its own copy at start,
//! so looking a tool up never leaves the core. A handler either finishes at
//! once (`ToolReply::Ready`, borrowing from the request's bytes, no copies) or
//! hands back a future that owns what it needs (`ToolReply::Pending`) and is
//! polled on the same shard while the connection keeps serving other requests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::{close_result, Era, SharedNotifier};
use crate::protocol::json;
use crate::runtime::shard::Shard;

/// Tool arguments as parsed from the request, borrowed from its bytes.
pub type Args<'a> = TapeValue<'a, 'a>;

/// A JSON-RPC error raised by a tool call instead of a tool result (protocol
/// level failures such as overload; argument problems are tool results with
/// `isError: true`).
#[derive(Debug, Clone)]
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
}

/// Where a request's `notifications/progress` go, when the client asked for
/// progress (`_meta.progressToken`) and the transport can deliver it.
#[derive(Clone)]
pub struct Progress {
    /// The token, encoded as JSON.
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
        json::write_f64(&mut m, progress);
        if let Some(t) = total {
            m.extend_from_slice(b",\"total\":");
            json::write_f64(&mut m, t);
        }
        if let Some(msg) = message {
            m.extend_from_slice(b",\"message\":");
            json::write_str(&mut m, msg);
        }
        m.extend_from_slice(b"}}");
        self.sink.notify(&m);
    }
}

/// What a tool handler may use besides its arguments.
pub struct ToolCtx<'s> {
    pub shard: &'s Rc<Shard>,
    /// Present when the client asked for progress and it can be delivered.
    pub progress: Option<Progress>,
}

/// One content block of a tool result.
#[derive(Debug, Clone)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
}

/// A `CallToolResult`.
#[derive(Debug, Clone, Default)]
pub struct ToolResult<'a> {
    pub content: Vec<Content<'a>>,
    /// `structuredContent`, as compact JSON text.
    pub structured: Option<String>,
    /// `_meta`, as compact JSON object text.
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

    /// A failed call reported to the model (`isError: true`), per the spec's
    /// rule that tool execution errors are results, not protocol errors.
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

    pub fn with_meta(mut self, json: String) -> Self {
        self.meta = Some(json);
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
            match c {
                Content::Text(t) => {
                    out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                    json::write_str(out, t);
                    out.push(b'}');
                }
            }
        }
        out.push(b']');
        if let Some(s) = &self.structured {
            out.extend_from_slice(b",\"structuredContent\":");
            out.extend_from_slice(s.as_bytes());
        }
        if self.is_error {
            out.extend_from_slice(b",\"isError\":true");
        }
        match (&self.meta, era) {
            (None, _) => close_result(out, era),
            (Some(m), Era::Legacy) => {
                out.extend_from_slice(b",\"_meta\":");
                out.extend_from_slice(m.as_bytes());
                out.push(b'}');
            }
            (Some(m), Era::Modern(_)) => {
                // Our own meta objects are `{...}`; splice their members in
                // beside the server identity.
                let members = m
                    .trim()
                    .strip_prefix('{')
                    .and_then(|x| x.strip_suffix('}'))
                    .unwrap_or("");
                out.extend_from_slice(b",\"resultType\":\"complete\",\"_meta\":{\"");
                out.extend_from_slice(crate::protocol::mcp::meta::SERVER_INFO.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(crate::protocol::mcp::SERVER_INFO_JSON.as_bytes());
                if !members.is_empty() {
                    out.push(b',');
                    out.extend_from_slice(members.as_bytes());
                }
                out.extend_from_slice(b"}}");
            }
        }
    }

    /// Detaches the result from the request's bytes.
    pub fn into_owned(self) -> ToolResult<'static> {
        ToolResult {
            content: self
                .content
                .into_iter()
                .map(|c| match c {
                    Content::Text(t) => Content::Text(Cow::Owned(t.into_owned())),
                })
                .collect(),
            structured: self.structured,
            meta: self.meta,
            is_error: self.is_error,
        }
    }
}

pub type ToolOutcome<'a> = Result<ToolResult<'a>, RpcError>;
pub type ToolFuture = Pin<Box<dyn Future<Output = ToolOutcome<'static>>>>;

pub enum ToolReply<'a> {
    Ready(ToolOutcome<'a>),
    Pending(ToolFuture),
}

/// A tool a client can call. Implementations are built once per shard.
pub trait Tool {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// JSON Schema (2020-12) of the arguments object, as JSON text.
    fn input_schema(&self) -> &str;
    /// JSON Schema of `structuredContent`, when the tool returns one.
    fn output_schema(&self) -> Option<&str> {
        None
    }
    fn call<'a>(&self, cx: &ToolCtx<'_>, args: Args<'a>) -> ToolReply<'a>;
}

/// The tools one shard serves, in the order `tools/list` reports them.
pub struct Registry {
    tools: Vec<Box<dyn Tool>>,
    by_name: HashMap<String, usize>,
    /// `"tools":[...]`, the member every `tools/list` result carries,
    /// encoded once.
    tools_member_json: Vec<u8>,
}

impl Registry {
    pub fn new(tools: Vec<Box<dyn Tool>>) -> Self {
        let mut by_name = HashMap::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let previous = by_name.insert(t.name().to_owned(), i);
            assert!(previous.is_none(), "tool {:?} registered twice", t.name());
        }
        let mut out = Vec::new();
        out.extend_from_slice(b"\"tools\":[");
        for (i, t) in tools.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            json::write_str(&mut out, t.name());
            out.extend_from_slice(b",\"description\":");
            json::write_str(&mut out, t.description());
            out.extend_from_slice(b",\"inputSchema\":");
            out.extend_from_slice(t.input_schema().as_bytes());
            if let Some(s) = t.output_schema() {
                out.extend_from_slice(b",\"outputSchema\":");
                out.extend_from_slice(s.as_bytes());
            }
            out.push(b'}');
        }
        out.push(b']');
        Self {
            tools,
            by_name,
            tools_member_json: out,
        }
    }

    pub fn get(&self, name: &str) -> Option<&dyn Tool> {
        self.by_name.get(name).map(|&i| self.tools[i].as_ref())
    }

    pub fn tools_member_json(&self) -> &[u8] {
        &self.tools_member_json
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|t| t.name())
    }
}

/// Reads a required string argument.
pub fn arg_str<'a>(args: &Args<'a>, key: &str) -> Result<&'a str, String> {
    match args.get(key) {
        Some(v) => v
            .into_string()
            .ok_or_else(|| format!("invalid arguments: `{key}` must be a string")),
        None => Err(format!("invalid arguments: missing required `{key}`")),
    }
}

/// A JSON number argument, kept exact when it is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

/// Reads a required number argument.
pub fn arg_number(args: &Args<'_>, key: &str) -> Result<Number, String> {
    let v = args
        .get(key)
        .ok_or_else(|| format!("invalid arguments: missing required `{key}`"))?;
    if let Some(i) = v.as_i64() {
        Ok(Number::Int(i as i128))
    } else if let Some(u) = v.as_u64() {
        Ok(Number::Int(u as i128))
    } else if let Some(f) = v.as_f64() {
        Ok(Number::Float(f))
    } else {
        Err(format!("invalid arguments: `{key}` must be a number"))
    }
}

/// Rejects arguments the schema does not declare (`additionalProperties: false`).
pub fn deny_unknown(args: &Args<'_>, known: &[&str]) -> Result<(), String> {
    if let Some(obj) = args.as_object() {
        for (k, _) in obj.iter() {
            if !known.contains(&k) {
                return Err(format!("invalid arguments: unknown argument `{k}`"));
            }
        }
    }
    Ok(())
}
