//! The audit log (`--audit-log FILE`): one JSON line per request (time,
//! shard, principal, session, method, name, outcome, JSON-RPC error code,
//! latency_us), so an operator can answer "who called what, and was it
//! allowed".
//!
//! A shard never writes the file: it appends lines to its own buffer
//! (bounded by `--audit-buffer-bytes`) and hands full buffers, or whatever it
//! has every [`FLUSH_INTERVAL_MS`], to one writer thread over a bounded
//! channel ([`QUEUE_BATCHES_PER_SHARD`] batches per shard). When the writer
//! falls behind (a slow disk) the queue fills, the shard's buffer fills, and
//! further lines are dropped and counted (`audit_dropped`) rather than
//! slowing requests. The writer rotates the file by size: FILE -> FILE.1 ->
//! ... -> FILE.<keep>, the oldest removed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::protocol::json;

/// How often a shard hands its buffered lines to the writer.
pub const FLUSH_INTERVAL_MS: u64 = 100;
/// A shard hands its buffer over as soon as it holds this much.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Batches each shard may have queued for the writer.
pub const QUEUE_BATCHES_PER_SHARD: usize = 16;

/// `--audit-log*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (FILE.1 .. FILE.keep).
    pub keep: u32,
    /// Lines a shard may hold before the writer takes them; beyond it
    /// lines are dropped and counted.
    pub buffer_bytes: usize,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes < 4096 {
            return Err("--audit-log-max-bytes must be at least 4096".into());
        }
        if self.buffer_bytes < 4096 {
            return Err("--audit-buffer-bytes must be at least 4096".into());
        }
        Ok(())
    }
}

/// The writer thread; joining it waits until every queued line is written.
pub struct AuditWriter {
    join: Option<JoinHandle<()>>,
}

impl AuditWriter {
    /// Opens (appends to) the file and starts the writer. Errors name the
    /// file, so a bad path stops startup rather than losing the log.
    pub fn start(cfg: &AuditConfig, shards: usize) -> Result<(Self, Sender<Vec<u8>>), String> {
        let file = open(&cfg.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = bounded(QUEUE_BATCHES_PER_SHARD * shards.max(1));
        let cfg = cfg.clone();
        let join = std::thread::Builder::new()
            .name("tessera-audit".into())
            .spawn(move || write_loop(cfg, file, size, rx))
            .map_err(|e| format!("starting the audit writer: {e}"))?;
        Ok((Self { join: Some(join) }, tx))
    }

    /// Waits for the writer to drain (every sender must be gone).
    pub fn finish(mut self) {
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }

    /// [`finish`](Self::finish), giving up after `limit`.
    pub fn finish_within(mut self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        if let Some(j) = self.join.take() {
            while !j.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if j.is_finished() {
                let _ = j.join();
            }
        }
    }
}

/// Hands a shard's lines to the writer every [`FLUSH_INTERVAL_MS`].
pub async fn flush_loop(shard: std::rc::Rc<crate::runtime::shard::Shard>) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(FLUSH_INTERVAL_MS)).await;
        if let Some(b) = shard.audit.borrow_mut().as_mut() {
            b.flush();
        }
        if shard.shutdown.is_raised() {
            return;
        }
    }
}

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--audit-log {}: {e}", path.display()))
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(cfg: &AuditConfig) -> std::io::Result<()> {
    if cfg.keep == 0 {
        return std::fs::remove_file(&cfg.path);
    }
    let _ = std::fs::remove_file(rotated(&cfg.path, cfg.keep));
    for n in (1..cfg.keep).rev() {
        let from = rotated(&cfg.path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(&cfg.path, n + 1))?;
        }
    }
    std::fs::rename(&cfg.path, rotated(&cfg.path, 1))
}

fn write_loop(cfg: AuditConfig, mut file: File, mut size: u64, rx: Receiver<Vec<u8>>) {
    for batch in rx {
        if size > 0 && size + batch.len() as u64 > cfg.max_bytes {
            match rotate(&cfg).and_then(|_| open(&cfg.path).map_err(std::io::Error::other)) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => log::error!("audit log rotation failed: {e}; still appending"),
            }
        }
        match file.write_all(&batch) {
            Ok(()) => size += batch.len() as u64,
            Err(e) => log::error!("audit log write failed: {e}; {} bytes lost", batch.len()),
        }
    }
    let _ = file.flush();
}

/// One shard's buffered lines.
pub struct AuditBuffer {
    buf: Vec<u8>,
    max_bytes: usize,
    tx: Sender<Vec<u8>>,
    shard: usize,
    /// The last timestamp formatted, and its text: lines within the same
    /// millisecond reuse it.
    clock: (u64, String),
}

/// What one audit line says.
pub struct AuditRecord<'a> {
    pub principal: Option<&'a str>,
    pub session: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
    pub outcome: &'a str,
    pub code: Option<i64>,
    pub latency_us: u64,
}

impl AuditBuffer {
    pub fn new(tx: Sender<Vec<u8>>, max_bytes: usize, shard: usize) -> Self {
        Self {
            buf: Vec::with_capacity(FLUSH_BYTES),
            max_bytes,
            tx,
            shard,
            clock: (u64::MAX, String::new()),
        }
    }

    /// Appends one line; false if it was dropped (the buffer is full).
    pub fn record(&mut self, r: &AuditRecord<'_>) -> bool {
        let mark = self.buf.len();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if self.clock.0 != now_ms {
            self.clock = (now_ms, super::tasks::iso8601(now_ms));
        }
        let out = &mut self.buf;
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(self.clock.1.as_bytes());
        out.extend_from_slice(b"\",\"shard\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.shard).as_bytes());
        for (key, value) in [
            ("principal", r.principal),
            ("session", r.session),
            ("method", r.method),
            ("name", r.name),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Some(v) => json::write_str(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"outcome\":");
        json::write_str(out, r.outcome);
        if let Some(code) = r.code {
            out.extend_from_slice(b",\"code\":");
            out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
        }
        out.extend_from_slice(b",\"latency_us\":");
        out.extend_from_slice(itoa::Buffer::new().format(r.latency_us).as_bytes());
        out.extend_from_slice(b"}\n");
        if self.buf.len() > self.max_bytes {
            // Try to make room before giving the line up.
            self.buf.truncate(mark);
            self.flush();
            if !self.buf.is_empty() {
                return false;
            }
            return self.record(r);
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        }
        true
    }

    /// Hands the buffered lines to the writer if its queue has room.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_BYTES));
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => self.buf = b,
        }
    }
}

impl Drop for AuditBuffer {
    fn drop(&mut self) {
        // The shard is going away: its last lines wait a little for room.
        if !self.buf.is_empty() {
            let batch = std::mem::take(&mut self.buf);
            let _ = self
                .tx
                .send_timeout(batch, std::time::Duration::from_secs(1));
        }
    }
}

/// The outcome and JSON-RPC error code of an encoded response: "ok", or
/// "denied" (-31013), "unauthorized" (-31014), "error" (anything else).
pub fn outcome_of(response: &[u8]) -> (&'static str, Option<i64>) {
    // Inside JSON strings quotes are escaped, so the first of these byte
    // sequences is the response's own member.
    let result = memchr::memmem::find(response, b"\"result\":");
    let Some(e) = memchr::memmem::find(response, b"\"error\":") else {
        return ("ok", None);
    };
    if result.is_some_and(|r| r < e) {
        return ("ok", None);
    }
    let code = memchr::memmem::find(&response[e..], b"\"code\":").and_then(|c| {
        let rest = &response[e + c + 7..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'-'))
            .unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok()?.parse::<i64>().ok()
    });
    let outcome = match code {
        Some(-31013) => "denied",
        Some(-31014) => "unauthorized",
        _ => "error",
    };
    (outcome, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome_of(br#"{"jsonrpc":"2.0","id":"\"error\":","result":{}}"#),
            ("ok", None)
        );
        assert_eq!(
            outcome_of(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-31013,"message":"x"}}"#),
            ("denied", Some(-31013))
        );
        assert_eq!(
            outcome_of(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#),
            ("error", Some(-32601))
        );
    }

    #[test]
    fn lines_past_the_buffer_are_dropped_while_the_writer_is_behind() {
        let (tx, rx) = bounded(1);
        let mut b = AuditBuffer::new(tx, 4096, 3);
        let rec = AuditRecord {
            principal: None,
            session: Some("tcp-3-1"),
            method: Some("ping"),
            name: None,
            outcome: "ok",
            code: None,
            latency_us: 1,
        };
        let mut kept = 0;
        let mut dropped = 0;
        for _ in 0..400 {
            if b.record(&rec) {
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        // One batch went to the (stalled) queue, one buffer-full stayed.
        assert!(kept > 0 && dropped > 0, "{kept} {dropped}");
        let batch = rx.try_recv().unwrap();
        assert!(batch.len() <= 4096);
        assert!(b.buf.len() <= 4096);
        // Once the writer catches up, lines are taken again.
        assert!(b.record(&rec));
    }

    #[test]
    fn a_full_buffer_drops_and_the_writer_rotates() {
        let dir = std::env::temp_dir().join(format!("tessera-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = AuditConfig {
            path: dir.join("audit.log"),
            max_bytes: 4096,
            keep: 2,
            buffer_bytes: 4096,
        };
        let (writer, tx) = AuditWriter::start(&cfg, 1).unwrap();
        let mut b = AuditBuffer::new(tx, cfg.buffer_bytes, 0);
        let rec = AuditRecord {
            principal: Some("alice"),
            session: None,
            method: Some("tools/call"),
            name: Some("echo"),
            outcome: "ok",
            code: None,
            latency_us: 12,
        };
        for _ in 0..200 {
            b.record(&rec);
            b.flush();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(b);
        writer.finish();
        let current = std::fs::read_to_string(&cfg.path).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(first["principal"], "alice");
        assert_eq!(first["latency_us"], 12);
        assert!(current.len() <= 4096);
        assert!(rotated(&cfg.path, 1).exists() && rotated(&cfg.path, 2).exists());
        assert!(!rotated(&cfg.path, 3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
