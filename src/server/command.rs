//! Command tools: tools declared in the config file (`[[tool]]`) that run a
//! program per call, so operators can publish their own tools without Rust.
//!
//! Arguments reach the program only through argv substitution (`"{name}"` in
//! `command` is replaced by that argument) or as JSON on stdin
//! (`stdin_json = true`) — never through a shell, so no argument can inject
//! a command. The child gets an empty environment plus the `env` allow-list,
//! its own working directory, a deadline and an output cap.
//!
//! A shard never blocks on a child: the pipes are non-blocking and the call's
//! task polls them (and `try_wait`) with a backoff from 100 µs to 5 ms, so the
//! executor keeps serving other requests while children run. Concurrent
//! children per shard are capped (`max_command_children_per_shard`; beyond:
//! -31010, nothing started). Only `spawn` itself (fork/exec, tens of µs) runs
//! inline.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::{CallToolResult, Ctx, McpServer, RpcError, ToolError, ToolResponse, ToolSpec};

/// Stderr kept for the `isError` message: the end of it, where the error is.
pub const STDERR_EXCERPT_BYTES: usize = 2048;
const POLL_MIN: Duration = Duration::from_micros(100);
const POLL_MAX: Duration = Duration::from_millis(5);

/// JSON-RPC code for "a bounded resource is full; nothing was executed".
const OVERLOADED: i32 = -31010;

thread_local! {
    /// Children running on this shard's thread (one shard per thread).
    static RUNNING: Cell<usize> = const { Cell::new(0) };
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_output_bytes() -> usize {
    1024 * 1024
}
fn default_schema() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

/// One `[[tool]]` table of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandToolConfig {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub description: String,
    /// JSON Schema of the arguments (an inline TOML table); enforced before
    /// the program runs.
    #[serde(default = "default_schema")]
    pub input_schema: serde_json::Value,
    /// Program (absolute path) and arguments; `{name}` in an element is
    /// replaced by the argument `name` (strings as they are, other values
    /// as JSON). An element that is exactly `{name}` is left out when the
    /// argument is absent.
    pub command: Vec<String>,
    /// Also write the arguments as one JSON object to the program's stdin.
    #[serde(default)]
    pub stdin_json: bool,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Stdout kept; the rest is read and dropped, and the result says so.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Environment variables passed through from the server's environment;
    /// nothing else is.
    #[serde(default)]
    pub env: Vec<String>,
}

impl CommandToolConfig {
    /// Checks what can be checked before the server starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "tool name {:?} must be non-empty ASCII letters, digits, `_`, `-` or `.`",
                self.name
            ));
        }
        let Some(program) = self.command.first() else {
            return Err("command must name a program".into());
        };
        let path = std::path::Path::new(program);
        if !path.is_absolute() {
            return Err(format!(
                "command[0] {program:?} must be an absolute path (no PATH lookup, no shell)"
            ));
        }
        if !path.is_file() {
            return Err(format!("command[0] {program:?} does not exist"));
        }
        if self.timeout_ms == 0 || self.max_output_bytes == 0 {
            return Err("timeout_ms and max_output_bytes must be greater than zero".into());
        }
        if self.input_schema.get("type") != Some(&serde_json::json!("object")) {
            return Err("input_schema must be a JSON Schema with type = \"object\"".into());
        }
        jsonschema::validator_for(&self.input_schema)
            .map_err(|e| format!("input_schema is not a valid JSON Schema: {e}"))?;
        let props = self.input_schema.get("properties");
        for arg in self.command.iter().flat_map(|a| placeholders(a)) {
            if props.and_then(|p| p.get(arg)).is_none() {
                return Err(format!(
                    "command uses {{{arg}}} but input_schema has no property {arg:?}"
                ));
            }
        }
        if let Some(dir) = &self.working_dir {
            if !dir.is_dir() {
                return Err(format!("working_dir {} is not a directory", dir.display()));
            }
        }
        Ok(())
    }
}

/// The `{name}` placeholders in one argv element.
fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            out.push(name);
        }
        rest = &rest[open + close + 1..];
    }
    out
}

/// argv for one call.
fn substitute(command: &[String], args: &serde_json::Value) -> Result<Vec<String>, String> {
    let mut argv = Vec::with_capacity(command.len());
    for (i, element) in command.iter().enumerate() {
        let names = placeholders(element);
        if i > 0 && names.len() == 1 && element == &format!("{{{}}}", names[0]) {
            match args.get(names[0]) {
                None | Some(serde_json::Value::Null) => continue,
                Some(v) => {
                    argv.push(as_arg(v));
                    continue;
                }
            }
        }
        let mut s = element.clone();
        for name in names {
            let v = args
                .get(name)
                .ok_or_else(|| format!("argument {name:?} is required by the command"))?;
            s = s.replace(&format!("{{{name}}}"), &as_arg(v));
        }
        argv.push(s);
    }
    Ok(argv)
}

fn as_arg(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Adds every command tool to `server`.
pub fn register(
    mut server: McpServer,
    tools: &[CommandToolConfig],
    max_children: usize,
) -> McpServer {
    for t in tools {
        let mut spec = ToolSpec::new(&t.name, &t.description).input_schema(t.input_schema.clone());
        if let Some(title) = &t.title {
            spec = spec.title(title);
        }
        let cfg = Arc::new(t.clone());
        server = server.tool(spec, move |ctx: Ctx, args: serde_json::Value| {
            let cfg = cfg.clone();
            async move { run(&cfg, &ctx, args, max_children).await }
        });
    }
    server
}

/// Kills and reaps a child whose call ended early (the call's task was
/// dropped, e.g. cancelled or the connection went away), so no program
/// outlives its call and no zombie is left.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Decrements the running count however the call ends.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(r.get().saturating_sub(1)));
    }
}

async fn run(
    cfg: &CommandToolConfig,
    ctx: &Ctx,
    args: serde_json::Value,
    max_children: usize,
) -> ToolResponse {
    let counters = |f: &dyn Fn(&mut crate::metrics::Counters)| {
        f(&mut ctx.shard().metrics.borrow_mut().counters);
    };
    if RUNNING.with(|r| r.get()) >= max_children {
        counters(&|c| c.commands_refused += 1);
        return Err(ToolError::Rpc(RpcError::new(
            OVERLOADED,
            format!(
                "server overloaded: {max_children} commands already running on this core (max-command-children-per-shard); nothing was executed; retry"
            ),
        )));
    }
    let argv = match substitute(&cfg.command, &args) {
        Ok(a) => a,
        Err(e) => return Ok(CallToolResult::error(e)),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .stdin(if cfg.stdin_json {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in &cfg.env {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    if let Some(dir) = &cfg.working_dir {
        cmd.current_dir(dir);
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            counters(&|c| c.commands_failed += 1);
            log::warn!("tool {}: cannot start {}: {e}", cfg.name, argv[0]);
            return Ok(CallToolResult::error(format!(
                "the tool's program could not be started: {e}"
            )));
        }
    };
    let mut child = Reaped(Some(child));
    RUNNING.with(|r| r.set(r.get() + 1));
    let _slot = Slot;
    counters(&|c| c.commands_started += 1);
    let outcome = drive(cfg, ctx, child.0.as_mut().expect("just spawned"), &args).await;
    child.0 = None;
    match outcome {
        Outcome::Exited {
            code,
            stdout,
            stdout_dropped,
            stderr,
        } => {
            if code == Some(0) {
                let mut text = String::from_utf8_lossy(&stdout).into_owned();
                if stdout_dropped > 0 {
                    text.push_str(&format!(
                        "\n[output truncated: {stdout_dropped} more bytes past max_output_bytes = {}]",
                        cfg.max_output_bytes
                    ));
                }
                Ok(CallToolResult::text(text))
            } else {
                counters(&|c| c.commands_failed += 1);
                let status = code.map_or("killed by a signal".to_string(), |c| {
                    format!("exit status {c}")
                });
                let err = String::from_utf8_lossy(&stderr);
                Ok(CallToolResult::error(if err.trim().is_empty() {
                    format!("the command failed ({status})")
                } else {
                    format!("the command failed ({status}): {}", err.trim_end())
                }))
            }
        }
        Outcome::TimedOut => {
            counters(&|c| {
                c.commands_failed += 1;
                c.commands_timed_out += 1;
            });
            Ok(CallToolResult::error(format!(
                "the command did not finish within {} ms and was killed",
                cfg.timeout_ms
            )))
        }
        Outcome::Cancelled => Ok(CallToolResult::error("cancelled")),
        Outcome::Io(e) => {
            counters(&|c| c.commands_failed += 1);
            Ok(CallToolResult::error(format!("the command failed: {e}")))
        }
    }
}

enum Outcome {
    Exited {
        code: Option<i32>,
        stdout: Vec<u8>,
        stdout_dropped: usize,
        stderr: Vec<u8>,
    },
    TimedOut,
    Cancelled,
    Io(std::io::Error),
}

fn set_nonblocking(fd: &impl AsRawFd) {
    // SAFETY: fcntl on a descriptor we own; flags are read then extended.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Reads what is available; `false` at EOF.
fn pump(
    r: &mut impl Read,
    keep: &mut Vec<u8>,
    cap: usize,
    dropped: &mut usize,
) -> std::io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                let room = cap.saturating_sub(keep.len()).min(n);
                keep.extend_from_slice(&buf[..room]);
                *dropped += n - room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

async fn drive(
    cfg: &CommandToolConfig,
    ctx: &Ctx,
    child: &mut Child,
    args: &serde_json::Value,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms);
    let mut stdin = child.stdin.take();
    let mut input = if cfg.stdin_json {
        let mut v = serde_json::to_vec(args).unwrap_or_default();
        v.push(b'\n');
        v
    } else {
        Vec::new()
    };
    let mut written = 0usize;
    if let Some(s) = &stdin {
        set_nonblocking(s);
    }
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    if let Some(o) = &out {
        set_nonblocking(o);
    }
    if let Some(e) = &err {
        set_nonblocking(e);
    }
    let (mut stdout, mut stdout_dropped) = (Vec::new(), 0usize);
    // The tail of stderr is what explains a failure: keep a rolling window.
    let (mut stderr, mut stderr_dropped) = (Vec::new(), 0usize);
    let mut status = None;
    let mut pause = POLL_MIN;
    loop {
        if let Some(s) = stdin.as_mut() {
            match s.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The program closed its stdin: it does not want the rest.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                stdin = None;
                input = Vec::new();
            }
        }
        if let Some(o) = out.as_mut() {
            match pump(o, &mut stdout, cfg.max_output_bytes, &mut stdout_dropped) {
                Ok(true) => {}
                Ok(false) => out = None,
                Err(e) => return kill(child, Outcome::Io(e)),
            }
        }
        if let Some(e) = err.as_mut() {
            match pump(
                e,
                &mut stderr,
                STDERR_EXCERPT_BYTES * 2,
                &mut stderr_dropped,
            ) {
                Ok(true) => {}
                Ok(false) => err = None,
                Err(e) => return kill(child, Outcome::Io(e)),
            }
            if stderr.len() >= STDERR_EXCERPT_BYTES * 2 {
                stderr.drain(..STDERR_EXCERPT_BYTES);
            }
        }
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => status = Some(s),
                Ok(None) => {}
                Err(e) => return kill(child, Outcome::Io(e)),
            }
        }
        if let Some(s) = status {
            if out.is_none() && err.is_none() {
                let keep = stderr.len().min(STDERR_EXCERPT_BYTES);
                let stderr = stderr.split_off(stderr.len() - keep);
                return Outcome::Exited {
                    code: s.code(),
                    stdout,
                    stdout_dropped,
                    stderr,
                };
            }
        }
        if Instant::now() >= deadline {
            return kill(child, Outcome::TimedOut);
        }
        if ctx.is_cancelled() {
            return kill(child, Outcome::Cancelled);
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Kills and reaps the child (SIGKILL cannot be ignored, so the wait is
/// short); a grandchild holding the pipes open cannot stall us since we stop
/// reading them here.
fn kill(child: &mut Child, outcome: Outcome) -> Outcome {
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(command: &[&str], schema: serde_json::Value) -> CommandToolConfig {
        CommandToolConfig {
            name: "t".into(),
            title: None,
            description: "d".into(),
            input_schema: schema,
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin_json: false,
            timeout_ms: 1000,
            max_output_bytes: 100,
            working_dir: None,
            env: vec![],
        }
    }

    #[test]
    fn substitution_never_splits_or_interprets_arguments() {
        let cmd: Vec<String> = ["/bin/echo", "-n", "{text}", "--n={count}", "{opt}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let argv = substitute(&cmd, &json!({"text": "a b; rm -rf / $(x)", "count": 3})).unwrap();
        assert_eq!(argv, vec!["/bin/echo", "-n", "a b; rm -rf / $(x)", "--n=3"]);
        assert!(
            substitute(&cmd, &json!({"count": 3})).is_ok(),
            "absent optional is left out"
        );
        let e = substitute(&cmd, &json!({"text": "x"})).unwrap_err();
        assert!(e.contains("count"), "{e}");
    }

    #[test]
    fn validation_catches_what_would_fail_at_call_time() {
        let schema = json!({"type":"object","properties":{"text":{"type":"string"}}});
        assert!(tool(&["/bin/echo", "{text}"], schema.clone())
            .validate()
            .is_ok());
        let e = tool(&["echo", "{text}"], schema.clone())
            .validate()
            .unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = tool(&["/bin/echo", "{txt}"], schema.clone())
            .validate()
            .unwrap_err();
        assert!(e.contains("txt"), "{e}");
        let e = tool(&["/no/such/program"], schema.clone())
            .validate()
            .unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = tool(&["/bin/echo"], json!({"type":"string"}))
            .validate()
            .unwrap_err();
        assert!(e.contains("object"), "{e}");
    }
}
