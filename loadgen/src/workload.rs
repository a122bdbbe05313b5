//! What the load consists of: one request shape (`--method`, `--tool`,
//! `--args`, `--params`) or a weighted mix read from a file (`--mix`), each
//! shape pre-encoded into byte pieces so that a request costs a few copies.
//!
//! Mix file: one entry per line, `#` starts a comment:
//!
//! ```text
//! # weight  method       tool-or-dash  JSON (tool arguments, or params)
//! 80        tools/call   echo          {"text":"hello"}
//! 15        tools/call   kv_get        {"key":"{key}"}
//! 5         ping         -
//! ```
//!
//! `{key}` anywhere in the JSON (and so in an `Mcp-Name` taken from it) is
//! replaced per request by a kv key: one owned by the shard serving the
//! connection, or with probability `--cross-shard` one owned by another
//! shard, so a chosen fraction of kv calls crosses the mesh.

use simd_json::prelude::*;
use tessera::internals::json;

/// The placeholder a mix entry uses for a per-request kv key.
pub const KEY: &str = "{key}";

/// One request shape, split around `{key}` placeholders.
#[derive(Debug, Clone)]
pub struct Shape {
    pub weight: u32,
    pub method: String,
    /// The tool for `tools/call`.
    pub tool: Option<String>,
    /// Everything after `"method":...` up to (not including) the closing
    /// `}` of the message, in the legacy framing: `,"params":{...}`.
    pub params: Vec<Vec<u8>>,
    /// Modern framing: the same with `_meta` added to params.
    pub params_modern: Vec<Vec<u8>>,
    /// The modern `Mcp-Name` header value, split the same way.
    pub mcp_name: Option<Vec<Vec<u8>>>,
}

impl Shape {
    pub fn uses_key(&self) -> bool {
        self.params.len() > 1
    }
}

/// The request shapes of a run and how to pick among them.
#[derive(Debug, Clone)]
pub struct Workload {
    pub shapes: Vec<Shape>,
    cumulative: Vec<u32>,
    total_weight: u32,
    /// Fraction of `{key}` substitutions that use a key another shard owns.
    pub cross_shard: f64,
}

const MODERN_META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

impl Workload {
    pub fn single(
        method: &str,
        tool: &str,
        args: Option<&str>,
        params: Option<&str>,
    ) -> Result<Workload, String> {
        let json = if method == "tools/call" {
            match (args, tool) {
                (Some(j), _) => Some(j.to_owned()),
                (None, "echo") => Some(r#"{"text":"hello"}"#.into()),
                (None, "add") => Some(r#"{"a":1,"b":2}"#.into()),
                (None, _) => None,
            }
        } else {
            params.map(str::to_owned)
        };
        let shape = shape(1, method, Some(tool), json.as_deref())?;
        Ok(Self::from_shapes(vec![shape]))
    }

    pub fn from_mix(text: &str) -> Result<Workload, String> {
        let mut shapes = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("mix line {}: {e}", n + 1);
            let mut parts = line
                .splitn(4, char::is_whitespace)
                .filter(|s| !s.is_empty());
            let weight: u32 = parts
                .next()
                .and_then(|w| w.parse().ok())
                .filter(|&w| w > 0)
                .ok_or_else(|| at("expected a positive integer weight first".into()))?;
            let method = parts
                .next()
                .ok_or_else(|| at("expected a method after the weight".into()))?;
            let rest = line.split_once(method).map_or("", |(_, r)| r).trim_start();
            let (tool, json) = match rest.split_once(char::is_whitespace) {
                Some((t, j)) => (t, j.trim()),
                None => (rest, ""),
            };
            let tool = (!tool.is_empty() && tool != "-").then_some(tool);
            if method == "tools/call" && tool.is_none() {
                return Err(at("tools/call needs a tool name".into()));
            }
            let json = (!json.is_empty()).then_some(json);
            shapes.push(shape(weight, method, tool, json).map_err(at)?);
        }
        if shapes.is_empty() {
            return Err("the mix file has no entries".into());
        }
        Ok(Self::from_shapes(shapes))
    }

    fn from_shapes(shapes: Vec<Shape>) -> Workload {
        let mut cumulative = Vec::with_capacity(shapes.len());
        let mut total = 0;
        for s in &shapes {
            total += s.weight;
            cumulative.push(total);
        }
        Workload {
            shapes,
            cumulative,
            total_weight: total,
            cross_shard: 0.0,
        }
    }

    pub fn uses_keys(&self) -> bool {
        self.shapes.iter().any(Shape::uses_key)
    }

    /// Picks a shape for a uniform random `r`.
    pub fn pick(&self, r: u64) -> &Shape {
        if self.shapes.len() == 1 {
            return &self.shapes[0];
        }
        let x = (r % self.total_weight as u64) as u32;
        let i = self.cumulative.partition_point(|&c| c <= x);
        &self.shapes[i]
    }

    /// One line per shape, for the run header.
    pub fn describe(&self) -> String {
        let name = |s: &Shape| match &s.tool {
            Some(t) if s.method == "tools/call" => format!("tools/call {t}"),
            _ => s.method.clone(),
        };
        if self.shapes.len() == 1 {
            return name(&self.shapes[0]);
        }
        self.shapes
            .iter()
            .map(|s| format!("{} x{}", name(s), s.weight))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks that `s` is a JSON object and returns it in compact form.
pub fn json_object(what: &str, s: &str) -> Result<String, String> {
    let mut bytes = s.as_bytes().to_vec();
    let tape =
        simd_json::to_tape(&mut bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    let v = tape.as_value();
    if !v.is_object() {
        return Err(format!("{what} must be a JSON object"));
    }
    Ok(json::encode_value(v))
}

fn shape(
    weight: u32,
    method: &str,
    tool: Option<&str>,
    json: Option<&str>,
) -> Result<Shape, String> {
    let obj = json
        .map(|j| json_object("the request JSON", j))
        .transpose()?;
    let mut legacy = String::from(",\"method\":");
    legacy.push_str(&json_string(method));
    let mut modern = legacy.clone();
    let mut name = None;
    if method == "tools/call" {
        let tool = tool.unwrap_or("echo");
        let args = obj.unwrap_or_else(|| "{}".into());
        let head = format!(
            ",\"params\":{{\"name\":{},\"arguments\":{args}",
            json_string(tool)
        );
        legacy.push_str(&head);
        legacy.push('}');
        modern.push_str(&head);
        modern.push(',');
        modern.push_str(MODERN_META);
        modern.push('}');
        name = Some(tool.to_owned());
    } else {
        let obj = obj.unwrap_or_else(|| "{}".into());
        if obj != "{}" {
            legacy.push_str(",\"params\":");
            legacy.push_str(&obj);
        }
        modern.push_str(",\"params\":");
        let inner = &obj[..obj.len() - 1];
        modern.push_str(inner);
        if inner.len() > 1 {
            modern.push(',');
        }
        modern.push_str(MODERN_META);
        modern.push('}');
        name = name.or_else(|| named_param(method, &obj));
    }
    let split = |s: &str| -> Vec<Vec<u8>> { s.split(KEY).map(|p| p.as_bytes().to_vec()).collect() };
    Ok(Shape {
        weight,
        method: method.to_owned(),
        tool: tool.map(str::to_owned),
        params: split(&legacy),
        params_modern: split(&modern),
        mcp_name: name.map(|n| split(&n)),
    })
}

/// The value the modern `Mcp-Name` header must carry for `method`.
fn named_param(method: &str, params: &str) -> Option<String> {
    let member = match method {
        "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return None,
    };
    let mut bytes = params.as_bytes().to_vec();
    let v = simd_json::to_borrowed_value(&mut bytes).ok()?;
    v.get_str(member).map(str::to_owned)
}

fn json_string(s: &str) -> String {
    let mut v = Vec::new();
    json::write_str(&mut v, s);
    String::from_utf8(v).expect("JSON text is UTF-8")
}

/// Writes shape pieces joined by `key`.
pub fn write_pieces(out: &mut Vec<u8>, pieces: &[Vec<u8>], key: &[u8]) {
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(key);
        }
        out.extend_from_slice(p);
    }
}

/// A small, fast PRNG (xorshift64*); loadgen only needs spread, not quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_files_parse_weights_tools_and_keys() {
        let w = Workload::from_mix(
            "# comment\n80 tools/call echo {\"text\":\"hi\"}\n\n15 tools/call kv_get {\"key\":\"{key}\"}\n5 ping -\n",
        )
        .unwrap();
        assert_eq!(w.shapes.len(), 3);
        assert!(w.uses_keys());
        assert!(!w.shapes[0].uses_key());
        let mut out = Vec::new();
        write_pieces(&mut out, &w.shapes[1].params, b"k1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#","method":"tools/call","params":{"name":"kv_get","arguments":{"key":"k1"}}"#
        );
        let picks: Vec<&str> = (0..100u64).map(|r| w.pick(r).method.as_str()).collect();
        assert_eq!(picks.iter().filter(|m| **m == "ping").count(), 5);
        assert!(Workload::from_mix("0 ping").is_err());
        assert!(Workload::from_mix("1 tools/call").is_err());
        assert!(Workload::from_mix("1 tools/call echo [1]").is_err());
    }

    #[test]
    fn modern_shapes_carry_meta_and_the_name_header() {
        let w = Workload::single("resources/read", "", None, Some(r#"{"uri":"kv://a"}"#)).unwrap();
        let s = &w.shapes[0];
        let mut out = Vec::new();
        write_pieces(&mut out, &s.params_modern, b"");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(r#","method":"resources/read","params":{"uri":"kv://a","_meta":"#),
            "{text}"
        );
        assert_eq!(s.mcp_name.as_ref().unwrap()[0], b"kv://a");
        let p = Workload::single("ping", "", None, None).unwrap();
        let mut out = Vec::new();
        write_pieces(&mut out, &p.shapes[0].params, b"");
        assert_eq!(out, br#","method":"ping""#);
    }
}
