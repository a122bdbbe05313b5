//! Where audit lines go (`--audit-log FILE`): each shard appends to its own
//! bounded buffer ([`AuditBuffer`], the `server::audit::AuditSink` of that
//! shard) and hands full buffers, or whatever it has every
//! [`FLUSH_INTERVAL_MS`], to one writer thread over a bounded channel
//! ([`QUEUE_BATCHES_PER_SHARD`] batches per shard). When the writer falls
//! behind (a slow disk) the queue fills, the shard's buffer fills, and
//! further lines are dropped and counted (`audit_dropped`) rather than
//! slowing requests. The writer owns the file and rotates it by size:
//! FILE -> FILE.1 -> ... -> FILE.<keep>, the oldest removed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::server::audit::{AuditRecord, AuditSink, LineWriter};

/// How often a shard hands its buffered lines to the writer.
pub(crate) const FLUSH_INTERVAL_MS: u64 = 100;
/// A shard hands its buffer over as soon as it holds this much.
const FLUSH_BYTES: usize = 64 * 1024;
/// Batches each shard may have queued for the writer.
const QUEUE_BATCHES_PER_SHARD: usize = 16;

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

/// Why the audit log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("--{flag} must be at least 4096")]
    TooSmall { flag: &'static str },
    #[error("--audit-log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the audit writer: {0}")]
    Thread(std::io::Error),
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), AuditError> {
        if self.max_bytes < 4096 {
            return Err(AuditError::TooSmall {
                flag: "audit-log-max-bytes",
            });
        }
        if self.buffer_bytes < 4096 {
            return Err(AuditError::TooSmall {
                flag: "audit-buffer-bytes",
            });
        }
        Ok(())
    }
}

/// The writer thread; finishing it waits until every queued line is written.
pub(crate) struct AuditWriter {
    join: JoinHandle<()>,
}

impl AuditWriter {
    /// Opens (appends to) the file and starts the writer. Errors name the
    /// file, so a bad path stops startup rather than losing the log.
    pub fn start(cfg: &AuditConfig, shards: usize) -> Result<(Self, Sender<Vec<u8>>), AuditError> {
        let file = open(&cfg.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = bounded(QUEUE_BATCHES_PER_SHARD * shards.max(1));
        let cfg = cfg.clone();
        let join = std::thread::Builder::new()
            .name("tessera-audit".into())
            .spawn(move || write_loop(cfg, file, size, rx))
            .map_err(AuditError::Thread)?;
        Ok((Self { join }, tx))
    }

    /// Waits (at most `limit`) for the writer to drain; every sender must be
    /// gone for it to finish.
    pub fn finish_within(self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.join.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.join.is_finished() {
            let _ = self.join.join();
        }
    }
}

fn open(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
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
pub(crate) struct AuditBuffer {
    buf: Vec<u8>,
    max_bytes: usize,
    tx: Sender<Vec<u8>>,
    lines: LineWriter,
}

impl AuditBuffer {
    pub fn new(tx: Sender<Vec<u8>>, max_bytes: usize, shard: usize) -> Self {
        Self {
            buf: Vec::with_capacity(FLUSH_BYTES),
            max_bytes,
            tx,
            lines: LineWriter::new(shard),
        }
    }
}

impl AuditSink for AuditBuffer {
    fn record(&mut self, r: &AuditRecord<'_>) -> bool {
        let mark = self.buf.len();
        self.lines.write(&mut self.buf, r);
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

    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_BYTES));
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b)) => {
                self.buf = b;
                false
            }
            // The writer is gone: nothing will take these lines.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AuditRecord<'static> {
        AuditRecord {
            principal: Some("alice"),
            session: Some("tcp-3-1"),
            method: Some("tools/call"),
            name: Some("echo"),
            error: None,
            unauthorized: false,
            latency_us: 12,
        }
    }

    #[test]
    fn lines_past_the_buffer_are_dropped_while_the_writer_is_behind() {
        let (tx, rx) = bounded(1);
        let mut b = AuditBuffer::new(tx, 4096, 3);
        let (mut kept, mut dropped) = (0, 0);
        for _ in 0..400 {
            if b.record(&rec()) {
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
        assert!(b.record(&rec()));
    }

    #[test]
    fn the_writer_rotates() {
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
        for _ in 0..200 {
            b.record(&rec());
            b.flush();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(b.flush());
        drop(b);
        writer.finish_within(Duration::from_secs(10));
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
