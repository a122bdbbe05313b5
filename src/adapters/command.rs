//! Command tools: tools declared in the config file (`[[tool]]`) that run a
//! program per call, so operators can publish their own tools without Rust.
//!
//! Arguments reach the program only through argv substitution (`"{name}"` in
//! `command` is replaced by that argument) or as JSON on stdin
//! (`stdin_json = true`) — never through a shell, so no argument can inject
//! a command. The child gets an empty environment plus the `env` allow-list,
//! its own working directory, a deadline and an output cap.
//!
//! A shard never blocks on a child: the program is started on the executor's
//! blocking thread (fork/exec waits for the exec), the pipes are made
//! non-blocking (a failure to do so kills the child and fails the call: a
//! blocking read would stall the core), the call's task polls them (and
//! `try_wait`) with a backoff from 100 µs to 5 ms, and a killed child is
//! reaped on the blocking thread. Concurrent children per shard are capped
//! (`max_command_children_per_shard`; beyond: -31010, nothing started).

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::protocol::jsonrpc::SERVER_OVERLOADED;
use crate::server::api::{
    CallToolResult, Ctx, McpServer, RpcError, ToolError, ToolResponse, ToolSpec,
};
use crate::server::trace::AttrValue;

/// Stderr kept for the `isError` message: the end of it, where the error is.
pub const STDERR_EXCERPT_BYTES: usize = 2048;
const POLL_MIN: Duration = Duration::from_micros(100);
const POLL_MAX: Duration = Duration::from_millis(5);

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

/// Why a command tool's definition cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandToolError(String);

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
    pub fn validate(&self) -> Result<(), CommandToolError> {
        let bad = |m: String| Err(CommandToolError(m));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return bad(format!(
                "tool name {:?} must be non-empty ASCII letters, digits, `_`, `-` or `.`",
                self.name
            ));
        }
        let Some(program) = self.command.first() else {
            return bad("command must name a program".into());
        };
        let path = std::path::Path::new(program);
        if !path.is_absolute() {
            return bad(format!(
                "command[0] {program:?} must be an absolute path (no PATH lookup, no shell)"
            ));
        }
        if !path.is_file() {
            return bad(format!("command[0] {program:?} does not exist"));
        }
        if self.timeout_ms == 0 || self.max_output_bytes == 0 {
            return bad("timeout_ms and max_output_bytes must be greater than zero".into());
        }
        if self.input_schema.get("type") != Some(&serde_json::json!("object")) {
            return bad("input_schema must be a JSON Schema with type = \"object\"".into());
        }
        if let Err(e) = jsonschema::validator_for(&self.input_schema) {
            return bad(format!("input_schema is not a valid JSON Schema: {e}"));
        }
        let props = self.input_schema.get("properties");
        for arg in self.command.iter().flat_map(|a| placeholders(a)) {
            if props.and_then(|p| p.get(arg)).is_none() {
                return bad(format!(
                    "command uses {{{arg}}} but input_schema has no property {arg:?}"
                ));
            }
        }
        if let Some(dir) = &self.working_dir {
            if !dir.is_dir() {
                return bad(format!("working_dir {} is not a directory", dir.display()));
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

/// argv for one call; an error names the argument the command needs.
fn substitute(
    command: &[String],
    args: &serde_json::Value,
) -> Result<Vec<String>, CommandToolError> {
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
            let v = args.get(name).ok_or_else(|| {
                CommandToolError(format!("argument {name:?} is required by the command"))
            })?;
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

impl McpServer {
    /// A tool that runs a program per call (`[[tool]]` in the config file);
    /// at most `max_children` run at once on each shard.
    pub fn command_tool(self, t: CommandToolConfig, max_children: usize) -> Self {
        let mut spec = ToolSpec::new(&t.name, &t.description).input_schema(t.input_schema.clone());
        if let Some(title) = &t.title {
            spec = spec.title(title);
        }
        let cfg = Arc::new(t);
        self.tool(spec, move |ctx: Ctx, args: serde_json::Value| {
            let cfg = cfg.clone();
            async move { run(&cfg, &ctx, args, max_children).await }
        })
    }
}

/// Kills and reaps a child whose call ended early (the call's task was
/// dropped, e.g. cancelled or the connection went away), so no program
/// outlives its call and no zombie is left.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            reap(c);
        }
    }
}

/// Kills `child` and waits for it on the executor's blocking thread (SIGKILL
/// cannot be ignored, but a child in uninterruptible sleep can take a while).
fn reap(mut child: Child) {
    let _ = child.kill();
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let wait = glommio::executor().spawn_blocking(move || {
        let _ = child.wait();
    });
    glommio::spawn_local(wait).detach();
}

/// Decrements the running count however the call ends.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(r.get().saturating_sub(1)));
    }
}

/// One call: refused at the bound, else the program run to its outcome.
/// One call, as a child span of the request when it is traced.
async fn run(
    cfg: &CommandToolConfig,
    ctx: &Ctx,
    args: serde_json::Value,
    max_children: usize,
) -> ToolResponse {
    let span = ctx.core().tracer().and_then(|t| {
        let program = cfg.command.first().map_or("", String::as_str);
        let attrs = vec![
            ("gen_ai.tool.name", AttrValue::Str(cfg.name.as_str().into())),
            ("process.executable.path", AttrValue::Str(program.into())),
        ];
        t.child(format!("command {}", cfg.name), attrs)
    });
    let result = run_untraced(cfg, ctx, args, max_children).await;
    if let Some(span) = span {
        let error = match &result {
            Ok(r) if r.is_error => Some("tool_error".to_string()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        span.end(error);
    }
    result
}

async fn run_untraced(
    cfg: &CommandToolConfig,
    ctx: &Ctx,
    args: serde_json::Value,
    max_children: usize,
) -> ToolResponse {
    let counters = |f: &dyn Fn(&mut crate::metrics::Counters)| {
        f(&mut ctx.core().metrics.borrow_mut().counters);
    };
    if RUNNING.with(|r| r.get()) >= max_children {
        counters(&|c| c.commands_refused += 1);
        return Err(ToolError::Rpc(RpcError::new(
            SERVER_OVERLOADED,
            format!(
                "server overloaded: {max_children} commands already running on this core (max-command-children-per-shard); nothing was executed; retry"
            ),
        )));
    }
    let cmd = match command(cfg, &args) {
        Ok(c) => c,
        Err(e) => return Ok(CallToolResult::error(e.0)),
    };
    // Counted from here: the slot is taken before the spawn starts.
    RUNNING.with(|r| r.set(r.get() + 1));
    let _slot = Slot;
    let mut cmd = cmd;
    let spawned = glommio::executor()
        .spawn_blocking(move || cmd.spawn())
        .await;
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            counters(&|c| c.commands_failed += 1);
            log::warn!("tool {}: cannot start {}: {e}", cfg.name, cfg.command[0]);
            return Ok(CallToolResult::error(format!(
                "the tool's program could not be started: {e}"
            )));
        }
    };
    let mut child = Reaped(Some(child));
    counters(&|c| c.commands_started += 1);
    let outcome = drive(cfg, ctx, &mut child, &args).await;
    if !matches!(
        outcome,
        Outcome::Exited { code: Some(0), .. } | Outcome::Cancelled
    ) {
        counters(&|c| c.commands_failed += 1);
    }
    if matches!(outcome, Outcome::TimedOut) {
        counters(&|c| c.commands_timed_out += 1);
    }
    Ok(result_of(cfg, outcome))
}

/// The program and its argv, environment and directory for one call.
fn command(cfg: &CommandToolConfig, args: &serde_json::Value) -> Result<Command, CommandToolError> {
    let argv = substitute(&cfg.command, args)?;
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
    Ok(cmd)
}

/// What the model sees of a run.
fn result_of(cfg: &CommandToolConfig, outcome: Outcome) -> CallToolResult {
    match outcome {
        Outcome::Exited {
            code: Some(0),
            stdout,
            stdout_dropped,
            ..
        } => {
            let mut text = String::from_utf8_lossy(&stdout).into_owned();
            if stdout_dropped > 0 {
                text.push_str(&format!(
                    "\n[output truncated: {stdout_dropped} more bytes past max_output_bytes = {}]",
                    cfg.max_output_bytes
                ));
            }
            CallToolResult::text(text)
        }
        Outcome::Exited { code, stderr, .. } => {
            let status = code.map_or("killed by a signal".to_string(), |c| {
                format!("exit status {c}")
            });
            let err = String::from_utf8_lossy(&stderr);
            CallToolResult::error(if err.trim().is_empty() {
                format!("the command failed ({status})")
            } else {
                format!("the command failed ({status}): {}", err.trim_end())
            })
        }
        Outcome::TimedOut => CallToolResult::error(format!(
            "the command did not finish within {} ms and was killed",
            cfg.timeout_ms
        )),
        Outcome::Cancelled => CallToolResult::error("cancelled"),
        Outcome::Io(e) => CallToolResult::error(format!("the command failed: {e}")),
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

/// Makes `fd` non-blocking; an error means a read or write on it could
/// stall the executor, so the caller must not use it.
fn set_nonblocking(fd: &impl AsRawFd) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl(2) with F_GETFL only reads the flags of `fd`, which the
    // caller's pipe end owns and keeps open for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL changes only the status flags of that
    // descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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

/// A child's pipes, non-blocking, and what came out of them so far.
struct Pipes {
    stdin: Option<std::process::ChildStdin>,
    input: Vec<u8>,
    written: usize,
    out: Option<std::process::ChildStdout>,
    err: Option<std::process::ChildStderr>,
    stdout: Vec<u8>,
    stdout_dropped: usize,
    /// The tail of stderr, where the error is (a rolling window).
    stderr: Vec<u8>,
    stderr_dropped: usize,
}

impl Pipes {
    /// Takes the child's pipes; fails if one cannot be made non-blocking.
    fn take(child: &mut Child, input: Vec<u8>) -> std::io::Result<Self> {
        let p = Self {
            stdin: child.stdin.take(),
            input,
            written: 0,
            out: child.stdout.take(),
            err: child.stderr.take(),
            stdout: Vec::new(),
            stdout_dropped: 0,
            stderr: Vec::new(),
            stderr_dropped: 0,
        };
        if let Some(s) = &p.stdin {
            set_nonblocking(s)?;
        }
        if let Some(o) = &p.out {
            set_nonblocking(o)?;
        }
        if let Some(e) = &p.err {
            set_nonblocking(e)?;
        }
        Ok(p)
    }

    /// Moves what the pipes take or give right now.
    fn pump(&mut self, max_output_bytes: usize) -> std::io::Result<()> {
        if let Some(s) = self.stdin.as_mut() {
            match s.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The program closed its stdin: it does not want the rest.
                Err(_) => self.written = self.input.len(),
            }
            if self.written >= self.input.len() {
                self.stdin = None;
                self.input = Vec::new();
            }
        }
        if let Some(o) = self.out.as_mut() {
            if !pump(
                o,
                &mut self.stdout,
                max_output_bytes,
                &mut self.stdout_dropped,
            )? {
                self.out = None;
            }
        }
        if let Some(e) = self.err.as_mut() {
            let window = STDERR_EXCERPT_BYTES * 2;
            if !pump(e, &mut self.stderr, window, &mut self.stderr_dropped)? {
                self.err = None;
            }
            if self.stderr.len() >= window {
                self.stderr.drain(..STDERR_EXCERPT_BYTES);
            }
        }
        Ok(())
    }

    /// The program closed its output.
    fn drained(&self) -> bool {
        self.out.is_none() && self.err.is_none()
    }

    fn finish(mut self, code: Option<i32>) -> Outcome {
        let keep = self.stderr.len().min(STDERR_EXCERPT_BYTES);
        let stderr = self.stderr.split_off(self.stderr.len() - keep);
        Outcome::Exited {
            code,
            stdout: self.stdout,
            stdout_dropped: self.stdout_dropped,
            stderr,
        }
    }
}

/// Feeds and drains the child until it exits and closes its output, its
/// deadline passes, or the call is cancelled. A child that did not exit is
/// left in `child` (its drop kills and reaps it).
async fn drive(
    cfg: &CommandToolConfig,
    ctx: &Ctx,
    child: &mut Reaped,
    args: &serde_json::Value,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms);
    let input = if cfg.stdin_json {
        let mut v = serde_json::to_vec(args).expect("a JSON value encodes");
        v.push(b'\n');
        v
    } else {
        Vec::new()
    };
    let c = child.0.as_mut().expect("a started child");
    let mut pipes = match Pipes::take(c, input) {
        Ok(p) => p,
        Err(e) => return Outcome::Io(e),
    };
    let mut status = None;
    let mut pause = POLL_MIN;
    loop {
        if let Err(e) = pipes.pump(cfg.max_output_bytes) {
            return Outcome::Io(e);
        }
        if status.is_none() {
            match c.try_wait() {
                Ok(s) => status = s,
                Err(e) => return Outcome::Io(e),
            }
        }
        if let Some(s) = status {
            if pipes.drained() {
                child.0 = None; // reaped by try_wait
                return pipes.finish(s.code());
            }
        }
        if Instant::now() >= deadline {
            return Outcome::TimedOut;
        }
        if ctx.is_cancelled() {
            return Outcome::Cancelled;
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
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
    fn a_descriptor_that_cannot_be_made_non_blocking_is_an_error() {
        // A descriptor fcntl refuses: the caller must hear of it rather than
        // go on to read a pipe that would block the executor.
        struct Raw(i32);
        impl AsRawFd for Raw {
            fn as_raw_fd(&self) -> i32 {
                self.0
            }
        }
        assert!(set_nonblocking(&Raw(-1)).is_err());
        let (r, _w) = std::io::pipe().unwrap();
        assert!(set_nonblocking(&r).is_ok());
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
        let e = substitute(&cmd, &json!({"text": "x"})).unwrap_err().0;
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
            .unwrap_err()
            .0;
        assert!(e.contains("absolute"), "{e}");
        let e = tool(&["/bin/echo", "{txt}"], schema.clone())
            .validate()
            .unwrap_err()
            .0;
        assert!(e.contains("txt"), "{e}");
        let e = tool(&["/no/such/program"], schema.clone())
            .validate()
            .unwrap_err()
            .0;
        assert!(e.contains("does not exist"), "{e}");
        let e = tool(&["/bin/echo"], json!({"type":"string"}))
            .validate()
            .unwrap_err()
            .0;
        assert!(e.contains("object"), "{e}");
    }
}
