//! What a server offers: tools, resources, resource templates, prompts.
//!
//! Every shard builds its own `Registry` from the same [`App`] at start, so
//! look-ups never leave the core. The set can change at run time (an entry is
//! enabled or disabled): the change is applied on every shard through the
//! mesh, and each shard tells its own clients (`list_changed`). Lists are
//! paged with opaque, signed cursors; order is registration order, so it is
//! deterministic.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use super::core::Core;
use super::ctx::CallCtx;
use super::encode::JsonResult;
use super::msg::Msg;
use super::schema::Validator;
use super::tools::{CallError, RpcError, Tool};
use crate::protocol::json;

/// A result object as data, or why there is none.
pub(crate) type JsonOutcome = Result<JsonResult, CallError>;

pub(crate) enum JsonReply {
    Ready(JsonOutcome),
    Pending(Pin<Box<dyn Future<Output = JsonOutcome>>>),
}

/// Why a server definition cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{kind} {name:?} registered twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("tool {tool:?}: {message}")]
    Schema { tool: String, message: String },
    #[error("URI template {template:?}: {message}")]
    Template { template: String, message: String },
    #[error("skill {skill:?}: {message}")]
    Skill { skill: String, message: String },
    #[error("resources {prefix:?}: {message}")]
    Source { prefix: String, message: String },
}

/// A set of resources that can change while the server runs (the files of
/// a directory): listed after the fixed resources, read by URI. The I/O
/// behind it lives in an adapter; calls here never block.
pub(crate) trait ResourceSource {
    /// Every URI this source serves starts with this prefix.
    fn uri_prefix(&self) -> &str;
    /// What `resources/list` shows, in order.
    fn descriptors(&self) -> Vec<ResourceDescriptor>;
    /// Whether `uri` names a resource listed right now.
    fn contains(&self, uri: &str) -> bool;
    /// Reads `uri` (which starts with the prefix).
    fn read(&self, cx: &CallCtx<'_>, uri: &str) -> JsonReply;
    /// A task that follows changes to the set and reports each to
    /// `on_change`, until `stop` is raised; `None` when the set is fixed.
    fn follow(
        self: Rc<Self>,
        stop: Rc<crate::runtime::local::Flag>,
        on_change: Rc<dyn Fn(SourceChange)>,
    ) -> Option<Pin<Box<dyn Future<Output = ()>>>>;
}

/// What changed in a [`ResourceSource`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SourceChange {
    /// Resources appeared or went away.
    pub listing_changed: bool,
    /// URIs whose content changed, appeared or went away.
    pub updated: Vec<String>,
}

/// On one shard: tells its sessions about a change of a source: everyone
/// hears `list_changed`, and each URI's subscribers hear `updated` from the
/// URI's watch owner only (every shard sees the same change).
pub(crate) fn source_changed(core: &Rc<Core>, change: SourceChange) {
    if change.listing_changed {
        super::listen::list_changed(core, ListKind::Resources);
    }
    for uri in change.updated {
        if super::watch::owner(&uri, core.shard_count) == core.id {
            super::watch::notify_watchers(core, &uri);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ResourceDescriptor {
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<u64>,
}

impl ResourceDescriptor {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"uri\":");
        json::write_str(out, &self.uri);
        out.extend_from_slice(b",\"name\":");
        json::write_str(out, &self.name);
        for (k, v) in [
            ("title", &self.title),
            ("description", &self.description),
            ("mimeType", &self.mime_type),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                json::write_str(out, v);
            }
        }
        if let Some(s) = self.size {
            out.extend_from_slice(b",\"size\":");
            json::write_u64(out, s);
        }
        out.push(b'}');
    }
}

/// A resource with a fixed URI.
pub(crate) trait Resource {
    fn descriptor(&self) -> &ResourceDescriptor;
    /// The `ReadResourceResult` (`contents`).
    fn read(&self, cx: &CallCtx<'_>, uri: &str) -> JsonReply;
}

#[derive(Debug, Clone, Default)]
pub struct TemplateDescriptor {
    pub uri_template: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
}

impl TemplateDescriptor {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"uriTemplate\":");
        json::write_str(out, &self.uri_template);
        out.extend_from_slice(b",\"name\":");
        json::write_str(out, &self.name);
        for (k, v) in [
            ("title", &self.title),
            ("description", &self.description),
            ("mimeType", &self.mime_type),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                json::write_str(out, v);
            }
        }
        out.push(b'}');
    }
}

/// Resources named by an RFC 6570 template (level 1: `{var}`).
pub(crate) trait ResourceTemplate {
    fn descriptor(&self) -> &TemplateDescriptor;
    fn read(&self, cx: &CallCtx<'_>, uri: &str, vars: &[(String, String)]) -> JsonReply;
    /// Completion values for template variable `var` given the typed `prefix`.
    fn complete(&self, _var: &str, _prefix: &str) -> Vec<String> {
        Vec::new()
    }
}

#[derive(Debug, Clone)]
pub struct PromptArgument {
    pub name: String,
    pub description: Option<String>,
    pub required: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PromptDescriptor {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub arguments: Vec<PromptArgument>,
}

impl PromptDescriptor {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        json::write_str(out, &self.name);
        if let Some(t) = &self.title {
            out.extend_from_slice(b",\"title\":");
            json::write_str(out, t);
        }
        if let Some(d) = &self.description {
            out.extend_from_slice(b",\"description\":");
            json::write_str(out, d);
        }
        out.extend_from_slice(b",\"arguments\":[");
        for (i, a) in self.arguments.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            json::write_str(out, &a.name);
            if let Some(d) = &a.description {
                out.extend_from_slice(b",\"description\":");
                json::write_str(out, d);
            }
            out.extend_from_slice(if a.required {
                b",\"required\":true}"
            } else {
                b",\"required\":false}"
            });
        }
        out.extend_from_slice(b"]}");
    }
}

pub(crate) trait Prompt {
    fn descriptor(&self) -> &PromptDescriptor;
    /// The `GetPromptResult` (`messages`). Required arguments are checked
    /// before this is called.
    fn get(&self, cx: &CallCtx<'_>, args: &[(String, String)]) -> JsonReply;
    /// Completion values for argument `arg` given the typed `prefix`.
    fn complete(&self, _arg: &str, _prefix: &str) -> Vec<String> {
        Vec::new()
    }
}

pub(crate) struct ToolEntry {
    pub tool: Rc<dyn Tool>,
    pub validator: Validator,
    /// `(argument, header name)` pairs mirrored into `Mcp-Param-*` headers.
    pub header_params: Vec<(String, String)>,
    pub enabled: Cell<bool>,
}

pub(crate) struct ResourceEntry {
    pub resource: Rc<dyn Resource>,
    pub enabled: Cell<bool>,
}

pub(crate) struct PromptEntry {
    pub prompt: Rc<dyn Prompt>,
    pub enabled: Cell<bool>,
}

/// Kinds of entries whose set can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    /// The list's name in cluster announcements.
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [ListKind::Tools, ListKind::Prompts, ListKind::Resources]
            .into_iter()
            .find(|k| k.name() == name)
    }

    pub fn notification(self) -> &'static str {
        match self {
            ListKind::Tools => "notifications/tools/list_changed",
            ListKind::Prompts => "notifications/prompts/list_changed",
            ListKind::Resources => "notifications/resources/list_changed",
        }
    }

    /// The `subscriptions/listen` filter flag for this kind.
    pub fn filter_key(self) -> &'static str {
        match self {
            ListKind::Tools => "toolsListChanged",
            ListKind::Prompts => "promptsListChanged",
            ListKind::Resources => "resourcesListChanged",
        }
    }
}

/// A template's variables as matched in one URI, in template order.
pub type TemplateVars = Vec<(String, String)>;

pub(crate) struct Registry {
    pub tools: Vec<ToolEntry>,
    tool_index: HashMap<String, usize>,
    pub resources: Vec<ResourceEntry>,
    resource_index: HashMap<String, usize>,
    pub templates: Vec<(Rc<dyn ResourceTemplate>, UriTemplate)>,
    pub prompts: Vec<PromptEntry>,
    prompt_index: HashMap<String, usize>,
    pub instructions: Option<String>,
    /// Extension capabilities (`capabilities.extensions`), as JSON members.
    pub extensions: Vec<(String, String)>,
    /// Whether `kv://{key}` resources are served.
    pub kv_resources: bool,
    /// Skills (SEP-2640), their files among `resources`.
    pub skills: Vec<super::skills::Skill>,
    /// Resource sets that change at run time (`[[resources.dir]]`), listed
    /// after `resources`.
    pub sources: Vec<Rc<dyn ResourceSource>>,
}

impl Registry {
    pub fn tool(&self, name: &str) -> Option<&ToolEntry> {
        self.tool_index
            .get(name)
            .map(|&i| &self.tools[i])
            .filter(|e| e.enabled.get())
    }

    pub fn prompt(&self, name: &str) -> Option<&PromptEntry> {
        self.prompt_index
            .get(name)
            .map(|&i| &self.prompts[i])
            .filter(|e| e.enabled.get())
    }

    pub fn resource(&self, uri: &str) -> Option<&ResourceEntry> {
        self.resource_index
            .get(uri)
            .map(|&i| &self.resources[i])
            .filter(|e| e.enabled.get())
    }

    /// The template that matches `uri`, with its variables.
    pub fn template_for(&self, uri: &str) -> Option<(&Rc<dyn ResourceTemplate>, TemplateVars)> {
        self.templates
            .iter()
            .find_map(|(t, m)| m.matches(uri).map(|vars| (t, vars)))
    }

    pub fn template_named(&self, uri_template: &str) -> Option<&Rc<dyn ResourceTemplate>> {
        self.templates
            .iter()
            .map(|(t, _)| t)
            .find(|t| t.descriptor().uri_template == uri_template)
    }

    /// Enables or disables an entry; true when that changed anything.
    pub fn set_enabled(&self, kind: ListKind, name: &str, on: bool) -> bool {
        let cell = match kind {
            ListKind::Tools => self.tool_index.get(name).map(|&i| &self.tools[i].enabled),
            ListKind::Prompts => self
                .prompt_index
                .get(name)
                .map(|&i| &self.prompts[i].enabled),
            ListKind::Resources => self
                .resource_index
                .get(name)
                .map(|&i| &self.resources[i].enabled),
        };
        match cell {
            Some(c) if c.get() != on => {
                c.set(on);
                true
            }
            _ => false,
        }
    }

    pub fn has_prompts(&self) -> bool {
        !self.prompts.is_empty()
    }

    /// The source serving `uri`, if one does.
    pub fn source_for(&self, uri: &str) -> Option<&Rc<dyn ResourceSource>> {
        self.sources
            .iter()
            .find(|s| uri.starts_with(s.uri_prefix()))
    }

    pub fn has_resources(&self) -> bool {
        !self.resources.is_empty()
            || !self.templates.is_empty()
            || self.kv_resources
            || !self.sources.is_empty()
    }

    /// Whether `uri` names a resource this server serves right now.
    pub fn resource_exists(&self, uri: &str) -> bool {
        self.resource(uri).is_some()
            || self.template_for(uri).is_some()
            || self.source_for(uri).is_some_and(|s| s.contains(uri))
    }
}

/// Collects entries; `build` compiles schemas and indexes names.
#[derive(Default)]
pub(crate) struct RegistryBuilder {
    tools: Vec<(Rc<dyn Tool>, bool)>,
    resources: Vec<(Rc<dyn Resource>, bool)>,
    templates: Vec<Rc<dyn ResourceTemplate>>,
    prompts: Vec<(Rc<dyn Prompt>, bool)>,
    instructions: Option<String>,
    extensions: Vec<(String, String)>,
    kv_resources: bool,
    skills: Vec<super::skills::SkillSpec>,
    sources: Vec<Rc<dyn ResourceSource>>,
}

impl RegistryBuilder {
    /// A set of resources that changes at run time.
    pub fn source(&mut self, s: Rc<dyn ResourceSource>) -> &mut Self {
        self.sources.push(s);
        self
    }

    /// A skill: its files become `skill://` resources and the skills
    /// extension is declared.
    pub fn skill(&mut self, s: super::skills::SkillSpec) -> &mut Self {
        self.skills.push(s);
        self
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn tool(&mut self, t: Rc<dyn Tool>) -> &mut Self {
        self.tools.push((t, true));
        self
    }

    /// A tool registered but not offered until enabled at run time.
    pub fn tool_disabled(&mut self, t: Rc<dyn Tool>) -> &mut Self {
        self.tools.push((t, false));
        self
    }

    pub fn resource(&mut self, r: Rc<dyn Resource>) -> &mut Self {
        self.resources.push((r, true));
        self
    }

    pub fn template(&mut self, t: Rc<dyn ResourceTemplate>) -> &mut Self {
        self.templates.push(t);
        self
    }

    pub fn prompt(&mut self, p: Rc<dyn Prompt>) -> &mut Self {
        self.prompts.push((p, true));
        self
    }

    pub fn prompt_disabled(&mut self, p: Rc<dyn Prompt>) -> &mut Self {
        self.prompts.push((p, false));
        self
    }

    pub fn instructions(&mut self, s: &str) -> &mut Self {
        self.instructions = Some(s.to_owned());
        self
    }

    /// Declares extension `id` with its settings object (JSON text).
    pub fn extension(&mut self, id: &str, settings_json: &str) -> &mut Self {
        self.extensions
            .push((id.to_owned(), settings_json.to_owned()));
        self
    }

    pub fn kv_resources(&mut self, on: bool) -> &mut Self {
        self.kv_resources = on;
        self
    }

    pub fn build(mut self) -> Result<Registry, RegistryError> {
        let mut skills = Vec::with_capacity(self.skills.len());
        for spec in std::mem::take(&mut self.skills) {
            let (skill, files) = super::skills::Skill::build(&spec)?;
            for f in files {
                self.resources.push((Rc::new(f), true));
            }
            skills.push(skill);
        }
        if !skills.is_empty() {
            self.extensions.push((
                super::skills::EXTENSION.to_owned(),
                super::skills::SETTINGS_JSON.to_owned(),
            ));
        }
        let duplicate = |kind, name: &str| RegistryError::Duplicate {
            kind,
            name: name.to_owned(),
        };
        let mut tools = Vec::with_capacity(self.tools.len());
        let mut tool_index = HashMap::new();
        for (t, enabled) in self.tools {
            let d = t.descriptor();
            let validator =
                Validator::compile(&d.input_schema).map_err(|e| RegistryError::Schema {
                    tool: d.name.clone(),
                    message: e.0,
                })?;
            if tool_index.insert(d.name.clone(), tools.len()).is_some() {
                return Err(duplicate("tool", &d.name));
            }
            let header_params = d.header_params();
            tools.push(ToolEntry {
                tool: t,
                validator,
                header_params,
                enabled: Cell::new(enabled),
            });
        }
        let mut resource_index = HashMap::new();
        let mut resources = Vec::new();
        for (r, enabled) in self.resources {
            let uri = &r.descriptor().uri;
            if resource_index
                .insert(uri.clone(), resources.len())
                .is_some()
            {
                return Err(duplicate("resource", uri));
            }
            resources.push(ResourceEntry {
                resource: r,
                enabled: Cell::new(enabled),
            });
        }
        for (i, s) in self.sources.iter().enumerate() {
            let overlaps = self.sources[..i].iter().any(|o| {
                o.uri_prefix().starts_with(s.uri_prefix())
                    || s.uri_prefix().starts_with(o.uri_prefix())
            });
            if overlaps {
                return Err(RegistryError::Source {
                    prefix: s.uri_prefix().to_owned(),
                    message: "uri_prefix overlaps another directory's".into(),
                });
            }
        }
        let mut templates = Vec::new();
        for t in self.templates {
            let m = UriTemplate::parse(&t.descriptor().uri_template)?;
            templates.push((t, m));
        }
        let mut prompt_index = HashMap::new();
        let mut prompts = Vec::new();
        for (p, enabled) in self.prompts {
            let name = &p.descriptor().name;
            if prompt_index.insert(name.clone(), prompts.len()).is_some() {
                return Err(duplicate("prompt", name));
            }
            prompts.push(PromptEntry {
                prompt: p,
                enabled: Cell::new(enabled),
            });
        }
        Ok(Registry {
            tools,
            tool_index,
            resources,
            resource_index,
            templates,
            prompts,
            prompt_index,
            instructions: self.instructions,
            extensions: self.extensions,
            kv_resources: self.kv_resources,
            skills,
            sources: self.sources,
        })
    }
}

/// A server definition every shard builds its own registry from (shared by
/// all executor threads). Made by `McpServer::build`.
#[derive(Clone)]
pub struct App {
    /// Makes one shard's builder; `false`: without the run-time resource
    /// sets (whose making scans directories), for a reload.
    factory: Arc<dyn Fn(bool) -> RegistryBuilder + Send + Sync>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    pub(crate) fn new(factory: impl Fn(bool) -> RegistryBuilder + Send + Sync + 'static) -> Self {
        Self {
            factory: Arc::new(factory),
        }
    }

    /// The registry for one shard.
    pub(crate) fn build(&self) -> Result<Registry, RegistryError> {
        (self.factory)(true).build()
    }

    /// The registry for one shard without its run-time resource sets (a
    /// reload keeps the shard's own; making them scans directories, which
    /// an executor must not do).
    pub(crate) fn build_without_sources(&self) -> Result<Registry, RegistryError> {
        (self.factory)(false).build()
    }

    /// Checks the definition as a shard would build it (duplicate names,
    /// bad schemas and templates, skills over their bounds), without serving.
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.build().map(drop)
    }
}

/// An RFC 6570 level-1 template: literals and `{var}`s.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var(String),
}

impl UriTemplate {
    pub fn parse(t: &str) -> Result<Self, RegistryError> {
        let bad = |message: &str| RegistryError::Template {
            template: t.to_owned(),
            message: message.to_owned(),
        };
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| bad("unclosed '{'"))? + open;
            let var = &rest[open + 1..close];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("only simple {var} expressions are supported"));
            }
            if matches!(parts.last(), Some(Part::Var(_))) {
                return Err(bad("two variables need a literal between them"));
            }
            parts.push(Part::Var(var.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variables if `uri` matches (values percent-decoded).
    pub fn matches(&self, uri: &str) -> Option<Vec<(String, String)>> {
        let mut vars = Vec::new();
        let mut rest = uri;
        let mut i = 0;
        while i < self.parts.len() {
            match &self.parts[i] {
                Part::Lit(l) => rest = rest.strip_prefix(l.as_str())?,
                Part::Var(name) => {
                    let end = match self.parts.get(i + 1) {
                        Some(Part::Lit(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let raw = &rest[..end];
                    if raw.is_empty() || raw.contains('/') {
                        return None;
                    }
                    vars.push((name.clone(), percent_decode(raw)?));
                    rest = &rest[end..];
                }
            }
            i += 1;
        }
        rest.is_empty().then_some(vars)
    }
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a list into one page: `(start, end, next_cursor)`. Cursors are
/// signed offsets, so a client cannot forge one; a bad cursor is -32602.
pub(crate) fn page(
    len: usize,
    cursor: Option<&str>,
    page_size: usize,
    kind: &str,
    key: &super::mrtr::StateKey,
) -> Result<(usize, usize, Option<String>), RpcError> {
    const CURSOR_TTL_MS: u64 = 24 * 3600 * 1000;
    let start = match cursor {
        None => 0,
        Some(c) => key
            .open(kind, c, CURSOR_TTL_MS)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| RpcError::invalid_params("invalid cursor"))?,
    };
    let start = start.min(len);
    let end = (start + page_size).min(len);
    let next = (end < len).then(|| key.seal(kind, &end.to_string()));
    Ok((start, end, next))
}

/// Applies a change to the offered set on every shard, in one order: the
/// change goes to shard 0, which applies it and forwards it to the others
/// over FIFO mesh queues, so all shards converge.
pub(crate) fn set_enabled(core: &Rc<Core>, kind: ListKind, name: &str, on: bool) {
    // `--cluster`: every other node applies it too.
    let shared = core.shared.borrow().clone();
    if let Some(s) = shared {
        s.announce(super::shared::Announcement::Enabled {
            kind,
            name: name.to_owned(),
            on,
        });
    }
    set_enabled_here(core, kind, name, on);
}

/// [`set_enabled`] on this node's shards only (a change another node
/// announced).
pub(crate) fn set_enabled_here(core: &Rc<Core>, kind: ListKind, name: &str, on: bool) {
    if core.id == 0 {
        apply_enabled(core, kind, name, on, true);
    } else {
        core.tell(
            0,
            Msg::SetEnabled {
                kind,
                name: name.to_owned(),
                on,
                broadcast: true,
            },
        );
    }
}

/// A reload's definitions on this shard (tools, prompts, resources): the
/// registry built from `app` replaces the current one, keeping the shard's
/// run-time resource sets (`[[resources.dir]]`, which a reload does not
/// change) and, for every entry kept, whether it is offered now
/// (`set_enabled`). Every list whose offered entries changed is announced
/// (`list_changed`) to this shard's sessions and listen streams. Returns the
/// lists that changed.
pub(crate) fn reload(core: &Rc<Core>, app: &App) -> Result<Vec<ListKind>, RegistryError> {
    let old = core.registry();
    let mut new = app.build_without_sources()?;
    new.sources = old.sources.clone();
    for t in &new.tools {
        if let Some(&i) = old.tool_index.get(&t.tool.descriptor().name) {
            t.enabled.set(old.tools[i].enabled.get());
        }
    }
    for p in &new.prompts {
        if let Some(&i) = old.prompt_index.get(&p.prompt.descriptor().name) {
            p.enabled.set(old.prompts[i].enabled.get());
        }
    }
    for r in &new.resources {
        if let Some(&i) = old.resource_index.get(&r.resource.descriptor().uri) {
            r.enabled.set(old.resources[i].enabled.get());
        }
    }
    let kinds = [ListKind::Tools, ListKind::Prompts, ListKind::Resources];
    let changed: Vec<ListKind> = kinds
        .into_iter()
        .filter(|&k| offered(&old, k) != offered(&new, k))
        .collect();
    core.set_registry(new);
    for &k in &changed {
        super::listen::list_changed(core, k);
    }
    Ok(changed)
}

/// What a list offers, as a client would see it (descriptors of the
/// enabled entries).
fn offered(r: &Registry, kind: ListKind) -> Vec<String> {
    match kind {
        ListKind::Tools => r
            .tools
            .iter()
            .filter(|t| t.enabled.get())
            .map(|t| format!("{:?}", t.tool.descriptor()))
            .collect(),
        ListKind::Prompts => r
            .prompts
            .iter()
            .filter(|p| p.enabled.get())
            .map(|p| format!("{:?}", p.prompt.descriptor()))
            .collect(),
        ListKind::Resources => r
            .resources
            .iter()
            .filter(|x| x.enabled.get())
            .map(|x| format!("{:?}", x.resource.descriptor()))
            .chain(
                r.templates
                    .iter()
                    .map(|(t, _)| format!("{:?}", t.descriptor())),
            )
            .collect(),
    }
}

/// Applies a change here (and, on shard 0, forwards it to every other shard).
pub(crate) fn apply_enabled(
    core: &Rc<Core>,
    kind: ListKind,
    name: &str,
    on: bool,
    broadcast: bool,
) {
    assert!(
        !broadcast || core.id == 0,
        "only shard 0 forwards changes to the offered set"
    );
    if broadcast {
        for to in 1..core.shard_count {
            core.tell(
                to,
                Msg::SetEnabled {
                    kind,
                    name: name.to_owned(),
                    on,
                    broadcast: false,
                },
            );
        }
    }
    if core.registry().set_enabled(kind, name, on) {
        super::listen::list_changed(core, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_templates_match_simple_variables() {
        let t = UriTemplate::parse("test://template/{id}/data").unwrap();
        assert_eq!(
            t.matches("test://template/123/data"),
            Some(vec![("id".into(), "123".into())])
        );
        assert_eq!(
            t.matches("test://template/a%20b/data"),
            Some(vec![("id".into(), "a b".into())])
        );
        assert_eq!(t.matches("test://template//data"), None);
        assert_eq!(t.matches("test://template/1/2/data"), None);
        assert_eq!(t.matches("test://template/1/datax"), None);
        let kv = UriTemplate::parse("kv://{key}").unwrap();
        assert_eq!(
            kv.matches("kv://a%2Fb"),
            Some(vec![("key".into(), "a/b".into())])
        );
        assert!(UriTemplate::parse("x://{a}{b}").is_err());
        assert!(UriTemplate::parse("x://{a").is_err());
        assert!(UriTemplate::parse("x://{+a}").is_err());
    }

    #[test]
    fn cursors_are_signed_offsets() {
        let key = super::super::mrtr::StateKey::random();
        let (s, e, next) = page(250, None, 100, "tools", &key).unwrap();
        assert_eq!((s, e), (0, 100));
        let next = next.unwrap();
        let (s, e, next2) = page(250, Some(&next), 100, "tools", &key).unwrap();
        assert_eq!((s, e), (100, 200));
        let (s, e, last) = page(250, next2.as_deref(), 100, "tools", &key).unwrap();
        assert_eq!((s, e, last), (200, 250, None));
        assert!(page(250, Some("bogus"), 100, "tools", &key).is_err());
        assert!(page(250, Some(&next), 100, "prompts", &key).is_err());
    }
}
