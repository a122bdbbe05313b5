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

use super::ctx::CallCtx;
use super::schema::Validator;
use super::tools::{CallError, RpcError, Tool};
use crate::protocol::json;

/// A result object encoded as JSON text (`{...}`), or why there is none.
pub type JsonOutcome = Result<String, CallError>;

pub enum JsonReply {
    Ready(JsonOutcome),
    Pending(Pin<Box<dyn Future<Output = JsonOutcome>>>),
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
pub trait Resource {
    fn descriptor(&self) -> &ResourceDescriptor;
    /// The `ReadResourceResult` (`{"contents":[...]}`).
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
pub trait ResourceTemplate {
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

pub trait Prompt {
    fn descriptor(&self) -> &PromptDescriptor;
    /// The `GetPromptResult` (`{"messages":[...]}`). Required arguments are
    /// checked before this is called.
    fn get(&self, cx: &CallCtx<'_>, args: &[(String, String)]) -> JsonReply;
    /// Completion values for argument `arg` given the typed `prefix`.
    fn complete(&self, _arg: &str, _prefix: &str) -> Vec<String> {
        Vec::new()
    }
}

pub struct ToolEntry {
    pub tool: Rc<dyn Tool>,
    pub validator: Validator,
    /// `(argument, header name)` pairs mirrored into `Mcp-Param-*` headers.
    pub header_params: Vec<(String, String)>,
    pub enabled: Cell<bool>,
}

pub struct ResourceEntry {
    pub resource: Rc<dyn Resource>,
    pub enabled: Cell<bool>,
}

pub struct PromptEntry {
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

pub struct Registry {
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
    /// `[[resources.dir]]` directories, listed after `resources`.
    pub file_dirs: Vec<Rc<super::files::FileDir>>,
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

    /// The directory serving `uri`, if one does.
    pub fn file_dir_for(&self, uri: &str) -> Option<&Rc<super::files::FileDir>> {
        self.file_dirs.iter().find(|d| d.rel_of(uri).is_some())
    }

    pub fn has_resources(&self) -> bool {
        !self.resources.is_empty()
            || !self.templates.is_empty()
            || self.kv_resources
            || !self.file_dirs.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools
            .iter()
            .filter(|e| e.enabled.get())
            .map(|e| e.tool.descriptor().name.as_str())
    }
}

/// Collects entries; `build` compiles schemas and indexes names.
#[derive(Default)]
pub struct RegistryBuilder {
    tools: Vec<(Rc<dyn Tool>, bool)>,
    resources: Vec<(Rc<dyn Resource>, bool)>,
    templates: Vec<Rc<dyn ResourceTemplate>>,
    prompts: Vec<(Rc<dyn Prompt>, bool)>,
    instructions: Option<String>,
    extensions: Vec<(String, String)>,
    kv_resources: bool,
    skills: Vec<super::skills::SkillSpec>,
    file_dirs: Vec<super::files::FileDirConfig>,
}

impl RegistryBuilder {
    /// A directory whose files are served as resources.
    pub fn file_dir(&mut self, d: super::files::FileDirConfig) -> &mut Self {
        self.file_dirs.push(d);
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

    pub fn build(mut self) -> Result<Registry, String> {
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
        let mut tools = Vec::with_capacity(self.tools.len());
        let mut tool_index = HashMap::new();
        for (t, enabled) in self.tools {
            let d = t.descriptor();
            let validator = Validator::compile(&d.input_schema)
                .map_err(|e| format!("tool {:?}: {e}", d.name))?;
            if tool_index.insert(d.name.clone(), tools.len()).is_some() {
                return Err(format!("tool {:?} registered twice", d.name));
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
            if resource_index
                .insert(r.descriptor().uri.clone(), resources.len())
                .is_some()
            {
                return Err(format!(
                    "resource {:?} registered twice",
                    r.descriptor().uri
                ));
            }
            resources.push(ResourceEntry {
                resource: r,
                enabled: Cell::new(enabled),
            });
        }
        let mut file_dirs: Vec<Rc<super::files::FileDir>> = Vec::new();
        for d in &self.file_dirs {
            if file_dirs.iter().any(|o| {
                o.uri_prefix().starts_with(&d.uri_prefix)
                    || d.uri_prefix.starts_with(o.uri_prefix())
            }) {
                return Err(format!(
                    "resources.dir {:?}: uri_prefix overlaps another directory's",
                    d.uri_prefix
                ));
            }
            let dir = super::files::FileDir::open(d)
                .map_err(|e| format!("resources.dir {:?}: {e}", d.uri_prefix))?;
            file_dirs.push(Rc::new(dir));
        }
        let mut templates = Vec::new();
        for t in self.templates {
            let m = UriTemplate::parse(&t.descriptor().uri_template)?;
            templates.push((t, m));
        }
        let mut prompt_index = HashMap::new();
        let mut prompts = Vec::new();
        for (p, enabled) in self.prompts {
            if prompt_index
                .insert(p.descriptor().name.clone(), prompts.len())
                .is_some()
            {
                return Err(format!("prompt {:?} registered twice", p.descriptor().name));
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
            file_dirs,
        })
    }
}

/// Builds every shard's registry; shared by all executor threads.
#[derive(Clone)]
pub struct App {
    factory: Arc<dyn Fn() -> RegistryBuilder + Send + Sync>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    pub fn new(factory: impl Fn() -> RegistryBuilder + Send + Sync + 'static) -> Self {
        Self {
            factory: Arc::new(factory),
        }
    }

    /// The registry for one shard.
    pub fn build(&self) -> Result<Registry, String> {
        (self.factory)().build()
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
    pub fn parse(t: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in URI template {t:?}"))?
                + open;
            let var = &rest[open + 1..close];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "URI template {t:?}: only simple {{var}} expressions are supported"
                ));
            }
            if matches!(parts.last(), Some(Part::Var(_))) {
                return Err(format!(
                    "URI template {t:?}: two variables need a literal between them"
                ));
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

pub fn percent_decode(s: &str) -> Option<String> {
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
pub fn page(
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
