//! `tessera serve --config FILE` and `tessera check-config FILE` with the
//! real binary: keys take effect, the command line overrides them, errors
//! name the line and the key, and the shipped example covers every flag.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tessera(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tessera_bin())
        .args(args)
        .output()
        .expect("run tessera");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True when the server closes a new connection at once (the cap is hit).
fn refused(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n");
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn file_keys_take_effect_and_flags_override_them() {
    let path = write_config(
        "limits.toml",
        "# one connection per shard\nmax_connections_per_shard = 1\ncores = \"0\"\n",
    );
    let p = path.to_str().unwrap();

    let server = Server::start(&["--config", p]);
    assert!(
        server.stderr().contains("configuration from"),
        "{}",
        server.stderr()
    );
    let mut a = server.connect();
    a.initialize();
    assert!(refused(server.addr()), "the file's cap of 1 applies");
    assert_eq!(a.request("ping", Value::Null)["result"], json!({}));
    drop(server);

    let server = Server::start(&["--config", p, "--max-connections-per-shard", "2"]);
    let mut a = server.connect();
    a.initialize();
    let mut b = server.connect();
    b.initialize();
    assert_eq!(b.request("ping", Value::Null)["result"], json!({}));
    assert!(
        refused(server.addr()),
        "the command line's cap of 2 applies"
    );
}

#[test]
fn bad_files_are_refused_with_the_line_and_the_key() {
    let path = write_config(
        "bad.toml",
        "cores = \"0\"\n\nmax_restart = 3\nmax_message_bytes = \"lots\"\nstdio = \"yes\"\n[tool]\nname = \"x\"\n",
    );
    let p = path.to_str().unwrap();
    for args in [vec!["serve", "--config", p], vec!["check-config", p]] {
        let (code, _, err) = tessera(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        for want in [
            format!("{p}:3: key `max_restart`: unknown key; did you mean `max_restarts`?"),
            format!("{p}:4: key `max_message_bytes`: invalid value 'lots'"),
            format!("{p}:5: key `stdio`: expected true or false, found a string"),
            format!("{p}:6: key `tool`: write [[tool]] tables (one per tool), not a table"),
        ] {
            assert!(err.contains(&want), "{args:?}: missing {want:?} in\n{err}");
        }
        assert!(!err.contains("listening on"), "{err}");
    }

    // Syntax errors name the line too.
    let path = write_config("syntax.toml", "cores = \"0\"\npage_size = = 3\n");
    let (code, _, err) = tessera(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{}:2:", path.display())), "{err}");

    // Values that parse but fail the server's own checks still point at the line.
    let path = write_config("range.toml", "cores = \"0\"\n\nchaos_panic_rate = 1.5\n");
    let (code, _, err) = tessera(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{}:3: key `chaos_panic_rate`:", path.display())),
        "{err}"
    );

    let (code, _, err) = tessera(&["check-config", "/nonexistent/tessera.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/tessera.toml"), "{err}");
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tessera.example.toml")
}

#[test]
fn the_example_documents_every_flag_and_checks_clean() {
    let text = std::fs::read_to_string(example()).unwrap();
    let (code, help, _) = tessera(&["serve", "--help"]);
    assert_eq!(code, 0);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|f| !f.is_empty() && !["help", "config"].contains(f))
        .map(|f| f.replace('-', "_"))
        .collect();
    assert!(flags.len() > 40, "{flags:?}");
    for key in &flags {
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches("# ");
            l.starts_with(&format!("{key} = "))
        });
        assert!(documented, "tessera.example.toml has no `{key} = ` line");
    }

    let (code, out, err) = tessera(&["check-config", example().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");

    // Every example value is valid for its flag: uncomment all of them (on
    // one core of this machine, without chaos or fixtures).
    let all: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv)
                if kv
                    .split(" = ")
                    .next()
                    .is_some_and(|k| flags.iter().any(|f| f == k)) =>
            {
                kv.to_string()
            }
            _ => l.to_string(),
        })
        // Chaos, fixtures, auth, the store key and TLS (their token, key and
        // certificate files are this host's) stay off.
        .filter(|l| {
            ![
                "chaos_kill_shard_every",
                "fixtures",
                "auth =",
                "auth_tokens",
                "jwt_secret_file",
                "jwt_public_key",
                "jwt_jwks",
                "cluster =",
                "cluster_secret_file",
                "cluster_password_file",
                "store_key_file",
                "tls_",
                "admin_tls_",
                "auth_cert_principals",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| {
            if l.starts_with("cores = ") {
                "cores = \"0\"".to_string()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = write_config("all.toml", &all);
    let (code, out, err) = tessera(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{all}\n{out}{err}");
}
