//! Content blocks (tool results, prompt messages) and log levels.
//!
//! Text, the common case, is kept as a string written straight into the
//! response; every other block kind is small and rare, so it is encoded once
//! into JSON text when built.

use std::borrow::Cow;

use super::encode::JsonResult;
use crate::protocol::json;

/// One content block.
#[derive(Debug, Clone)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    /// Any other block, already encoded as a JSON object.
    Json(Cow<'a, str>),
}

fn object(members: &[(&str, Option<&str>)]) -> String {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut first = true;
    for (k, v) in members {
        let Some(v) = v else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        json::write_str(&mut out, k);
        out.push(b':');
        json::write_str(&mut out, v);
    }
    out.push(b'}');
    String::from_utf8(out).expect("JSON is UTF-8")
}

impl Content<'static> {
    /// An image, `data` base64-encoded.
    pub fn image(data_base64: &str, mime_type: &str) -> Self {
        Content::Json(Cow::Owned(object(&[
            ("type", Some("image")),
            ("data", Some(data_base64)),
            ("mimeType", Some(mime_type)),
        ])))
    }

    /// Audio, `data` base64-encoded.
    pub fn audio(data_base64: &str, mime_type: &str) -> Self {
        Content::Json(Cow::Owned(object(&[
            ("type", Some("audio")),
            ("data", Some(data_base64)),
            ("mimeType", Some(mime_type)),
        ])))
    }

    /// An embedded text resource.
    pub fn resource_text(uri: &str, mime_type: Option<&str>, text: &str) -> Self {
        let inner = object(&[
            ("uri", Some(uri)),
            ("mimeType", mime_type),
            ("text", Some(text)),
        ]);
        Content::Json(Cow::Owned(format!(
            "{{\"type\":\"resource\",\"resource\":{inner}}}"
        )))
    }

    /// An embedded binary resource, `blob` base64-encoded.
    pub fn resource_blob(uri: &str, mime_type: Option<&str>, blob_base64: &str) -> Self {
        let inner = object(&[
            ("uri", Some(uri)),
            ("mimeType", mime_type),
            ("blob", Some(blob_base64)),
        ]);
        Content::Json(Cow::Owned(format!(
            "{{\"type\":\"resource\",\"resource\":{inner}}}"
        )))
    }

    /// A link to a resource the client may read.
    pub fn resource_link(
        uri: &str,
        name: &str,
        mime_type: Option<&str>,
        description: Option<&str>,
    ) -> Self {
        Content::Json(Cow::Owned(object(&[
            ("type", Some("resource_link")),
            ("uri", Some(uri)),
            ("name", Some(name)),
            ("mimeType", mime_type),
            ("description", description),
        ])))
    }
}

impl Content<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Content::Text(t) => {
                out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                json::write_str(out, t);
                out.push(b'}');
            }
            Content::Json(j) => out.extend_from_slice(j.as_bytes()),
        }
    }

    pub fn into_owned(self) -> Content<'static> {
        match self {
            Content::Text(t) => Content::Text(Cow::Owned(t.into_owned())),
            Content::Json(j) => Content::Json(Cow::Owned(j.into_owned())),
        }
    }
}

/// A `ReadResourceResult` with one text item: `contents:[{uri, mimeType, text}]`.
pub(crate) fn text_contents(uri: &str, mime_type: &str, text: &str) -> JsonResult {
    one_content(uri, mime_type, "text", text)
}

/// A `ReadResourceResult` with one binary item, `blob` base64-encoded.
pub(crate) fn blob_contents(uri: &str, mime_type: &str, blob_base64: &str) -> JsonResult {
    one_content(uri, mime_type, "blob", blob_base64)
}

fn one_content(uri: &str, mime_type: &str, key: &str, value: &str) -> JsonResult {
    let mut out = Vec::with_capacity(64 + value.len());
    out.extend_from_slice(b"\"contents\":[{\"uri\":");
    json::write_str(&mut out, uri);
    out.extend_from_slice(b",\"mimeType\":");
    json::write_str(&mut out, mime_type);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    json::write_str(&mut out, value);
    out.extend_from_slice(b"}]");
    JsonResult::new(String::from_utf8(out).expect("JSON is UTF-8"))
}

/// RFC 5424 severities, as MCP logging names them, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    pub const ALL: [LogLevel; 8] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Notice,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Alert,
        LogLevel::Emergency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// Base64 (standard alphabet, padded) of a 1x1 red PNG and a short silent
/// WAV, for examples and fixtures that need real media bytes.
pub mod samples {
    pub const PNG_1X1_BASE64: &str =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    pub const WAV_SILENCE_BASE64: &str =
        "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_encode_as_json_objects() {
        for c in [
            Content::Text("a\"b".into()),
            Content::image(samples::PNG_1X1_BASE64, "image/png"),
            Content::audio(samples::WAV_SILENCE_BASE64, "audio/wav"),
            Content::resource_text("test://x", Some("text/plain"), "hi"),
            Content::resource_blob("test://y", None, "AAAA"),
            Content::resource_link("test://z", "z", None, Some("d")),
        ] {
            let mut out = Vec::new();
            c.write(&mut out);
            let v = simd_json::to_owned_value(&mut out.clone()).unwrap();
            use simd_json::prelude::*;
            assert!(v.get("type").is_some(), "{}", String::from_utf8_lossy(&out));
        }
        assert!(LogLevel::Warning > LogLevel::Info);
        assert_eq!(LogLevel::parse("notice"), Some(LogLevel::Notice));
    }
}
