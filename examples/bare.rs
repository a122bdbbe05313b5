//! The physical-limit baselines for bench/compare.sh: the least a server on
//! the same runtime (one pinned glommio executor, batched reads and writes,
//! TCP_NODELAY) can do per message and still satisfy the loadgen. No JSON
//! parsing and no MCP: each request's `"id":` value is found by a byte scan
//! and a fixed result is written back. Whatever tessera costs above this is
//! the price of actually serving MCP.
//!
//! `bare ndjson ADDR CORE`: one response line per request line.
//! `bare http ADDR CORE`: HTTP/1.1 keep-alive, one JSON response per POST.
//!
//! String ids (the loadgen's `"init"`) get an `initialize`-shaped result so
//! the loadgen's handshake passes; numeric ids get the result the `echo` tool
//! gives the loadgen's and the wrk script's default arguments, so their
//! response checks pass and the bytes on the wire match tessera's.

use std::net::SocketAddr;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::StreamExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use memchr::memmem;

const BUF_BYTES: usize = 64 * 1024;
const ECHO_RESULT: &[u8] = br#"{"content":[{"type":"text","text":"hello"}]}"#;
const INIT_RESULT: &[u8] = br#"{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"bare","version":"0"}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || !(args[1] == "ndjson" || args[1] == "http") {
        eprintln!("usage: bare ndjson|http ADDR CORE");
        std::process::exit(2);
    }
    let http = args[1] == "http";
    let addr: SocketAddr = args[2].parse().expect("ADDR");
    let core: usize = args[3].parse().expect("CORE");
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .spawn(move || async move {
            let listener = TcpListener::bind(addr).expect("bind");
            eprintln!(
                "bare {} listening on {addr}",
                if http { "http" } else { "ndjson" }
            );
            let mut incoming = listener.incoming();
            while let Some(Ok(stream)) = incoming.next().await {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(async move {
                    let _ = serve(stream, http).await;
                })
                .detach();
            }
        })
        .expect("executor")
        .join()
        .expect("join");
}

/// Appends the response to a request whose text (line or body) is `msg`.
fn respond(out: &mut Vec<u8>, msg: &[u8]) -> bool {
    let Some(at) = memmem::find(msg, b"\"id\":") else {
        return false; // a notification: no response
    };
    let rest = &msg[at + 5..];
    let end = rest
        .iter()
        .position(|&b| b == b',' || b == b'}')
        .unwrap_or(rest.len());
    let id = &rest[..end];
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(id);
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(if id.first() == Some(&b'"') {
        INIT_RESULT
    } else {
        ECHO_RESULT
    });
    out.push(b'}');
    true
}

async fn serve(mut s: TcpStream, http: bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF_BYTES];
    let (mut filled, mut out, mut body) = (0usize, Vec::with_capacity(BUF_BYTES), Vec::new());
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        if http {
            while let Some(h) = memmem::find(&buf[start..filled], b"\r\n\r\n") {
                let head = &buf[start..start + h];
                let len = memmem::find(&head.to_ascii_lowercase(), b"content-length:")
                    .map(|i| {
                        head[i + 15..]
                            .iter()
                            .skip_while(|b| **b == b' ')
                            .take_while(|b| b.is_ascii_digit())
                            .fold(0usize, |a, d| a * 10 + (d - b'0') as usize)
                    })
                    .unwrap_or(0);
                let body_at = start + h + 4;
                if filled < body_at + len {
                    break;
                }
                body.clear();
                let status: &[u8] = if respond(&mut body, &buf[body_at..body_at + len]) {
                    b"200 OK"
                } else {
                    b"202 Accepted"
                };
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(status);
                out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(&body);
                start = body_at + len;
            }
        } else {
            while let Some(i) = memchr::memchr(b'\n', &buf[start..filled]) {
                if respond(&mut out, &buf[start..start + i]) {
                    out.push(b'\n');
                }
                start += i + 1;
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}
