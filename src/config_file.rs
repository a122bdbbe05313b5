//! `tessera serve --config FILE` and `tessera check-config FILE`: a TOML file
//! with one key per `serve` flag, named like the flag in snake_case
//! (`--max-connections-per-shard` is `max_connections_per_shard`).
//!
//! The file is turned into flags and parsed by the same clap definitions as
//! the command line, so a key accepts exactly what its flag accepts and no
//! second copy of the defaults or the value parsers exists to drift. Flags
//! given on the command line override the file key by key. Every error names
//! the file, the line and the key; all errors of a file are reported at once.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};
use toml::de::{DeTable, DeValue};

use crate::cli::Cli;
use tessera::config::CommandToolConfig;

/// Largest config file read, so a wrong path (a log, a device) fails fast.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Keys that are `serve` flags but make no sense inside a file.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One key of the file, already turned into the flags it stands for.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub line: usize,
    pub args: Vec<String>,
}

/// A parsed, key-by-key validated config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// `[[tool]]` tables: command tools (`server::command`).
    pub tools: Vec<CommandToolConfig>,
    /// `[[role]]` tables: what each role may use (`--auth`).
    pub roles: Vec<tessera::config::Role>,
    /// `[[resources.dir]]` tables: directories served as resources.
    pub dirs: Vec<tessera::config::FileDirConfig>,
    /// `[[prompt]]` tables: prompt templates from files.
    pub prompts: Vec<tessera::config::PromptFileConfig>,
}

/// The keys that are tables of their own rather than flags.
const SECTIONS: &[&str] = &["tool", "role", "prompt"];

#[derive(serde::Deserialize)]
struct Sections {
    #[serde(default)]
    tool: Vec<toml::Spanned<toml::Value>>,
    #[serde(default)]
    role: Vec<toml::Spanned<toml::Value>>,
    #[serde(default)]
    prompt: Vec<toml::Spanned<toml::Value>>,
    #[serde(default)]
    resources: Option<ResourcesSection>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesSection {
    #[serde(default)]
    dir: Vec<toml::Spanned<toml::Value>>,
}

impl ConfigFile {
    /// Reads and checks `path`: syntax, known keys, and each value against
    /// its flag's parser.
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigError>> {
        let err = |line, key: Option<&str>, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| vec![err(0, None, e.to_string())])?;
        if meta.len() > CONFIG_FILE_BYTES_MAX {
            return Err(vec![err(
                0,
                None,
                format!(
                    "{} bytes is more than a config file may have ({CONFIG_FILE_BYTES_MAX})",
                    meta.len()
                ),
            )]);
        }
        let text = std::fs::read_to_string(path).map_err(|e| vec![err(0, None, e.to_string())])?;
        Self::parse(path, &text)
    }

    /// [`ConfigFile::load`] on text already read; `path` is for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<ConfigError>> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |line, key: Option<&str>, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        };
        let table = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(s.start));
            vec![err(line, None, first_line(e.message()))]
        })?;
        let cmd = Cli::command();
        let serve = cmd
            .find_subcommand("serve")
            .expect("the serve subcommand exists");
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        let mut bad_section = false;
        for (k, v) in table.get_ref().iter() {
            let key: &str = k.get_ref();
            let line = line_of(k.span().start);
            if key == "resources" {
                if !matches!(v.get_ref(), DeValue::Table(_)) {
                    bad_section = true;
                    errors.push(err(
                        line,
                        Some(key),
                        format!(
                            "write [[resources.dir]] tables (one per directory), not {}",
                            kind(v.get_ref())
                        ),
                    ));
                }
                continue;
            }
            if SECTIONS.contains(&key) {
                if !matches!(v.get_ref(), DeValue::Array(_)) {
                    bad_section = true;
                    errors.push(err(
                        line,
                        Some(key),
                        format!(
                            "write [[{key}]] tables (one per {key}), not {}",
                            kind(v.get_ref())
                        ),
                    ));
                }
                continue;
            }
            let arg = serve
                .get_arguments()
                .find(|a| a.get_id().as_str() == key && !NOT_IN_FILE.contains(&key));
            let Some(arg) = arg else {
                errors.push(err(line, Some(key), unknown_key_message(key, serve)));
                continue;
            };
            let long = format!("--{}", arg.get_long().unwrap_or(key));
            let takes_no_value = matches!(arg.get_action(), ArgAction::SetTrue);
            let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            let args = match value_to_args(&long, v.get_ref(), takes_no_value, value_optional) {
                Ok(a) => a,
                Err(m) => {
                    errors.push(err(line, Some(key), m));
                    continue;
                }
            };
            // The value must satisfy the flag's own parser.
            let mut argv: Vec<String> = vec!["tessera".into(), "serve".into()];
            argv.extend(args.iter().cloned());
            if let Err(e) = Cli::command().try_get_matches_from(&argv) {
                errors.push(err(line, Some(key), clap_message(&e)));
                continue;
            }
            entries.push(Entry {
                key: key.to_string(),
                line,
                args,
            });
        }
        let mut tools = Vec::new();
        let mut roles: Vec<tessera::config::Role> = Vec::new();
        let mut dirs: Vec<tessera::config::FileDirConfig> = Vec::new();
        let mut prompts: Vec<tessera::config::PromptFileConfig> = Vec::new();
        match toml::from_str::<Sections>(text) {
            // Already reported by key above.
            Err(_) if bad_section => {}
            Err(e) => {
                let line = e.span().map_or(0, |s| line_of(s.start));
                errors.push(err(line, None, first_line(e.message())));
            }
            Ok(sections) => {
                for d in sections.resources.map(|r| r.dir).unwrap_or_default() {
                    let line = line_of(d.span().start);
                    match d.into_inner().try_into::<tessera::config::FileDirConfig>() {
                        Err(e) => {
                            errors.push(err(line, Some("resources.dir"), first_line(e.message())))
                        }
                        Ok(d) => match d.validate() {
                            Err(m) => errors.push(err(line, Some("resources.dir"), m.to_string())),
                            Ok(()) => dirs.push(d),
                        },
                    }
                }
                for p in sections.prompt {
                    let line = line_of(p.span().start);
                    match p
                        .into_inner()
                        .try_into::<tessera::config::PromptFileConfig>()
                    {
                        Err(e) => errors.push(err(line, Some("prompt"), first_line(e.message()))),
                        Ok(p) => match p.load() {
                            Err(m) => {
                                errors.push(err(line, Some("prompt"), format!("{}: {m}", p.name)))
                            }
                            Ok(_) if prompts.iter().any(|o| o.name == p.name) => errors.push(err(
                                line,
                                Some("prompt"),
                                format!("{}: a prompt of this name is already defined", p.name),
                            )),
                            Ok(_) => prompts.push(p),
                        },
                    }
                }
                for r in sections.role {
                    let line = line_of(r.span().start);
                    match r.into_inner().try_into::<tessera::config::Role>() {
                        Err(e) => errors.push(err(line, Some("role"), first_line(e.message()))),
                        Ok(r) if r.name.is_empty() => {
                            errors.push(err(line, Some("role"), "name must not be empty".into()))
                        }
                        Ok(r) if roles.iter().any(|o| o.name == r.name) => errors.push(err(
                            line,
                            Some("role"),
                            format!("{}: a role of this name is already defined", r.name),
                        )),
                        Ok(r) => roles.push(r),
                    }
                }
                let mut names = std::collections::HashSet::new();
                for t in sections.tool {
                    let line = line_of(t.span().start);
                    // Each table on its own, so one bad tool does not hide
                    // the others' problems.
                    let t: CommandToolConfig = match t.into_inner().try_into() {
                        Ok(t) => t,
                        Err(e) => {
                            errors.push(err(line, Some("tool"), first_line(e.message())));
                            continue;
                        }
                    };
                    if let Err(m) = t.validate() {
                        errors.push(err(line, Some("tool"), format!("{}: {m}", t.name)));
                    } else if !names.insert(t.name.clone()) {
                        errors.push(err(
                            line,
                            Some("tool"),
                            format!("{}: a tool of this name is already defined", t.name),
                        ));
                    } else {
                        tools.push(t);
                    }
                }
            }
        }
        if errors.is_empty() {
            entries.sort_by_key(|e| e.line);
            Ok(Self {
                path: path.to_path_buf(),
                entries,
                tools,
                roles,
                dirs,
                prompts,
            })
        } else {
            errors.sort_by_key(|e| e.line);
            Err(errors)
        }
    }

    /// The `serve` argument vector: the file's flags for every key the
    /// command line did not set, then the command line's own arguments
    /// (`cli_args`: what followed `serve`).
    pub fn merged_argv(&self, cli_matches: &ArgMatches, cli_args: &[OsString]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["tessera".into(), "serve".into()];
        for e in &self.entries {
            if cli_matches.value_source(&e.key) != Some(ValueSource::CommandLine) {
                argv.extend(e.args.iter().map(OsString::from));
            }
        }
        argv.extend(cli_args.iter().cloned());
        argv
    }

    /// Where the file set the flag a message talks about (`--foo-bar ...`),
    /// so errors found after parsing (ranges, combinations) still point at a
    /// line.
    pub fn locate(&self, message: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            let flag = format!("--{}", e.key.replace('_', "-"));
            message.match_indices(&flag).any(|(i, _)| {
                !message[i + flag.len()..]
                    .starts_with(|c: char| c == '-' || c.is_ascii_alphanumeric())
            })
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    first_line(text.trim_start_matches("error: "))
}

fn unknown_key_message(key: &str, serve: &clap::Command) -> String {
    let ids: Vec<&str> = serve
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| !NOT_IN_FILE.contains(id))
        .collect();
    let snake = key.replace('-', "_");
    if snake != key && ids.contains(&snake.as_str()) {
        return format!("unknown key; keys are snake_case: `{snake}`");
    }
    // The nearest key by edit distance catches typos.
    let best = ids
        .iter()
        .map(|id| (edit_distance(key, id), *id))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, id)) => format!("unknown key; did you mean `{id}`?"),
        None => "unknown key (every key is a `tessera serve` flag in snake_case; see tessera.example.toml)".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The flags one key stands for.
fn value_to_args(
    long: &str,
    v: &DeValue<'_>,
    takes_no_value: bool,
    value_optional: bool,
) -> Result<Vec<String>, String> {
    if takes_no_value {
        return match v {
            DeValue::Boolean(true) => Ok(vec![long.to_string()]),
            DeValue::Boolean(false) => Ok(vec![]),
            other => Err(format!("expected true or false, found {}", kind(other))),
        };
    }
    match v {
        DeValue::Boolean(true) if value_optional => Ok(vec![long.to_string()]),
        DeValue::Boolean(false) if value_optional => Ok(vec![]),
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(long.to_string());
                out.push(scalar(item.get_ref())?);
            }
            Ok(out)
        }
        other => Ok(vec![long.to_string(), scalar(other)?]),
    }
}

fn scalar(v: &DeValue<'_>) -> Result<String, String> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) if i.radix() == 10 => Ok(i.as_str().to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("bad integer {i}: {e}")),
        DeValue::Float(f) => Ok(f.as_str().to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            kind(other)
        )),
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, Vec<ConfigError>> {
        ConfigFile::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn keys_become_the_flags_they_name() {
        let c = parse(
            "tcp = \"127.0.0.1:9000\"\nstdio = false\nmax_restarts = 7\n\
             allow_origin = [\"https://a\", \"https://b\"]\nhttp = true\nrestart_period = \"2s\"\n",
        )
        .unwrap();
        let args: Vec<_> = c
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.args.clone(), e.line))
            .collect();
        assert_eq!(
            args[0],
            ("tcp", vec!["--tcp".into(), "127.0.0.1:9000".into()], 1)
        );
        assert_eq!(args[1], ("stdio", vec![], 2));
        assert_eq!(
            args[2],
            ("max_restarts", vec!["--max-restarts".into(), "7".into()], 3)
        );
        assert_eq!(
            args[3].1,
            vec!["--allow-origin", "https://a", "--allow-origin", "https://b"]
        );
        assert_eq!(args[4].1, vec!["--http"]);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let errs =
            parse("tcp = \"127.0.0.1:1\"\n\nmax_restart = 3\nmax_restarts = \"many\"\nstdio = 1\n")
                .unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "t.toml:3: key `max_restart`: unknown key; did you mean `max_restarts`?"
            ),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("t.toml:4: key `max_restarts`: invalid value 'many'"),
            "{shown:?}"
        );
        assert_eq!(
            shown[2],
            "t.toml:5: key `stdio`: expected true or false, found an integer"
        );
        let e = parse("max-restarts = 3\n").unwrap_err();
        assert!(e[0].message.contains("`max_restarts`"), "{e:?}");
        let e = parse("config = \"x.toml\"\n").unwrap_err();
        assert!(e[0].message.starts_with("unknown key"), "{e:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("tcp = \"127.0.0.1:1\"\nmax_restarts = = 3\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 2, "{e:?}");
    }

    #[test]
    fn locate_finds_the_key_a_message_is_about() {
        let c = parse("drain_timeout_ms = 5\nmax_restarts = 1\n").unwrap();
        assert_eq!(
            c.locate("--max-restarts must be at least 1")
                .map(|e| e.line),
            Some(2)
        );
        assert!(c.locate("--drain-timeout must be positive").is_none());
    }
}
