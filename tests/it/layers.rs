//! The import rules of docs/ARCHITECTURE.md, checked on the source text: a
//! layer imports only from itself and the layers below it, and `server/`
//! does no I/O. Test modules (from `#[cfg(test)]` to the end of a file) are
//! left out: tests may reach anywhere.

use std::fs;
use std::path::{Path, PathBuf};

/// A layer's directory under `src/`, the crate paths it must not import,
/// and text that must not appear in it at all.
struct Rule {
    layer: &'static str,
    forbidden_imports: &'static [&'static str],
    forbidden_text: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        layer: "runtime",
        forbidden_imports: &[
            "protocol",
            "metrics",
            "server",
            "transport",
            "adapters",
            "node",
            "config",
            "api",
            "fixtures",
        ],
        forbidden_text: &[],
    },
    Rule {
        layer: "protocol",
        forbidden_imports: &["server", "transport", "adapters", "node", "metrics"],
        forbidden_text: &[],
    },
    Rule {
        layer: "metrics",
        forbidden_imports: &["server", "transport", "adapters", "node", "protocol"],
        forbidden_text: &[],
    },
    Rule {
        layer: "server",
        forbidden_imports: &["transport", "adapters", "node"],
        forbidden_text: &[
            "std::fs",
            "std::process",
            "std::thread",
            "TcpStream",
            "TcpListener",
            "UnixStream",
            "UdpSocket",
            "glommio::io",
            "glommio::net",
            "libc::",
        ],
    },
    Rule {
        layer: "transport",
        forbidden_imports: &["adapters", "node"],
        forbidden_text: &[],
    },
    Rule {
        layer: "adapters",
        forbidden_imports: &["transport", "node"],
        forbidden_text: &[],
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `layer/` and, where it exists, `layer.rs` beside it.
fn layer_files(src: &Path, layer: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src.join(layer), &mut files);
    let flat = src.join(format!("{layer}.rs"));
    if flat.exists() {
        files.push(flat);
    }
    assert!(!files.is_empty(), "no source for layer {layer}");
    files
}

/// The file's text up to its test module.
fn production_text(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Lines that import `crate::<module>` (as a path, in a `use` or inline).
fn imports_of(text: &str, module: &str) -> Vec<String> {
    let needle = format!("crate::{module}");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| {
            l.match_indices(&needle).any(|(at, _)| {
                let next = l[at + needle.len()..].chars().next();
                !matches!(next, Some(c) if c.is_alphanumeric() || c == '_')
            })
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn every_layer_imports_only_from_below_and_server_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for rule in RULES {
        for file in layer_files(&src, rule.layer) {
            let text = production_text(&file);
            let name = file.strip_prefix(&src).unwrap().display().to_string();
            for module in rule.forbidden_imports {
                for line in imports_of(&text, module) {
                    broken.push(format!("{name}: {} imports {module}: {line}", rule.layer));
                }
            }
            for what in rule.forbidden_text {
                for line in text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//") && l.contains(what))
                {
                    broken.push(format!("{name}: {what} in {}: {}", rule.layer, line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    // The check above is only as good as this matcher.
    assert_eq!(
        imports_of("use crate::server::msg::Msg;", "server").len(),
        1
    );
    assert_eq!(imports_of("    crate::node::start(x)", "node").len(), 1);
    assert!(imports_of("use crate::servers::X;", "server").is_empty());
    assert!(imports_of("// use crate::server::X;", "server").is_empty());
}
