//! Persistence (`--data-dir`): each shard's legacy HTTP sessions, their
//! SSE event stores and its tasks, in one embedded transactional file per shard
//! (`shard-<i>.redb`; shared-nothing on disk too), so a restart — even after
//! `kill -9` — finds them again. Implements `server::store::Store`.
//!
//! A shard never waits for the disk: it queues operations in its own
//! buffer (at most `--store-pending-ops-max`; past it operations are dropped
//! and counted as `store_dropped`) and hands them every [`FLUSH_MS`] to its
//! writer thread over a bounded queue. The writer applies each batch in one
//! write transaction. `--fsync always` commits every batch durably (redb
//! `Immediate`: synced before the next); `interval` (the default) commits
//! batches without durability (redb `None`) and makes everything durable at
//! least every `--fsync-interval-ms`, so a crash — `kill -9` or a power cut —
//! loses at most that much; `never` commits with redb's `Eventual`
//! durability and never asks for a full sync itself (redb's Linux file
//! backend still syncs data on each such commit). redb's commits are atomic,
//! so a crash never leaves a half-written batch.
//!
//! The files are opened by the main thread once and shared with whichever
//! executor serves the shard, so a shard that is restarted after a crash
//! reloads what it had.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use redb::{Database, Durability, ReadableTable, TableDefinition, TableHandle};

use super::seal::{self, StoreKeys};
use crate::server::store::{Loaded, Op, Store};
use crate::server::trace::{AttrValue, DetachedSpan, SpanOut};

/// Sessions by id: their record (JSON).
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// SSE events by `<session>/<stream:016x>/<seq:016x>`: the encoded frame.
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");

/// Tasks by id: their record (JSON).
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// Every table, in the order backups number them (0, 1, 2).
pub(crate) const TABLES: [TableDefinition<&str, &[u8]>; 3] = [SESSIONS, EVENTS, TASKS];

/// How often a shard hands its operations to its writer.
pub(crate) const FLUSH_MS: u64 = 10;
/// Batches a shard may have queued for its writer.
const QUEUE_BATCHES: usize = 256;

/// When the store's writes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every batch is durable before the next one.
    Always,
    /// Durable at least every --fsync-interval-ms; a crash loses at most that.
    Interval,
    /// redb's Eventual durability; tessera never asks for a full sync.
    Never,
}

/// `--data-dir` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    pub pending_ops_max: usize,
    /// `--store-key-file`: values are sealed before they are written and
    /// opened when read (`adapters::seal`); None writes them plain.
    pub keys: Option<StoreKeys>,
    /// Where `keys` came from: `tessera store rekey --upgrade-socket` reads
    /// it again.
    pub key_file: Option<PathBuf>,
    /// The keys the writers seal with now: `keys` until an online rekey
    /// replaces them (shared by every shard's writer thread and the
    /// supervisor; never touched by an executor).
    pub ring: KeyRing,
}

/// The store keys in use, replaceable while the writers run. Each writer
/// reads them once per batch (a lock taken on the writer thread, never on
/// an executor).
#[derive(Clone, Default)]
pub struct KeyRing(Arc<std::sync::Mutex<Option<Arc<StoreKeys>>>>);

impl KeyRing {
    pub fn new(keys: Option<StoreKeys>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(keys.map(Arc::new))))
    }

    /// The keys now.
    pub fn current(&self) -> Option<Arc<StoreKeys>> {
        self.0
            .lock()
            .expect("the key ring's lock is never held across a panic")
            .clone()
    }

    /// New keys for every batch from now on.
    pub fn replace(&self, keys: StoreKeys) {
        *self
            .0
            .lock()
            .expect("the key ring's lock is never held across a panic") = Some(Arc::new(keys));
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing")
    }
}

/// One ring is equal only to itself (its clones).
impl PartialEq for KeyRing {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeyRing {}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--data-dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("{0}")]
    Db(String),
    #[error("starting the store writer: {0}")]
    Thread(std::io::Error),
}

fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Opens (creating) every shard's file under `dir`, after folding the
/// files of shards this process does not have into the ones it does.
pub(crate) fn open_all(cfg: &StoreConfig, shards: usize) -> Result<Vec<Arc<Database>>, StoreError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|source| StoreError::Dir {
        dir: cfg.dir.clone(),
        source,
    })?;
    fold_orphans(&cfg.dir, shards)?;
    (0..shards)
        .map(|i| {
            let path = file_of(&cfg.dir, i);
            let db = Database::create(&path).map_err(|e| StoreError::File {
                file: path.clone(),
                message: e.to_string(),
            })?;
            // Tables exist from the start, so readers never meet a missing one.
            let txn = db.begin_write().map_err(db_error)?;
            txn.open_table(SESSIONS).map_err(db_error)?;
            txn.open_table(EVENTS).map_err(db_error)?;
            txn.open_table(TASKS).map_err(db_error)?;
            txn.commit().map_err(db_error)?;
            Ok(Arc::new(db))
        })
        .collect()
}

/// Rows of one table, by key.
type Rows = Vec<(String, Vec<u8>)>;

/// Each table with its rows in `l`.
fn by_table(l: &Loaded) -> [(TableDefinition<'static, &'static str, &'static [u8]>, &Rows); 3] {
    [
        (SESSIONS, &l.sessions),
        (EVENTS, &l.events),
        (TASKS, &l.tasks),
    ]
}

/// Each table with its rows in `l`, to fill or filter.
fn by_table_mut(
    l: &mut Loaded,
) -> [(
    TableDefinition<'static, &'static str, &'static [u8]>,
    &mut Rows,
); 3] {
    [
        (SESSIONS, &mut l.sessions),
        (EVENTS, &mut l.events),
        (TASKS, &mut l.tasks),
    ]
}

/// Every record in `db`, as stored (sealed or not).
fn load_raw(db: &Database) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let mut out = Loaded::default();
    for (table, into) in by_table_mut(&mut out) {
        let t = txn.open_table(table).map_err(db_error)?;
        for row in t.iter().map_err(db_error)? {
            let (k, v) = row.map_err(db_error)?;
            into.push((k.value().to_owned(), v.value().to_vec()));
        }
    }
    Ok(out)
}

/// What a shard hands its writer: operations, and the spans of traced
/// requests' writes among them (finished once the batch is committed).
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    traced: Vec<DetachedSpan>,
}

/// One shard's end: buffered operations and the writer thread.
pub(crate) struct ShardStore {
    pending: RefCell<Batch>,
    pending_max: usize,
    tx: Sender<Batch>,
}

/// The writer thread of one shard's file; [`Writer::finish`] waits for it.
pub(crate) struct Writer {
    join: JoinHandle<()>,
}

impl ShardStore {
    /// Starts shard `index`'s writer on `db`.
    /// `spans`: where traced writes' spans go (`--otlp-endpoint`).
    pub fn start(
        cfg: &StoreConfig,
        db: Arc<Database>,
        index: usize,
        spans: Option<SpanOut>,
    ) -> Result<(Self, Writer), StoreError> {
        let (tx, rx) = bounded(QUEUE_BATCHES);
        let policy = cfg.fsync;
        let ring = cfg.ring.clone();
        let interval = Duration::from_millis(cfg.fsync_interval_ms.max(1));
        let join = std::thread::Builder::new()
            .name(format!("tessera-store-{index}"))
            .spawn(move || write_loop(&db, rx, policy, interval, spans, &ring))
            .map_err(StoreError::Thread)?;
        let store = Self {
            pending: RefCell::new(Batch::default()),
            pending_max: cfg.pending_ops_max,
            tx,
        };
        Ok((store, Writer { join }))
    }
}

impl Store for ShardStore {
    fn push(&self, op: Op) -> bool {
        let mut pending = self.pending.borrow_mut();
        if pending.ops.len() >= self.pending_max {
            return false;
        }
        pending.ops.push(op);
        true
    }

    fn push_traced(&self, op: Op, span: DetachedSpan) -> bool {
        let mut pending = self.pending.borrow_mut();
        if pending.ops.len() >= self.pending_max {
            return false;
        }
        pending.ops.push(op);
        pending.traced.push(span);
        true
    }

    fn flush(&self) -> bool {
        let mut pending = self.pending.borrow_mut();
        if pending.ops.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut *pending);
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b)) => {
                *pending = b;
                false
            }
            // The writer is gone: nothing will take these operations.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

impl Writer {
    /// Waits (at most `limit`) for the writer to commit what it was given
    /// and stop; every `ShardStore` feeding it must be gone.
    pub fn finish(self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.join.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.join.is_finished() {
            let _ = self.join.join();
        } else {
            log::warn!("the store writer did not finish within {limit:?}");
        }
    }
}

/// Everything in `db` that reads under `keys`: a value that does not open
/// (sealed with a key not given, altered, or plain while keys are set) is
/// skipped, counted in `unreadable` and logged, never served.
pub(crate) fn load(db: &Database, keys: Option<&StoreKeys>) -> Result<Loaded, StoreError> {
    let mut out = load_raw(db)?;
    let mut unreadable = 0;
    for (table, rows) in by_table_mut(&mut out) {
        let mut first: Option<(String, seal::Unopened)> = None;
        let mut skipped = 0u64;
        rows.retain_mut(
            |(key, value)| match seal::read_value(keys, table.name(), key, value) {
                Ok(plain) => {
                    *value = plain;
                    true
                }
                Err(why) => {
                    skipped += 1;
                    first.get_or_insert_with(|| (key.clone(), why));
                    false
                }
            },
        );
        if let Some((key, why)) = first {
            log::warn!(
                "store: {skipped} record(s) of {} skipped, never served; the first, {key:?}: {why}",
                table.name()
            );
        }
        unreadable += skipped;
    }
    out.unreadable = unreadable;
    Ok(out)
}

/// `value`, the value of record `key` in `table`, as it is written:
/// sealed when there are keys.
fn stored<'a>(
    keys: Option<&StoreKeys>,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    match keys {
        Some(k) => std::borrow::Cow::Owned(k.seal(table.name(), key, value)),
        None => std::borrow::Cow::Borrowed(value),
    }
}

fn apply(
    db: &Database,
    batch: Vec<Op>,
    durability: Durability,
    keys: Option<&StoreKeys>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(durability);
    {
        let mut sessions = txn.open_table(SESSIONS).map_err(db_error)?;
        let mut events = txn.open_table(EVENTS).map_err(db_error)?;
        let mut tasks = txn.open_table(TASKS).map_err(db_error)?;
        for op in batch {
            match op {
                Op::PutSession(id, v) => {
                    let v = stored(keys, SESSIONS, &id, &v);
                    sessions.insert(id.as_str(), &*v).map_err(db_error)?;
                }
                Op::DelSession(id) => {
                    sessions.remove(id.as_str()).map_err(db_error)?;
                    let from = format!("{id}/");
                    let to = format!("{id}0"); // '0' follows '/'
                    events
                        .retain_in(from.as_str()..to.as_str(), |_, _| false)
                        .map_err(db_error)?;
                }
                Op::PutEvent(k, v) => {
                    let v = stored(keys, EVENTS, &k, v.as_ref());
                    events.insert(k.as_str(), &*v).map_err(db_error)?;
                }
                Op::DelEvent(k) => {
                    events.remove(k.as_str()).map_err(db_error)?;
                }
                Op::PutTask(t) => {
                    let v = stored(keys, TASKS, &t.id, &t.record);
                    tasks.insert(t.id.as_str(), &*v).map_err(db_error)?;
                }
                Op::DelTask { id, .. } => {
                    tasks.remove(id.as_str()).map_err(db_error)?;
                }
            }
        }
    }
    txn.commit().map_err(db_error)
}

fn write_loop(
    db: &Database,
    rx: Receiver<Batch>,
    policy: FsyncPolicy,
    interval: Duration,
    spans: Option<SpanOut>,
    ring: &KeyRing,
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let wait = match (policy, unsynced) {
            (FsyncPolicy::Interval, true) => interval.saturating_sub(last_sync.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let batch = match rx.recv_timeout(wait) {
            Ok(mut b) => {
                // Whatever else is queued goes into the same transaction.
                while let Ok(more) = rx.try_recv() {
                    b.ops.extend(more.ops);
                    b.traced.extend(more.traced);
                }
                b
            }
            Err(RecvTimeoutError::Timeout) => Batch::default(),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let sync_now = match policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval => last_sync.elapsed() >= interval,
            FsyncPolicy::Never => false,
        };
        if batch.ops.is_empty() && !(sync_now && unsynced) {
            continue;
        }
        let durability = match (sync_now, policy) {
            (true, _) => Durability::Immediate,
            (false, FsyncPolicy::Never) => Durability::Eventual,
            (false, _) => Durability::None,
        };
        let ops = batch.ops.len();
        let keys = ring.current();
        let written = apply(db, batch.ops, durability, keys.as_deref());
        if let Err(e) = &written {
            log::error!("store: a batch was not written: {e}");
        }
        if let Some(out) = &spans {
            for span in batch.traced {
                let attrs = vec![
                    ("db.system.name", AttrValue::Str("redb".into())),
                    ("tessera.store.batch_ops", AttrValue::Int(ops as i64)),
                    ("tessera.store.durable", AttrValue::Int(i64::from(sync_now))),
                ];
                let error = written.as_ref().err().map(|e| e.to_string());
                let _ = out(span.finish(attrs, error));
            }
        }
        if sync_now {
            last_sync = Instant::now();
            unsynced = false;
        } else {
            unsynced = true;
        }
    }
    if let Err(e) = apply(db, Vec::new(), Durability::Immediate, None) {
        log::error!("store: the final sync failed: {e}");
    }
}

/// The files of shards `shards` and up (a previous process ran more: an
/// upgrade or restart with fewer `--cores`): every row of shard k's file
/// moves into shard `k mod shards`'s file, which owns those ids from now on
/// (`server::placement::owner`), in one transaction, and then the file is
/// removed. Returns how many files were folded.
pub(crate) fn fold_orphans(dir: &Path, shards: usize) -> Result<usize, StoreError> {
    assert!(shards > 0, "a server has at least one shard");
    let mut folded = 0;
    let mut k = shards;
    // Shard files are numbered without gaps; stop at the first missing one.
    while file_of(dir, k).exists() {
        let from_path = file_of(dir, k);
        let into_path = file_of(dir, k % shards);
        let file_error = |file: &Path| {
            let file = file.to_path_buf();
            move |e: redb::DatabaseError| StoreError::File {
                file,
                message: e.to_string(),
            }
        };
        let from = Database::open(&from_path).map_err(file_error(&from_path))?;
        let into = Database::create(&into_path).map_err(file_error(&into_path))?;
        // As stored: a sealed value opens under the same table and key.
        let rows = load_raw(&from)?;
        let moved = rows.sessions.len() + rows.events.len() + rows.tasks.len();
        let txn = into.begin_write().map_err(db_error)?;
        for (table, set) in by_table(&rows) {
            let mut t = txn.open_table(table).map_err(db_error)?;
            for (key, value) in set {
                t.insert(key.as_str(), value.as_slice()).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)?;
        drop((from, into));
        std::fs::remove_file(&from_path).map_err(|source| StoreError::Dir {
            dir: from_path.clone(),
            source,
        })?;
        log::info!(
            "store: folded {} ({moved} row(s)) into {}: this process runs {shards} shard(s)",
            from_path.display(),
            into_path.display()
        );
        folded += 1;
        k += 1;
    }
    Ok(folded)
}

/// What `tessera store rekey` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    pub files: usize,
    /// Records rewritten under the first key (sealed with another listed
    /// key, or plain).
    pub resealed: u64,
    /// Records already sealed with the first key.
    pub current: u64,
    /// Records no listed key opens (another key, or altered): left as they
    /// are, and skipped when a server loads the file.
    pub unreadable: u64,
}

/// Rewrites every record of every shard file in `dir` under the first of
/// `keys`, one write transaction per file (a crash leaves each file wholly
/// before or after). Offline: a running server holds its files, and redb
/// refuses a second opener (a running server rekeys itself: [`rekey_live`]).
pub fn rekey(dir: &Path, keys: &StoreKeys) -> Result<RekeyReport, StoreError> {
    let mut report = RekeyReport::default();
    let mut index = 0;
    while file_of(dir, index).exists() {
        let path = file_of(dir, index);
        let db = Database::open(&path).map_err(|e| StoreError::File {
            file: path.clone(),
            message: format!("{e} (is a server running on this --data-dir? stop it first)"),
        })?;
        rekey_db(&db, keys, &mut report)?;
        index += 1;
    }
    Ok(report)
}

/// A running server's rekey: `ring` takes `keys` (so every batch the
/// writers commit from now on is sealed with the new first key), then every
/// shard's file is rewritten as [`rekey`] does. redb runs one write
/// transaction at a time per file, so the rewrite and the shard's writer
/// take turns. A batch a writer sealed with the old keys just before the
/// switch may commit after the first pass; a second pass rewrites it.
pub(crate) fn rekey_live(
    dbs: &[Arc<Database>],
    ring: &KeyRing,
    keys: StoreKeys,
) -> Result<RekeyReport, StoreError> {
    ring.replace(keys.clone());
    let mut first = RekeyReport::default();
    for db in dbs {
        rekey_db(db, &keys, &mut first)?;
    }
    let mut second = RekeyReport::default();
    for db in dbs {
        rekey_db(db, &keys, &mut second)?;
    }
    Ok(RekeyReport {
        files: dbs.len(),
        resealed: first.resealed + second.resealed,
        current: second.current,
        unreadable: second.unreadable,
    })
}

/// Rewrites `db`'s records that are not sealed with the first of `keys`,
/// in one write transaction, adding to `report`.
fn rekey_db(db: &Database, keys: &StoreKeys, report: &mut RekeyReport) -> Result<(), StoreError> {
    let raw = load_raw(db)?;
    let txn = db.begin_write().map_err(db_error)?;
    for (table, rows) in by_table(&raw) {
        let mut t = txn.open_table(table).map_err(db_error)?;
        for (key, value) in rows {
            let opened = keys.open(table.name(), key, value);
            if opened.is_ok() && keys.sealed_with_first(value) {
                report.current += 1;
                continue;
            }
            let plain = match opened {
                Ok(plain) => plain,
                Err(seal::Unopened::Plain) => value.clone(),
                Err(_) => {
                    report.unreadable += 1;
                    continue;
                }
            };
            let sealed = keys.seal(table.name(), key, &plain);
            t.insert(key.as_str(), sealed.as_slice())
                .map_err(db_error)?;
            report.resealed += 1;
        }
    }
    txn.commit().map_err(db_error)?;
    report.files += 1;
    Ok(())
}

/// Where shard `index`'s file is.
pub(crate) fn file_of(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index}.redb"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::{event_key, parse_event_key};

    #[test]
    fn files_of_shards_gone_are_folded_into_their_new_owners() {
        let dir = std::env::temp_dir().join(format!("tessera-fold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = StoreConfig {
            dir: dir.clone(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 100,
            pending_ops_max: 100,
            keys: None,
            key_file: None,
            ring: KeyRing::default(),
        };
        {
            let dbs = open_all(&cfg, 3).unwrap();
            for (i, db) in dbs.iter().enumerate() {
                let txn = db.begin_write().unwrap();
                txn.open_table(SESSIONS)
                    .unwrap()
                    .insert(format!("000{i}s").as_str(), b"{}".as_slice())
                    .unwrap();
                txn.commit().unwrap();
            }
        }
        let dbs = open_all(&cfg, 2).unwrap();
        assert!(!file_of(&dir, 2).exists());
        let zero = load(&dbs[0], None).unwrap();
        let mut ids: Vec<_> = zero.sessions.iter().map(|(k, _)| k.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["0000s", "0002s"]);
        assert_eq!(load(&dbs[1], None).unwrap().sessions.len(), 1);
        drop(dbs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batches_survive_reopening_and_sessions_take_their_events_along() {
        let dir = std::env::temp_dir().join(format!("tessera-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = StoreConfig {
            dir: dir.clone(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 1000,
            pending_ops_max: 1000,
            keys: None,
            key_file: None,
            ring: KeyRing::default(),
        };
        {
            let dbs = open_all(&cfg, 1).unwrap();
            let (s, writer) = ShardStore::start(&cfg, dbs[0].clone(), 0, None).unwrap();
            assert!(s.push(Op::PutSession("a".into(), b"{}".to_vec())));
            assert!(s.push(Op::PutSession("b".into(), b"{}".to_vec())));
            for seq in 1..=3 {
                s.push(Op::PutEvent(
                    event_key("a", 0, seq),
                    bytes::Bytes::from_static(b"ev"),
                ));
                s.push(Op::PutEvent(
                    event_key("b", 2, seq),
                    bytes::Bytes::from_static(b"ev"),
                ));
            }
            s.push(Op::DelEvent(event_key("a", 0, 1)));
            s.push(Op::DelSession("b".into()));
            assert!(s.flush());
            drop(s);
            writer.finish(Duration::from_secs(10));
        }
        let dbs = open_all(&cfg, 1).unwrap();
        let got = load(&dbs[0], None).unwrap();
        assert_eq!(got.sessions, vec![("a".to_string(), b"{}".to_vec())]);
        let keys: Vec<_> = got
            .events
            .iter()
            .map(|(k, _)| parse_event_key(k).unwrap())
            .collect();
        assert_eq!(keys, vec![("a", 0, 2), ("a", 0, 3)]);
        let bounded = StoreConfig {
            pending_ops_max: 1,
            ..cfg
        };
        let (s, writer) = ShardStore::start(&bounded, dbs[0].clone(), 0, None).unwrap();
        assert!(s.push(Op::DelSession("a".into())));
        assert!(!s.push(Op::DelSession("a".into())), "bounded");
        drop(s);
        writer.finish(Duration::from_secs(10));
        drop(dbs);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sealed_records_read_back_only_under_their_keys_and_the_rest_is_counted() {
        let dir = std::env::temp_dir().join(format!("tessera-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = StoreKeys::parse(&seal::gen_key()).unwrap();
        let cfg = StoreConfig {
            dir: dir.clone(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 1000,
            pending_ops_max: 1000,
            keys: Some(keys.clone()),
            key_file: None,
            ring: KeyRing::new(Some(keys.clone())),
        };
        let dbs = open_all(&cfg, 1).unwrap();
        let (s, writer) = ShardStore::start(&cfg, dbs[0].clone(), 0, None).unwrap();
        s.push(Op::PutSession(
            "a".into(),
            br#"{"who":"visible?"}"#.to_vec(),
        ));
        s.push(Op::PutEvent(
            event_key("a", 0, 1),
            bytes::Bytes::from_static(b"data: visible?"),
        ));
        assert!(s.flush());
        drop(s);
        writer.finish(Duration::from_secs(10));
        let raw = load_raw(&dbs[0]).unwrap();
        assert!(raw.sessions.iter().all(|(_, v)| seal::is_sealed(v)));
        assert!(raw.events.iter().all(|(_, v)| seal::is_sealed(v)));
        let got = load(&dbs[0], Some(&keys)).unwrap();
        assert_eq!(got.sessions[0].1, br#"{"who":"visible?"}"#);
        assert_eq!(got.events[0].1, b"data: visible?");
        assert_eq!(got.unreadable, 0);
        // Without the key, or with another: nothing is served, all counted.
        let none = load(&dbs[0], None).unwrap();
        assert_eq!((none.sessions.len(), none.unreadable), (0, 2));
        let other = StoreKeys::parse(&seal::gen_key()).unwrap();
        assert_eq!(load(&dbs[0], Some(&other)).unwrap().unreadable, 2);
        drop(dbs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
