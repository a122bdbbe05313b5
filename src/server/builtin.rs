//! Built-in tools that need no configuration: `echo`, `add`, `sleep`.
//!
//! They exist so that a fresh server is useful to try and to benchmark: `echo`
//! is the cheapest possible round trip through the whole MCP stack, `add`
//! exercises typed arguments, and `sleep` proves a slow handler yields the
//! core instead of blocking the connections that share it.

use std::time::{Duration, Instant};

use simd_json::prelude::*;

use super::ctx::CallCtx;
use super::tools::{
    arg_number, arg_str, deny_unknown, ArgError, Args, Number, Tool, ToolDescriptor, ToolReply,
    ToolResult,
};
use crate::protocol::json;

/// Longest `sleep` accepted, so one call cannot pin a request slot forever.
pub const SLEEP_MAX_MS: u64 = 60_000;

/// Closest spacing of `sleep`'s progress notifications.
const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(20);

pub struct Echo(ToolDescriptor);

impl Default for Echo {
    fn default() -> Self {
        Self(ToolDescriptor::new(
            "echo",
            "Returns its `text` argument unchanged.",
            r#"{"type":"object","properties":{"text":{"type":"string","description":"Text to return"}},"required":["text"],"additionalProperties":false}"#,
        ))
    }
}

impl Tool for Echo {
    fn descriptor(&self) -> &ToolDescriptor {
        &self.0
    }
    fn call<'a>(&self, _cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        let r = deny_unknown(&args, &["text"]).and_then(|()| arg_str(&args, "text"));
        ToolReply::Ready(Ok(match r {
            Ok(text) => ToolResult::text(text),
            Err(e) => ToolResult::error(e.0),
        }))
    }
}

pub struct Add(ToolDescriptor);

impl Default for Add {
    fn default() -> Self {
        Self(ToolDescriptor::new(
            "add",
            "Adds two numbers `a` and `b`; integers stay exact.",
            r#"{"type":"object","properties":{"a":{"type":"number"},"b":{"type":"number"}},"required":["a","b"],"additionalProperties":false}"#,
        )
        .output_schema(r#"{"type":"object","properties":{"sum":{"type":"number"}},"required":["sum"]}"#))
    }
}

impl Add {
    fn sum(args: &Args<'_>) -> Result<Number, ArgError> {
        deny_unknown(args, &["a", "b"])?;
        let a = arg_number(args, "a")?;
        let b = arg_number(args, "b")?;
        Ok(match (a, b) {
            (Number::Int(x), Number::Int(y)) => {
                // i128 holds any sum of two JSON integers that fit i64/u64.
                let s = x + y;
                if s >= i64::MIN as i128 && s <= u64::MAX as i128 {
                    Number::Int(s)
                } else {
                    Number::Float(s as f64)
                }
            }
            (x, y) => Number::Float(as_f64(x) + as_f64(y)),
        })
    }
}

fn as_f64(n: Number) -> f64 {
    match n {
        Number::Int(i) => i as f64,
        Number::Float(f) => f,
    }
}

impl Tool for Add {
    fn descriptor(&self) -> &ToolDescriptor {
        &self.0
    }
    fn call<'a>(&self, _cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        ToolReply::Ready(Ok(match Add::sum(&args) {
            Ok(n) => {
                let mut text = Vec::with_capacity(24);
                match n {
                    Number::Int(i) if i >= 0 => json::write_u64(&mut text, i as u64),
                    Number::Int(i) => json::write_i64(&mut text, i as i64),
                    Number::Float(f) => json::write_f64(&mut text, f),
                }
                let text = String::from_utf8(text).expect("numbers are ASCII");
                let structured = format!("{{\"sum\":{text}}}");
                ToolResult::text(text).with_structured(structured)
            }
            Err(e) => ToolResult::error(e.0),
        }))
    }
}

pub struct Sleep(ToolDescriptor);

impl Default for Sleep {
    fn default() -> Self {
        Self(ToolDescriptor::new(
            "sleep",
            "Waits `ms` milliseconds without blocking other requests, then returns; reports progress when the request carries a progressToken.",
            r#"{"type":"object","properties":{"ms":{"type":"integer","minimum":0,"maximum":60000,"description":"Milliseconds to wait"}},"required":["ms"],"additionalProperties":false}"#,
        ))
    }
}

impl Tool for Sleep {
    fn descriptor(&self) -> &ToolDescriptor {
        &self.0
    }
    fn call<'a>(&self, cx: &CallCtx<'_>, args: Args<'a>) -> ToolReply<'a> {
        if let Err(e) = deny_unknown(&args, &["ms"]) {
            return ToolReply::Ready(Ok(ToolResult::error(e.0)));
        }
        let ms = match args.get("ms").map(|v| (v.as_u64(), v.is_number())) {
            Some((Some(ms), _)) if ms <= SLEEP_MAX_MS => ms,
            Some((_, true)) => {
                return ToolReply::Ready(Ok(ToolResult::error(format!(
                    "invalid arguments: `ms` must be an integer from 0 to {SLEEP_MAX_MS}"
                ))))
            }
            Some(_) => {
                return ToolReply::Ready(Ok(ToolResult::error(
                    "invalid arguments: `ms` must be an integer",
                )))
            }
            None => {
                return ToolReply::Ready(Ok(ToolResult::error(
                    "invalid arguments: missing required `ms`",
                )))
            }
        };
        let progress = cx.progress.clone();
        ToolReply::Pending(Box::pin(async move {
            let total = Duration::from_millis(ms);
            match progress {
                None => glommio::timer::sleep(total).await,
                Some(p) => {
                    // Report about ten times, never more often than every
                    // PROGRESS_MIN_INTERVAL, always once at the end.
                    let step = (total / 10).max(PROGRESS_MIN_INTERVAL);
                    let start = Instant::now();
                    loop {
                        let left = total.saturating_sub(start.elapsed());
                        glommio::timer::sleep(left.min(step)).await;
                        let done = start.elapsed().min(total);
                        let msg = format!("slept {} of {ms} ms", done.as_millis());
                        p.report(done.as_millis() as f64, Some(ms as f64), Some(&msg));
                        if done >= total {
                            break;
                        }
                    }
                }
            }
            Ok(ToolResult::text(format!("slept {ms} ms")))
        }))
    }
}
