//! A real nginx load balancer for the cluster tests: round-robin over the
//! nodes, keep-alive upstream connections, no affinity, no buffering (SSE
//! passes through), on a free loopback port, one process (no master, so
//! killing it leaves nothing behind), stopped when the handle drops.
//! nginx is Debian's (`nginx-light`); when it is missing the harness
//! installs it with apt-get, or uses `TESSERA_NGINX`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The nginx binary, installed on first use when missing.
pub fn nginx_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TESSERA_NGINX") {
            return PathBuf::from(p);
        }
        let bin = PathBuf::from("/usr/sbin/nginx");
        if !bin.exists() {
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "nginx-light"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install() {
                let _ = Command::new("apt-get").args(["update", "-q"]).status();
                assert!(install(), "apt-get install nginx-light failed");
            }
        }
        assert!(bin.exists(), "no nginx at {}", bin.display());
        bin
    })
}

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Balances `upstreams` round-robin behind a free loopback port.
    pub fn start(name: &str, upstreams: &[SocketAddr]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("tessera-nginx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let servers: String = upstreams
                .iter()
                .map(|a| format!("    server {a};\n"))
                .collect();
            let d = dir.display();
            let conf = format!(
                "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 upstream tessera {{\n{servers}    keepalive 32;\n  }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://tessera;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
                 proxy_buffering off;\n      proxy_request_buffering off;\n      proxy_read_timeout 120s;\n\
                 proxy_next_upstream off;\n    }}\n  }}\n}}\n"
            );
            let file = dir.join(format!("nginx-{attempt}.conf"));
            std::fs::write(&file, conf).unwrap();
            let child = Command::new(nginx_bin())
                .args(["-p", &dir.to_string_lossy(), "-c"])
                .arg(&file)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut n = Nginx {
                child,
                addr,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return n;
                }
                if n.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = n.child.kill();
        }
        panic!(
            "nginx did not start; error log:\n{}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
