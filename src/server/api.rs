//! The typed library API's definitions (re-exported as `tessera::api`).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use simd_json::prelude::*;

pub use super::content::{samples, Content, LogLevel};
use super::ctx::CallCtx;
pub use super::ctx::{Ask, ClientCaps, Ctx, CtxError};
use super::encode::JsonResult;
pub use super::registry::{
    App, ListKind, PromptArgument, PromptDescriptor, RegistryError, ResourceDescriptor,
    TemplateDescriptor,
};
use super::registry::{
    JsonOutcome, JsonReply, Prompt, RegistryBuilder, Resource, ResourceSource, ResourceTemplate,
};
use super::schema::to_json_value;
pub use super::skills::SkillSpec;
use super::tools::{Args, CallError, Tool, ToolDescriptor, ToolReply, ToolResult};
pub use super::tools::{RpcError, TaskSupport};
use crate::protocol::json;

/// A tool result built by a typed handler.
#[derive(Debug, Clone, Default)]
pub struct CallToolResult {
    pub content: Vec<Content<'static>>,
    pub structured: Option<serde_json::Value>,
    /// The result's `_meta` members (in the 2026-07-28 era the server's
    /// identity is added beside them and wins over a member of its name).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub is_error: bool,
}

impl CallToolResult {
    pub fn text(s: impl Into<String>) -> Self {
        Self::new(vec![Content::Text(s.into().into())])
    }

    pub fn new(content: Vec<Content<'static>>) -> Self {
        Self {
            content,
            ..Self::default()
        }
    }

    /// A tool-level failure shown to the model (`isError: true`).
    pub fn error(s: impl Into<String>) -> Self {
        Self {
            is_error: true,
            ..Self::text(s)
        }
    }

    pub fn with(mut self, c: Content<'static>) -> Self {
        self.content.push(c);
        self
    }

    /// `structuredContent` (declare an output schema with
    /// [`ToolSpec::output_schema`]).
    pub fn structured(mut self, v: serde_json::Value) -> Self {
        self.structured = Some(v);
        self
    }

    /// Sets one member of the result's `_meta`.
    pub fn meta(mut self, key: &str, value: serde_json::Value) -> Self {
        self.meta
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    fn into_result(self) -> ToolResult<'static> {
        ToolResult {
            content: self.content,
            structured: self.structured.map(|v| v.to_string()),
            meta: self.meta.map(|m| meta_members(&m)),
            is_error: self.is_error,
        }
    }
}

/// A `_meta` map as members text (`"k":v,...`), without the key the
/// server's identity uses.
fn meta_members(m: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = Vec::with_capacity(64);
    for (k, v) in m
        .iter()
        .filter(|(k, _)| k.as_str() != crate::protocol::mcp::meta::SERVER_INFO)
    {
        if !out.is_empty() {
            out.push(b',');
        }
        json::write_str(&mut out, k);
        out.push(b':');
        serde_json::to_writer(&mut out, v).expect("a JSON value encodes");
    }
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Why a typed handler has no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    /// A JSON-RPC error.
    #[error(transparent)]
    Rpc(RpcError),
    /// From [`Ctx::ask`]: input required (modern era), capability missing,
    /// or the client failed.
    #[error(transparent)]
    Ctx(CtxError),
}

impl From<RpcError> for ToolError {
    fn from(e: RpcError) -> Self {
        ToolError::Rpc(e)
    }
}

impl From<CtxError> for ToolError {
    fn from(e: CtxError) -> Self {
        ToolError::Ctx(e)
    }
}

impl From<ToolError> for CallError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::Rpc(r) => CallError::Rpc(r),
            ToolError::Ctx(c) => c.into(),
        }
    }
}

pub type ToolResponse = Result<CallToolResult, ToolError>;

/// How a tool is described to clients.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    name: String,
    description: String,
    title: Option<String>,
    annotations: Option<serde_json::Value>,
    output_schema: Option<serde_json::Value>,
    input_schema: Option<serde_json::Value>,
    task_support: TaskSupport,
    pre_task_inputs: Vec<(Ask, String, String)>,
    disabled: bool,
}

impl ToolSpec {
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            title: None,
            annotations: None,
            output_schema: None,
            input_schema: None,
            task_support: TaskSupport::Forbidden,
            pre_task_inputs: Vec::new(),
            disabled: false,
        }
    }

    pub fn title(mut self, t: &str) -> Self {
        self.title = Some(t.to_owned());
        self
    }

    /// `annotations` (readOnlyHint, destructiveHint, idempotentHint, ...).
    pub fn annotations(mut self, v: serde_json::Value) -> Self {
        self.annotations = Some(v);
        self
    }

    pub fn output_schema(mut self, v: serde_json::Value) -> Self {
        self.output_schema = Some(v);
        self
    }

    /// Replaces the schema derived from the argument type (published
    /// unchanged, validated in full).
    pub fn input_schema(mut self, v: serde_json::Value) -> Self {
        self.input_schema = Some(v);
        self
    }

    pub fn task_support(mut self, t: TaskSupport) -> Self {
        self.task_support = t;
        self
    }

    /// Modern era: input to gather with multi-round requests before the
    /// call becomes a task (`key` names it; `params` is the request's params
    /// object). The task's handler then finds the answer with
    /// [`Ctx::input`] or [`Ctx::ask`].
    pub fn pre_task_input(mut self, kind: Ask, key: &str, params: serde_json::Value) -> Self {
        self.pre_task_inputs
            .push((kind, key.to_owned(), params.to_string()));
        self
    }

    /// Registered but not offered until enabled at run time
    /// ([`set_enabled`]).
    pub fn disabled(mut self) -> Self {
        self.disabled = true;
        self
    }

    fn descriptor(&self, schema: &serde_json::Value) -> ToolDescriptor {
        let mut d = ToolDescriptor::new(&self.name, &self.description, &schema.to_string());
        d.title = self.title.clone();
        d.annotations = self.annotations.as_ref().map(|v| v.to_string());
        d.output_schema = self.output_schema.as_ref().map(|v| v.to_string());
        d.task_support = self.task_support;
        d.pre_task_inputs = self.pre_task_inputs.clone();
        d
    }
}

/// Arguments for tools that take none.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, JsonSchema)]
pub struct NoArgs {}

pub(crate) type Maker<T> = Arc<dyn Fn() -> Rc<T> + Send + Sync>;

/// A server definition: tools, resources, templates, prompts. `build` turns
/// it into an [`App`] every shard instantiates.
#[derive(Default)]
pub struct McpServer {
    tools: Vec<(Maker<dyn Tool>, bool)>,
    resources: Vec<Maker<dyn Resource>>,
    templates: Vec<Maker<dyn ResourceTemplate>>,
    prompts: Vec<(Maker<dyn Prompt>, bool)>,
    instructions: Option<String>,
    extensions: Vec<(String, String)>,
    kv_resources: bool,
    skills: Vec<SkillSpec>,
    sources: Vec<Maker<dyn ResourceSource>>,
}

struct TypedTool<A, F> {
    desc: ToolDescriptor,
    handler: Arc<F>,
    _args: PhantomData<fn(A)>,
}

impl<A, F, Fut> Tool for TypedTool<A, F>
where
    A: DeserializeOwned + 'static,
    F: Fn(Ctx, A) -> Fut + 'static,
    Fut: Future<Output = ToolResponse> + 'static,
{
    fn descriptor(&self) -> &ToolDescriptor {
        &self.desc
    }

    fn call<'a>(&self, cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        let value = if args.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            to_json_value(args)
        };
        let parsed: A = match serde_json::from_value(value) {
            Ok(a) => a,
            Err(e) => {
                return ToolReply::Ready(Ok(ToolResult::error(format!("invalid arguments: {e}"))))
            }
        };
        let fut = (self.handler)(cx.ctx(), parsed);
        ToolReply::Pending(Box::pin(async move {
            match fut.await {
                Ok(r) => Ok(r.into_result()),
                Err(e) => Err(e.into()),
            }
        }))
    }
}

fn schema_of<A: JsonSchema>() -> serde_json::Value {
    let schema = schemars::schema_for!(A);
    let mut v = serde_json::to_value(&schema).expect("schemas serialize");
    // A title derived from the Rust type name says nothing to a client.
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
        o.entry("type").or_insert_with(|| "object".into());
        o.entry("properties")
            .or_insert_with(|| serde_json::json!({}));
    }
    v
}

/// Resource contents returned by a resource or template reader.
#[derive(Debug, Clone)]
pub enum ResourceContent {
    Text {
        uri: String,
        mime_type: String,
        text: String,
    },
    Blob {
        uri: String,
        mime_type: String,
        blob_base64: String,
    },
}

fn contents_json(items: &[ResourceContent]) -> JsonResult {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"\"contents\":[");
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (uri, mime, key, val) = match c {
            ResourceContent::Text {
                uri,
                mime_type,
                text,
            } => (uri, mime_type, "text", text),
            ResourceContent::Blob {
                uri,
                mime_type,
                blob_base64,
            } => (uri, mime_type, "blob", blob_base64),
        };
        out.extend_from_slice(b"{\"uri\":");
        json::write_str(&mut out, uri);
        out.extend_from_slice(b",\"mimeType\":");
        json::write_str(&mut out, mime);
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json::write_str(&mut out, val);
        out.push(b'}');
    }
    out.push(b']');
    JsonResult::new(String::from_utf8(out).expect("JSON is UTF-8"))
}

/// A prompt message.
#[derive(Debug, Clone)]
pub struct PromptMessage {
    pub role: &'static str,
    pub content: Content<'static>,
}

impl PromptMessage {
    pub fn user(content: Content<'static>) -> Self {
        Self {
            role: "user",
            content,
        }
    }

    pub fn assistant(content: Content<'static>) -> Self {
        Self {
            role: "assistant",
            content,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PromptResult {
    pub description: Option<String>,
    pub messages: Vec<PromptMessage>,
}

impl PromptResult {
    fn to_json(&self) -> JsonResult {
        let mut out = Vec::with_capacity(128);
        if let Some(d) = &self.description {
            out.extend_from_slice(b"\"description\":");
            json::write_str(&mut out, d);
            out.push(b',');
        }
        out.extend_from_slice(b"\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"role\":\"");
            out.extend_from_slice(m.role.as_bytes());
            out.extend_from_slice(b"\",\"content\":");
            m.content.write(&mut out);
            out.push(b'}');
        }
        out.push(b']');
        JsonResult::new(String::from_utf8(out).expect("JSON is UTF-8"))
    }
}

type Completer = Arc<dyn Fn(&str, &str) -> Vec<String> + Send + Sync>;

struct FnResource<F> {
    desc: ResourceDescriptor,
    reader: Arc<F>,
}

impl<F, Fut> Resource for FnResource<F>
where
    F: Fn(Ctx, String) -> Fut + 'static,
    Fut: Future<Output = Result<Vec<ResourceContent>, ToolError>> + 'static,
{
    fn descriptor(&self) -> &ResourceDescriptor {
        &self.desc
    }

    fn read(&self, cx: &CallCtx<'_>, uri: &str) -> JsonReply {
        let fut = (self.reader)(cx.ctx(), uri.to_owned());
        JsonReply::Pending(Box::pin(async move {
            let r: JsonOutcome = fut.await.map(|c| contents_json(&c)).map_err(Into::into);
            r
        }))
    }
}

struct FnTemplate<F> {
    desc: TemplateDescriptor,
    reader: Arc<F>,
    completer: Option<Completer>,
}

impl<F, Fut> ResourceTemplate for FnTemplate<F>
where
    F: Fn(Ctx, String, HashMap<String, String>) -> Fut + 'static,
    Fut: Future<Output = Result<Vec<ResourceContent>, ToolError>> + 'static,
{
    fn descriptor(&self) -> &TemplateDescriptor {
        &self.desc
    }

    fn read(&self, cx: &CallCtx<'_>, uri: &str, vars: &[(String, String)]) -> JsonReply {
        let vars: HashMap<String, String> = vars.iter().cloned().collect();
        let fut = (self.reader)(cx.ctx(), uri.to_owned(), vars);
        JsonReply::Pending(Box::pin(async move {
            fut.await.map(|c| contents_json(&c)).map_err(Into::into)
        }))
    }

    fn complete(&self, var: &str, prefix: &str) -> Vec<String> {
        self.completer
            .as_ref()
            .map_or_else(Vec::new, |c| c(var, prefix))
    }
}

struct FnPrompt<F> {
    desc: PromptDescriptor,
    handler: Arc<F>,
    completer: Option<Completer>,
}

impl<F, Fut> Prompt for FnPrompt<F>
where
    F: Fn(Ctx, HashMap<String, String>) -> Fut + 'static,
    Fut: Future<Output = Result<PromptResult, ToolError>> + 'static,
{
    fn descriptor(&self) -> &PromptDescriptor {
        &self.desc
    }

    fn get(&self, cx: &CallCtx<'_>, args: &[(String, String)]) -> JsonReply {
        let args: HashMap<String, String> = args.iter().cloned().collect();
        let fut = (self.handler)(cx.ctx(), args);
        JsonReply::Pending(Box::pin(async move {
            fut.await.map(|p| p.to_json()).map_err(Into::into)
        }))
    }

    fn complete(&self, arg: &str, prefix: &str) -> Vec<String> {
        self.completer
            .as_ref()
            .map_or_else(Vec::new, |c| c(arg, prefix))
    }
}

/// Completion values from a fixed list, filtered by prefix.
pub fn complete_from(
    values: &[&str],
) -> impl Fn(&str, &str) -> Vec<String> + Send + Sync + 'static {
    let values: Vec<String> = values.iter().map(|s| s.to_string()).collect();
    move |_arg, prefix| {
        values
            .iter()
            .filter(|v| v.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl McpServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tools and resources of the `tessera` binary: echo, add, sleep and
    /// the sharded key-value store (tools and `kv://{key}` resources).
    pub fn with_builtins(mut self) -> Self {
        use super::{builtin, kv};
        self = self
            .native_tool(|| Rc::new(builtin::Echo::default()))
            .native_tool(|| Rc::new(builtin::Add::default()))
            .native_tool(|| Rc::new(builtin::Sleep::default()))
            .native_tool(|| Rc::new(kv::KvTool::new(kv::KvKind::Set)))
            .native_tool(|| Rc::new(kv::KvTool::new(kv::KvKind::Get)))
            .native_tool(|| Rc::new(kv::KvTool::new(kv::KvKind::Delete)));
        self.templates
            .push(Arc::new(|| Rc::new(kv::KvTemplate::default())));
        self.kv_resources = true;
        self
    }

    /// A skill (SEP-2640): served as `skill://` resources, listed by
    /// `skills/list`, browsable with `resources/directory/read`.
    pub fn skill(mut self, s: SkillSpec) -> Self {
        self.skills.push(s);
        self
    }

    /// A set of resources that changes at run time; `make` builds one per
    /// shard.
    pub(crate) fn source(mut self, make: Maker<dyn ResourceSource>) -> Self {
        self.sources.push(make);
        self
    }

    pub fn instructions(mut self, s: &str) -> Self {
        self.instructions = Some(s.to_owned());
        self
    }

    /// Declares extension `id` (`capabilities.extensions`).
    pub fn extension(mut self, id: &str, settings: serde_json::Value) -> Self {
        self.extensions.push((id.to_owned(), settings.to_string()));
        self
    }

    /// A typed tool: arguments deserialized into `A`, whose JSON Schema
    /// (from `schemars`) is published as `inputSchema` and enforced.
    pub fn tool<A, F, Fut>(mut self, spec: ToolSpec, handler: F) -> Self
    where
        A: DeserializeOwned + JsonSchema + 'static,
        F: Fn(Ctx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolResponse> + 'static,
    {
        let schema = spec.input_schema.clone().unwrap_or_else(schema_of::<A>);
        let desc = spec.descriptor(&schema);
        let handler = Arc::new(handler);
        let disabled = spec.disabled;
        self.tools.push((
            Arc::new(move || {
                Rc::new(TypedTool::<A, F> {
                    desc: desc.clone(),
                    handler: handler.clone(),
                    _args: PhantomData,
                }) as Rc<dyn Tool>
            }),
            !disabled,
        ));
        self
    }

    /// A tool written against the low-level [`Tool`] trait (synchronous fast
    /// path, borrowed arguments); `make` builds one instance per shard.
    pub(crate) fn native_tool<T: Tool + 'static>(
        mut self,
        make: impl Fn() -> Rc<T> + Send + Sync + 'static,
    ) -> Self {
        self.tools
            .push((Arc::new(move || make() as Rc<dyn Tool>), true));
        self
    }

    /// A resource with a fixed URI.
    pub fn resource<F, Fut>(mut self, desc: ResourceDescriptor, reader: F) -> Self
    where
        F: Fn(Ctx, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<ResourceContent>, ToolError>> + 'static,
    {
        let reader = Arc::new(reader);
        self.resources.push(Arc::new(move || {
            Rc::new(FnResource {
                desc: desc.clone(),
                reader: reader.clone(),
            }) as Rc<dyn Resource>
        }));
        self
    }

    /// Resources named by a URI template (`{var}`); `reader` gets the
    /// variables, `completer` offers values for them.
    pub fn resource_template<F, Fut>(
        mut self,
        desc: TemplateDescriptor,
        reader: F,
        completer: Option<impl Fn(&str, &str) -> Vec<String> + Send + Sync + 'static>,
    ) -> Self
    where
        F: Fn(Ctx, String, HashMap<String, String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<ResourceContent>, ToolError>> + 'static,
    {
        let reader = Arc::new(reader);
        let completer: Option<Completer> = completer.map(|c| Arc::new(c) as Completer);
        self.templates.push(Arc::new(move || {
            Rc::new(FnTemplate {
                desc: desc.clone(),
                reader: reader.clone(),
                completer: completer.clone(),
            }) as Rc<dyn ResourceTemplate>
        }));
        self
    }

    /// A prompt; required arguments are checked before `handler` runs.
    pub fn prompt<F, Fut>(
        self,
        desc: PromptDescriptor,
        handler: F,
        completer: Option<impl Fn(&str, &str) -> Vec<String> + Send + Sync + 'static>,
    ) -> Self
    where
        F: Fn(Ctx, HashMap<String, String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<PromptResult, ToolError>> + 'static,
    {
        self.push_prompt(desc, handler, completer, true)
    }

    /// A prompt registered but not offered until enabled at run time.
    pub fn prompt_disabled<F, Fut>(mut self, desc: PromptDescriptor, handler: F) -> Self
    where
        F: Fn(Ctx, HashMap<String, String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<PromptResult, ToolError>> + 'static,
    {
        self = self.push_prompt(desc, handler, None::<fn(&str, &str) -> Vec<String>>, false);
        self
    }

    fn push_prompt<F, Fut>(
        mut self,
        desc: PromptDescriptor,
        handler: F,
        completer: Option<impl Fn(&str, &str) -> Vec<String> + Send + Sync + 'static>,
        enabled: bool,
    ) -> Self
    where
        F: Fn(Ctx, HashMap<String, String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<PromptResult, ToolError>> + 'static,
    {
        let handler = Arc::new(handler);
        let completer: Option<Completer> = completer.map(|c| Arc::new(c) as Completer);
        self.prompts.push((
            Arc::new(move || {
                Rc::new(FnPrompt {
                    desc: desc.clone(),
                    handler: handler.clone(),
                    completer: completer.clone(),
                }) as Rc<dyn Prompt>
            }),
            enabled,
        ));
        self
    }

    /// The server every shard builds.
    pub fn build(self) -> App {
        let me = Arc::new(self);
        App::new(move |with_sources| {
            let mut b = RegistryBuilder::new();
            for (t, enabled) in &me.tools {
                if *enabled {
                    b.tool(t());
                } else {
                    b.tool_disabled(t());
                }
            }
            for r in &me.resources {
                b.resource(r());
            }
            for t in &me.templates {
                b.template(t());
            }
            for (p, enabled) in &me.prompts {
                if *enabled {
                    b.prompt(p());
                } else {
                    b.prompt_disabled(p());
                }
            }
            if let Some(i) = &me.instructions {
                b.instructions(i);
            }
            for (k, v) in &me.extensions {
                b.extension(k, v);
            }
            b.kv_resources(me.kv_resources);
            if with_sources {
                for s in &me.sources {
                    b.source(s());
                }
            }
            for s in &me.skills {
                b.skill(s.clone());
            }
            b
        })
    }
}

/// Enables or disables a tool/prompt/resource on every shard; clients that
/// listen hear `list_changed`.
pub fn set_enabled(ctx: &Ctx, kind: ListKind, name: &str, on: bool) {
    super::registry::set_enabled(ctx.core(), kind, name, on);
}

/// Whether an entry is offered right now (on this shard; every shard
/// converges on the same set).
pub fn is_enabled(ctx: &Ctx, kind: ListKind, name: &str) -> bool {
    let r = ctx.core().registry();
    match kind {
        ListKind::Tools => r.tool(name).is_some(),
        ListKind::Prompts => r.prompt(name).is_some(),
        ListKind::Resources => r.resource(name).is_some(),
    }
}

/// Tells subscribers of `uri` (on any shard) that it changed.
pub fn resource_updated(ctx: &Ctx, uri: &str) {
    super::watch::updated(ctx.core(), uri);
}

/// Waits `duration` without blocking the shard (a timer on its executor):
/// what a handler uses instead of a blocking sleep, which would stall
/// every connection of the core.
pub async fn sleep(duration: std::time::Duration) {
    glommio::timer::sleep(duration).await;
}
