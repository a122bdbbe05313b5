//! `[[resources.dir]]` and `[[prompt]]` from the config file against the
//! real binary: files listed and read (text and binary), traversal and
//! symlinks out of the root refused, size bounds, inotify changes reaching
//! subscribers as `resources/updated` and everyone as `list_changed`, and
//! prompt templates with arguments and completions.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A docs tree, a secret outside it, and a config serving the tree.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let base = scratch(name);
    let root = base.join("docs");
    std::fs::create_dir_all(root.join("guide")).unwrap();
    std::fs::write(root.join("README.md"), "# Docs\n").unwrap();
    std::fs::write(root.join("guide/setup.json"), "{\"steps\":3}").unwrap();
    std::fs::write(
        root.join("logo.png"),
        [0x89u8, b'P', b'N', b'G', 0, 1, 2, 255],
    )
    .unwrap();
    std::fs::write(root.join("big.txt"), "x".repeat(5000)).unwrap();
    std::fs::write(root.join(".env"), "SECRET=1").unwrap();
    std::fs::write(base.join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(base.join("outside.txt"), root.join("escape.txt")).unwrap();
    let prompt = base.join("review.md");
    std::fs::write(
        &prompt,
        "Review this {{language}} code for {{focus}}:\n{{code}}",
    )
    .unwrap();
    let cores = allowed_cores();
    let cores: Vec<String> = cores.iter().take(2).map(|c| c.to_string()).collect();
    let config = base.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            r#"cores = "{cores}"

[[resources.dir]]
root = {root:?}
uri_prefix = "file:///docs/"
max_file_bytes = 4096
mime = {{ png = "image/png" }}

[[prompt]]
name = "review"
title = "Code review"
description = "Review code"
file = {prompt:?}

[[prompt.arguments]]
name = "language"
required = true
completions = ["rust", "ruby", "go"]

[[prompt.arguments]]
name = "focus"

[[prompt.arguments]]
name = "code"
required = true
"#,
            cores = cores.join(","),
            root = root.to_str().unwrap(),
            prompt = prompt.to_str().unwrap(),
        ),
    )
    .unwrap();
    (root, config)
}

fn read(c: &mut Client, uri: &str) -> Value {
    c.request("resources/read", json!({ "uri": uri }))
}

#[test]
fn files_are_listed_and_read_and_nothing_outside_the_root_is() {
    let (_root, config) = setup("read");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    c.initialize();
    let list = c.request("resources/list", json!({}));
    let mut uris: Vec<&str> = list["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .filter(|u| u.starts_with("file:"))
        .collect();
    uris.sort();
    assert_eq!(
        uris,
        vec![
            "file:///docs/README.md",
            "file:///docs/big.txt",
            "file:///docs/guide/setup.json",
            "file:///docs/logo.png"
        ],
        "{list}"
    );
    let md = read(&mut c, "file:///docs/README.md");
    assert_eq!(md["result"]["contents"][0]["text"], "# Docs\n", "{md}");
    assert_eq!(md["result"]["contents"][0]["mimeType"], "text/markdown");
    let js = read(&mut c, "file:///docs/guide/setup.json");
    assert_eq!(js["result"]["contents"][0]["mimeType"], "application/json");
    let png = read(&mut c, "file:///docs/logo.png");
    let blob = png["result"]["contents"][0]["blob"]
        .as_str()
        .expect("a blob");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(blob)
            .unwrap(),
        vec![0x89u8, b'P', b'N', b'G', 0, 1, 2, 255]
    );
    let big = read(&mut c, "file:///docs/big.txt");
    assert!(
        big["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_file_bytes"),
        "{big}"
    );
    for bad in [
        "file:///docs/../outside.txt",
        "file:///docs/%2E%2E/outside.txt",
        "file:///docs/guide/%2E%2E/%2E%2E/outside.txt",
        "file:///docs/escape.txt",
        "file:///docs/.env",
        "file:///docs//etc/passwd",
        "file:///docs/guide",
        "file:///docs/missing.md",
    ] {
        let r = read(&mut c, bad);
        assert!(r["error"].is_object(), "{bad}: {r}");
        assert!(
            !r.to_string().contains("secret") && !r.to_string().contains("SECRET"),
            "{bad}: {r}"
        );
    }
}

/// Reads messages until one satisfies `want`, within the timeout.
fn wait_for(c: &mut Client, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let m = c.recv();
        if want(&m) {
            return m;
        }
    }
    panic!("no {what} within 10 s");
}

#[test]
fn changes_on_disk_reach_subscribers_and_listings() {
    let (root, config) = setup("watch");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    c.initialize();
    let r = c.request(
        "resources/subscribe",
        json!({"uri": "file:///docs/guide/setup.json"}),
    );
    assert!(r["result"].is_object(), "{r}");
    let r = c.request(
        "resources/subscribe",
        json!({"uri": "file:///docs/escape.txt"}),
    );
    assert!(r["error"].is_object(), "not a served file: {r}");

    std::fs::write(root.join("guide/setup.json"), "{\"steps\":4}").unwrap();
    wait_for(&mut c, "resources/updated", |m| {
        m["method"] == "notifications/resources/updated"
            && m["params"]["uri"] == "file:///docs/guide/setup.json"
    });
    let r = read(&mut c, "file:///docs/guide/setup.json");
    assert_eq!(r["result"]["contents"][0]["text"], "{\"steps\":4}");

    std::fs::create_dir_all(root.join("new")).unwrap();
    std::fs::write(root.join("new/notes.txt"), "hello").unwrap();
    wait_for(&mut c, "list_changed", |m| {
        m["method"] == "notifications/resources/list_changed"
    });
    // Let the rescans of every shard settle, then the new file is listed
    // and readable.
    std::thread::sleep(Duration::from_millis(600));
    drain(&mut c);
    let r = read(&mut c, "file:///docs/new/notes.txt");
    assert_eq!(r["result"]["contents"][0]["text"], "hello", "{r}");

    std::fs::remove_file(root.join("guide/setup.json")).unwrap();
    wait_for(&mut c, "resources/updated for a removed file", |m| {
        m["method"] == "notifications/resources/updated"
            && m["params"]["uri"] == "file:///docs/guide/setup.json"
    });
    std::thread::sleep(Duration::from_millis(600));
    drain(&mut c);
    let r = read(&mut c, "file:///docs/guide/setup.json");
    assert!(r["error"].is_object(), "{r}");
}

/// Discards notifications already queued (a short read timeout).
fn drain(c: &mut Client) {
    c.set_read_timeout(Duration::from_millis(200));
    while c.try_recv().is_some() {}
    c.set_read_timeout(IO_TIMEOUT);
}

#[test]
fn prompt_templates_render_their_arguments_and_complete_them() {
    let (_root, config) = setup("prompts");
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    c.initialize();
    let list = c.request("prompts/list", json!({}));
    let review = list["result"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "review")
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(review["title"], "Code review");
    assert_eq!(review["arguments"][0]["name"], "language");
    assert_eq!(review["arguments"][0]["required"], true);
    assert_eq!(review["arguments"][1]["required"], false);
    let got = c.request(
        "prompts/get",
        json!({"name": "review", "arguments": {"language": "rust", "code": "fn main() {}"}}),
    );
    assert_eq!(
        got["result"]["messages"][0]["content"]["text"],
        "Review this rust code for :\nfn main() {}",
        "{got}"
    );
    assert_eq!(got["result"]["messages"][0]["role"], "user");
    let missing = c.request(
        "prompts/get",
        json!({"name": "review", "arguments": {"language": "go"}}),
    );
    assert!(missing["error"].is_object(), "{missing}");
    let done = c.request(
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "review"}, "argument": {"name": "language", "value": "r"}}),
    );
    assert_eq!(
        done["result"]["completion"]["values"],
        json!(["rust", "ruby"]),
        "{done}"
    );
}

#[test]
fn bad_declarations_name_their_line() {
    let base = scratch("bad");
    let template = base.join("t.md");
    std::fs::write(&template, "Hi {{name}}").unwrap();
    let config = base.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "cores = \"0\"\n\n[[resources.dir]]\nroot = \"/nonexistent/dir\"\nuri_prefix = \"file:///x/\"\n\n[[prompt]]\nname = \"hi\"\nfile = {:?}\n",
            template.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(tessera_bin())
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":3: key `resources.dir`") && err.contains("not a directory"),
        "{err}"
    );
    assert!(
        err.contains(":7: key `prompt`") && err.contains("{{name}}"),
        "{err}"
    );
}
