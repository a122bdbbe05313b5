//! Tool argument validation against the tool's JSON Schema (2020-12).
//!
//! Most tool schemas are flat objects of typed properties; for those a small
//! validator works directly on the parsed request (no allocation, tens of
//! nanoseconds), which keeps validation off the hot path's budget. A schema
//! using anything beyond that subset (`$ref`, composition, conditionals,
//! nested constraints, formats, ...) is compiled once with the `jsonschema`
//! crate and validated in full. Either way a failure is reported to the model
//! as a tool result with `isError: true`, as the spec asks.

use simd_json::prelude::*;
use simd_json::tape::Value as TapeValue;

use super::tools::ArgError;

/// Keywords that only annotate and never constrain.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "default",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "string" => Ty::String,
            "number" => Ty::Number,
            "integer" => Ty::Integer,
            "boolean" => Ty::Boolean,
            "object" => Ty::Object,
            "array" => Ty::Array,
            "null" => Ty::Null,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Ty::String => "a string",
            Ty::Number => "a number",
            Ty::Integer => "an integer",
            Ty::Boolean => "a boolean",
            Ty::Object => "an object",
            Ty::Array => "an array",
            Ty::Null => "null",
        }
    }

    fn matches(self, v: &TapeValue<'_, '_>) -> bool {
        match self {
            Ty::String => v.is_str(),
            Ty::Number => v.is_number(),
            Ty::Integer => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            Ty::Boolean => v.is_bool(),
            Ty::Object => v.is_object(),
            Ty::Array => v.is_array(),
            Ty::Null => v.is_null(),
        }
    }
}

#[derive(Debug, Default)]
struct Prop {
    name: String,
    types: Vec<Ty>,
    enum_strings: Option<Vec<String>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

/// The flat-object subset, checked directly on the parsed request.
#[derive(Debug)]
pub struct Flat {
    props: Vec<Prop>,
    required: Vec<String>,
    additional_allowed: bool,
}

fn extension_key(k: &str) -> bool {
    k.starts_with("x-")
}

fn compile_prop(name: &str, s: &serde_json::Value) -> Option<Prop> {
    let obj = s.as_object()?;
    let mut p = Prop {
        name: name.to_owned(),
        ..Prop::default()
    };
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                serde_json::Value::String(t) => p.types.push(Ty::parse(t)?),
                serde_json::Value::Array(ts) => {
                    for t in ts {
                        p.types.push(Ty::parse(t.as_str()?)?);
                    }
                }
                _ => return None,
            },
            "enum" => {
                let list = v.as_array()?;
                p.enum_strings = Some(
                    list.iter()
                        .map(|x| x.as_str().map(str::to_owned))
                        .collect::<Option<_>>()?,
                );
            }
            "minimum" => p.minimum = Some(v.as_f64()?),
            "maximum" => p.maximum = Some(v.as_f64()?),
            "exclusiveMinimum" => p.exclusive_minimum = Some(v.as_f64()?),
            "exclusiveMaximum" => p.exclusive_maximum = Some(v.as_f64()?),
            "minLength" => p.min_length = Some(v.as_u64()? as usize),
            "maxLength" => p.max_length = Some(v.as_u64()? as usize),
            k if ANNOTATIONS.contains(&k) || extension_key(k) => {}
            _ => return None,
        }
    }
    Some(p)
}

fn compile_flat(schema: &serde_json::Value) -> Option<Flat> {
    let obj = schema.as_object()?;
    let mut flat = Flat {
        props: Vec::new(),
        required: Vec::new(),
        additional_allowed: true,
    };
    for (k, v) in obj {
        match k.as_str() {
            "type" => {
                if v.as_str()? != "object" {
                    return None;
                }
            }
            "$schema" => {
                if v.as_str()? != "https://json-schema.org/draft/2020-12/schema" {
                    return None;
                }
            }
            "properties" => {
                for (name, ps) in v.as_object()? {
                    flat.props.push(compile_prop(name, ps)?);
                }
            }
            "required" => {
                for r in v.as_array()? {
                    flat.required.push(r.as_str()?.to_owned());
                }
            }
            "additionalProperties" => flat.additional_allowed = v.as_bool()?,
            k if ANNOTATIONS.contains(&k) || extension_key(k) => {}
            _ => return None,
        }
    }
    schema.get("type")?;
    Some(flat)
}

impl Flat {
    fn validate(&self, args: &TapeValue<'_, '_>) -> Result<(), ArgError> {
        if args.is_null() {
            // No `arguments` member: validate as an empty object.
            if let Some(r) = self.required.first() {
                return Err(ArgError(format!("missing required argument `{r}`")));
            }
            return Ok(());
        }
        let Some(obj) = args.as_object() else {
            return Err("arguments must be an object".into());
        };
        for r in &self.required {
            if obj.get(r.as_str()).is_none() {
                return Err(ArgError(format!("missing required argument `{r}`")));
            }
        }
        for (k, v) in obj.iter() {
            let Some(p) = self.props.iter().find(|p| p.name == k) else {
                if self.additional_allowed {
                    continue;
                }
                return Err(ArgError(format!("unknown argument `{k}`")));
            };
            if !p.types.is_empty() && !p.types.iter().any(|t| t.matches(&v)) {
                let names: Vec<&str> = p.types.iter().map(|t| t.name()).collect();
                return Err(ArgError(format!("`{k}` must be {}", names.join(" or "))));
            }
            if let Some(allowed) = &p.enum_strings {
                if !v.as_str().is_some_and(|s| allowed.iter().any(|a| a == s)) {
                    return Err(ArgError(format!("`{k}` must be one of {allowed:?}")));
                }
            }
            if let Some(n) = v.cast_f64() {
                if p.minimum.is_some_and(|m| n < m)
                    || p.maximum.is_some_and(|m| n > m)
                    || p.exclusive_minimum.is_some_and(|m| n <= m)
                    || p.exclusive_maximum.is_some_and(|m| n >= m)
                {
                    return Err(ArgError(format!("`{k}` is out of range")));
                }
            }
            if let Some(s) = v.as_str() {
                let chars = s.chars().count();
                if p.min_length.is_some_and(|m| chars < m)
                    || p.max_length.is_some_and(|m| chars > m)
                {
                    return Err(ArgError(format!("`{k}` has the wrong length")));
                }
            }
        }
        Ok(())
    }
}

/// A tool's input schema, compiled once per shard.
pub enum Validator {
    Flat(Flat),
    Full(Box<jsonschema::Validator>),
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validator::Flat(_) => f.write_str("Validator::Flat"),
            Validator::Full(_) => f.write_str("Validator::Full"),
        }
    }
}

impl Validator {
    /// Compiles `schema_json`; an invalid schema is an error (a tool must not
    /// publish a schema nobody can satisfy).
    pub fn compile(schema_json: &str) -> Result<Validator, ArgError> {
        let schema: serde_json::Value = serde_json::from_str(schema_json)
            .map_err(|e| ArgError(format!("input schema is not JSON: {e}")))?;
        if let Some(flat) = compile_flat(&schema) {
            return Ok(Validator::Flat(flat));
        }
        let full = jsonschema::draft202012::options()
            .build(&schema)
            .map_err(|e| {
                ArgError(format!(
                    "input schema is not a valid JSON Schema 2020-12: {e}"
                ))
            })?;
        Ok(Validator::Full(Box::new(full)))
    }

    #[cfg(test)]
    pub fn is_fast(&self) -> bool {
        matches!(self, Validator::Flat(_))
    }

    /// Checks the arguments (`null` when the request had none).
    pub fn validate(&self, args: &TapeValue<'_, '_>) -> Result<(), ArgError> {
        match self {
            Validator::Flat(f) => f.validate(args),
            Validator::Full(v) => {
                let value = if args.is_null() {
                    serde_json::Value::Object(Default::default())
                } else {
                    to_json_value(*args)
                };
                let errors: Vec<String> = v
                    .iter_errors(&value)
                    .take(3)
                    .map(|e| e.to_string())
                    .collect();
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(ArgError(errors.join("; ")))
                }
            }
        }
    }
}

/// Converts a parsed value into a `serde_json::Value` (for full validation and
/// for typed handlers that deserialize their arguments).
pub fn to_json_value(v: TapeValue<'_, '_>) -> serde_json::Value {
    if let Some(obj) = v.as_object() {
        let mut m = serde_json::Map::with_capacity(obj.len());
        for (k, x) in obj.iter() {
            m.insert(k.to_owned(), to_json_value(x));
        }
        return serde_json::Value::Object(m);
    }
    if let Some(arr) = v.as_array() {
        return serde_json::Value::Array(arr.iter().map(to_json_value).collect());
    }
    if let Some(s) = v.as_str() {
        return serde_json::Value::String(s.to_owned());
    }
    if let Some(b) = v.as_bool() {
        return serde_json::Value::Bool(b);
    }
    if let Some(i) = v.as_i64() {
        return i.into();
    }
    if let Some(u) = v.as_u64() {
        return u.into();
    }
    if let Some(f) = v.as_f64() {
        return serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
    }
    serde_json::Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: &str, args: &str) -> (bool, Result<(), String>) {
        let v = Validator::compile(schema).unwrap();
        let mut bytes = args.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        (v.is_fast(), v.validate(&tape.as_value()).map_err(|e| e.0))
    }

    const FLAT: &str = r#"{"type":"object","properties":{"text":{"type":"string","maxLength":5},"n":{"type":"integer","minimum":0},"c":{"type":"string","enum":["a","b"]}},"required":["text"],"additionalProperties":false}"#;

    #[test]
    fn flat_schemas_validate_on_the_tape() {
        assert_eq!(check(FLAT, r#"{"text":"hi"}"#), (true, Ok(())));
        assert!(check(FLAT, r#"{}"#).1.is_err());
        assert!(check(FLAT, r#"{"text":5}"#).1.is_err());
        assert!(check(FLAT, r#"{"text":"toolong"}"#).1.is_err());
        assert!(check(FLAT, r#"{"text":"a","n":-1}"#).1.is_err());
        assert!(check(FLAT, r#"{"text":"a","n":1.5}"#).1.is_err());
        assert_eq!(check(FLAT, r#"{"text":"a","n":2.0}"#).1, Ok(()));
        assert!(check(FLAT, r#"{"text":"a","c":"z"}"#).1.is_err());
        assert!(check(FLAT, r#"{"text":"a","extra":1}"#).1.is_err());
        assert!(check(FLAT, r#"[1]"#).1.is_err());
    }

    #[test]
    fn rich_schemas_use_the_full_validator() {
        let schema = r##"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","$defs":{"a":{"$anchor":"addr","type":"object","properties":{"city":{"type":"string"}}}},"properties":{"address":{"$ref":"#/$defs/a"},"m":{"type":"string","enum":["phone","email"]},"phone":{"type":"string"},"email":{"type":"string"}},"allOf":[{"anyOf":[{"required":["phone"]},{"required":["email"]}]}],"if":{"properties":{"m":{"const":"phone"}},"required":["m"]},"then":{"required":["phone"]},"else":{"required":["email"]},"additionalProperties":false}"##;
        let (fast, ok) = check(schema, r#"{"m":"phone","phone":"1"}"#);
        assert!(!fast);
        assert_eq!(ok, Ok(()));
        assert!(check(schema, r#"{"m":"phone","email":"x"}"#).1.is_err());
        assert!(check(schema, r#"{"address":{"city":5},"email":"x"}"#)
            .1
            .is_err());
        assert!(
            Validator::compile(r#"{"type":"object","properties":{"a":{"type":"nonsense"}}}"#)
                .is_err()
        );
    }
}
