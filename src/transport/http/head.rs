//! A request head as the MCP endpoint reads it: method, target and header
//! fields, in one owned buffer. Both HTTP/1.1 paths build it (the lean path
//! straight from `httparse`'s view of the read buffer, the hyper path from
//! hyper's request parts), so the endpoint's checks are written once and
//! the common path never builds a `HeaderMap` (hashing and allocating every
//! field costs more than the handful of lookups a request needs).

use hyper::Method;

/// Header fields, in arrival order. Names are kept lowercased, so a lookup
/// is a byte comparison; a value that is not visible ASCII (what
/// `HeaderValue::to_str` refuses) is kept as absent, as it read through
/// hyper, so every kept byte is ASCII and a lookup needs no validation.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    /// Every field's lowercased name and visible value, back to back.
    text: String,
    /// Per field: name start, name end (= value start), value end.
    fields: Vec<[u32; 3]>,
}

impl Headers {
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            fields: Vec::with_capacity(fields),
        }
    }

    /// Adds a field; `name` must be an HTTP token (ASCII), as both parsers
    /// guarantee.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        assert!(name.is_ascii(), "header names are tokens");
        let start = self.text.len();
        self.text
            .extend(name.iter().map(|b| char::from(b.to_ascii_lowercase())));
        let mid = self.text.len();
        let visible = value
            .iter()
            .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
        if visible {
            self.text.extend(value.iter().map(|&b| char::from(b)));
        }
        let end = if visible {
            self.text.len()
        } else {
            u32::MAX as usize
        };
        assert!(
            self.text.len() < u32::MAX as usize,
            "a head is bounded far below 4 GiB"
        );
        self.fields.push([start as u32, mid as u32, end as u32]);
    }

    fn field(&self, name: &str) -> Option<&[u32; 3]> {
        debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name}");
        self.fields
            .iter()
            .find(|f| &self.text[f[0] as usize..f[1] as usize] == name)
    }

    /// The first field called `name` (lowercase), trimmed, if its value is
    /// visible ASCII.
    pub fn get(&self, name: &str) -> Option<&str> {
        let f = self.field(name)?;
        if f[2] == u32::MAX {
            return None;
        }
        Some(self.text[f[1] as usize..f[2] as usize].trim())
    }

    /// Whether a field called `name` (lowercase) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    /// From hyper's parsed fields (the fallback path and the fuzz target).
    pub fn from_hyper(h: &hyper::HeaderMap) -> Self {
        let bytes = h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        let mut out = Self::with_capacity(h.len(), bytes);
        for (n, v) in h {
            out.push(n.as_str().as_bytes(), v.as_bytes());
        }
        out
    }
}

/// What the endpoint needs of a request besides its body.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    /// The request target as sent (path and query).
    pub target: String,
    pub headers: Headers,
}

impl Head {
    /// The target's path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn from_hyper(parts: &hyper::http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(String::new, |pq| pq.as_str().to_owned()),
            headers: Headers::from_hyper(&parts.headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_take_the_first_field_and_refuse_invisible_bytes() {
        let mut h = Headers::default();
        h.push(b"Content-Type", b" application/json ");
        h.push(b"X-Dup", b"one");
        h.push(b"x-dup", b"two");
        h.push(b"X-Bin", b"caf\xc3\xa9");
        h.push(b"X-Tab", b"a\tb");
        assert_eq!(h.get("content-type"), Some("application/json"));
        assert_eq!(h.get("x-dup"), Some("one"));
        assert_eq!(h.get("x-bin"), None);
        assert!(h.contains("x-bin"));
        assert_eq!(h.get("x-tab"), Some("a\tb"));
        assert_eq!(h.get("absent"), None);
        assert!(!h.contains("absent"));
    }

    #[test]
    fn the_path_drops_the_query() {
        let head = Head {
            method: Method::GET,
            target: "/mcp?x=1".into(),
            headers: Headers::default(),
        };
        assert_eq!(head.path(), "/mcp");
    }
}
