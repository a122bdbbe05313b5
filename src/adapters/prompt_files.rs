//! Prompt templates from files (`[[prompt]]` in the config file): the
//! file's text with `{{argument}}` placeholders becomes one user (or
//! assistant) message; declared arguments are listed, required ones
//! enforced, and their `completions` answer `completion/complete`.
//!
//! The file is read once when the configuration is loaded (bounded by
//! [`TEMPLATE_BYTES_MAX`]) so a prompt never touches the disk on the
//! request path, and a placeholder no argument declares is an error at
//! startup rather than a silent blank in a user's prompt.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::server::api::{McpServer, PromptMessage, PromptResult};
use crate::server::content::Content;
use crate::server::registry::{PromptArgument, PromptDescriptor};

/// Largest template file read.
pub(crate) const TEMPLATE_BYTES_MAX: u64 = 1024 * 1024;
/// Completion values declared per argument at most (MCP caps a completion
/// answer at 100 values).
pub(crate) const COMPLETIONS_MAX: usize = 100;

/// Why a prompt template cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prompt {prompt:?}: {message}")]
pub struct PromptFileError {
    pub prompt: String,
    pub message: String,
}

/// One argument of a `[[prompt]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptArgConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// Values offered by `completion/complete` (filtered by what was typed).
    #[serde(default)]
    pub completions: Vec<String>,
}

/// One `[[prompt]]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFileConfig {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The template (absolute path).
    pub file: PathBuf,
    /// Who says the message: "user" (default) or "assistant".
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default)]
    pub arguments: Vec<PromptArgConfig>,
}

fn default_role() -> String {
    "user".into()
}

/// The `{{name}}` placeholders of `text`, in order of appearance.
fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

/// `text` with each `{{name}}` replaced by its value (absent optional
/// arguments become empty).
pub(crate) fn render(text: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        if let Some(v) = args.get(after[..end].trim()) {
            out.push_str(v);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

impl PromptFileConfig {
    /// Reads the template and checks it against the declared arguments (at
    /// startup, on the main thread).
    pub fn load(&self) -> Result<String, PromptFileError> {
        let bad = |message: String| PromptFileError {
            prompt: self.name.clone(),
            message,
        };
        if self.name.is_empty() {
            return Err(bad("name must not be empty".into()));
        }
        if !self.file.is_absolute() {
            return Err(bad(format!(
                "file {:?} must be an absolute path",
                self.file
            )));
        }
        if !matches!(self.role.as_str(), "user" | "assistant") {
            return Err(bad(format!(
                "role {:?}: use \"user\" or \"assistant\"",
                self.role
            )));
        }
        let meta =
            std::fs::metadata(&self.file).map_err(|e| bad(format!("file {:?}: {e}", self.file)))?;
        if meta.len() > TEMPLATE_BYTES_MAX {
            return Err(bad(format!(
                "file {:?} is larger than {TEMPLATE_BYTES_MAX} bytes",
                self.file
            )));
        }
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| bad(format!("file {:?}: {e}", self.file)))?;
        let mut seen = std::collections::HashSet::new();
        for a in &self.arguments {
            if a.name.is_empty() || !seen.insert(a.name.as_str()) {
                return Err(bad(format!(
                    "argument {:?} is empty or declared twice",
                    a.name
                )));
            }
            if a.completions.len() > COMPLETIONS_MAX {
                return Err(bad(format!(
                    "argument {:?}: more than {COMPLETIONS_MAX} completions",
                    a.name
                )));
            }
        }
        for p in placeholders(&text) {
            if !seen.contains(p) {
                return Err(bad(format!(
                    "the template uses {{{{{p}}}}} but no argument of that name is declared"
                )));
            }
        }
        Ok(text)
    }
}

impl McpServer {
    /// A prompt whose text comes from a template file (`[[prompt]]`): the
    /// file is read now, once; a prompt never touches the disk afterwards.
    pub fn prompt_file(self, p: &PromptFileConfig) -> Result<Self, PromptFileError> {
        let text = p.load()?;
        Ok(self.template_prompt(p, text))
    }

    fn template_prompt(self, p: &PromptFileConfig, text: String) -> Self {
        let desc = PromptDescriptor {
            name: p.name.clone(),
            title: p.title.clone(),
            description: p.description.clone(),
            arguments: p
                .arguments
                .iter()
                .map(|a| PromptArgument {
                    name: a.name.clone(),
                    description: a.description.clone(),
                    required: a.required,
                })
                .collect(),
        };
        let completions: HashMap<String, Vec<String>> = p
            .arguments
            .iter()
            .map(|a| (a.name.clone(), a.completions.clone()))
            .collect();
        let description = p.description.clone();
        let assistant = p.role == "assistant";
        self.prompt(
            desc,
            move |_ctx, args: HashMap<String, String>| {
                let text = render(&text, &args);
                let description = description.clone();
                async move {
                    let content = Content::Text(text.into());
                    Ok(PromptResult {
                        description,
                        messages: vec![if assistant {
                            PromptMessage::assistant(content)
                        } else {
                            PromptMessage::user(content)
                        }],
                    })
                }
            },
            Some(move |arg: &str, prefix: &str| {
                completions
                    .get(arg)
                    .map(|values| {
                        values
                            .iter()
                            .filter(|v| v.starts_with(prefix))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_render_and_must_be_declared() {
        let args: HashMap<String, String> = [("lang".to_string(), "Rust".to_string())].into();
        assert_eq!(
            render("Review this {{ lang }} code: {{code}}.", &args),
            "Review this Rust code: ."
        );
        assert_eq!(placeholders("a {{x}} b {{ y }} {{z"), vec!["x", "y"]);
        let dir = std::env::temp_dir().join(format!("tessera-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.md");
        std::fs::write(&file, "Hello {{who}} {{what}}").unwrap();
        let mut cfg = PromptFileConfig {
            name: "greet".into(),
            title: None,
            description: None,
            file: file.clone(),
            role: "user".into(),
            arguments: vec![PromptArgConfig {
                name: "who".into(),
                description: None,
                required: true,
                completions: vec![],
            }],
        };
        assert!(cfg.load().unwrap_err().message.contains("{{what}}"));
        cfg.arguments.push(PromptArgConfig {
            name: "what".into(),
            description: None,
            required: false,
            completions: vec!["a".into()],
        });
        assert_eq!(cfg.load().unwrap(), "Hello {{who}} {{what}}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
