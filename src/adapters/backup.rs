//! Backups of `--data-dir` (`tessera backup`, `tessera restore`): every
//! shard's sessions, SSE events and tasks copied from a redb read
//! transaction, gzip-compressed, with a manifest of shards, counts and
//! SHA-256 digests; and restored into a new directory after the digests
//! check.
//!
//! Why consistent while serving: a redb read transaction is a snapshot of
//! the last committed write transaction and does not stop the shard's
//! writer, so each shard's copy is exactly one state of its file (what the
//! shard still buffers, at most `FLUSH_MS` of operations, is not in it). Shards
//! share nothing in the store, so a copy per shard is a consistent whole. A
//! running server holds its files, so the live backup is taken by the server
//! itself (the control socket's `backup` command, on a thread of its own);
//! `tessera backup --data-dir` opens stopped files directly.
//!
//! Values are copied as stored: with `--store-key-file` they are sealed,
//! and so is the backup (`sealed` in the manifest); record keys (session
//! and task ids, server-made) stay readable.
//!
//! A backup is a directory `backup-<unix ms>` under the destination,
//! written as `.partial-…` and renamed when complete; `--keep N` then
//! removes the oldest beyond N.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{file_of, SESSIONS, TABLES};

/// What the manifest's `format` says; restore refuses anything else.
pub const FORMAT: &str = "tessera-backup-1";
/// A key or value longer than this in a dump is a corrupt dump.
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    pub tessera_version: String,
    pub created_unix_ms: u64,
    pub shards: usize,
    /// Values were sealed with `--store-key-file` keys.
    pub sealed: bool,
    pub files: Vec<ShardFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardFile {
    pub shard: usize,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub sessions: u64,
    pub events: u64,
    pub tasks: u64,
}

fn io(what: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", what.display())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes one shard's snapshot to `path`: per record a table index byte,
/// then the key and the value, each preceded by its length (u32 LE), all
/// gzip-compressed. Returns the counts per table.
fn dump(db: &Database, path: &Path) -> Result<[u64; 3], String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
    let mut counts = [0u64; 3];
    for (i, table) in TABLES.iter().enumerate() {
        let t = txn.open_table(*table).map_err(|e| e.to_string())?;
        for row in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let (k, v) = (k.value().as_bytes(), v.value());
            gz.write_all(&[i as u8]).map_err(|e| io(path, e))?;
            for part in [k, v] {
                gz.write_all(&(part.len() as u32).to_le_bytes())
                    .map_err(|e| io(path, e))?;
                gz.write_all(part).map_err(|e| io(path, e))?;
            }
            counts[i] += 1;
        }
    }
    let out = gz.finish().map_err(|e| io(path, e))?;
    let file = out.into_inner().map_err(|e| io(path, e.error()))?;
    file.sync_all().map_err(|e| io(path, e))?;
    Ok(counts)
}

fn sha256_of(path: &Path) -> Result<(u64, String), String> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&h.finalize())))
}

/// A backup of `dbs` (shard i is `dbs[i]`) under `dest`; then at most
/// `keep` backups are left there. Returns the new backup's directory and
/// manifest.
pub fn backup(
    dbs: &[Arc<Database>],
    dest: &Path,
    keep: Option<usize>,
    sealed: bool,
) -> Result<(PathBuf, Manifest), String> {
    assert!(!dbs.is_empty(), "a store has at least one shard");
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let name = format!("backup-{now_ms:013}");
    let partial = dest.join(format!(".partial-{name}"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir(&partial).map_err(|e| io(&partial, e))?;
    let mut files = Vec::with_capacity(dbs.len());
    for (shard, db) in dbs.iter().enumerate() {
        let file = format!("shard-{shard}.dump.gz");
        let path = partial.join(&file);
        let [sessions, events, tasks] = dump(db, &path)?;
        let (bytes, sha256) = sha256_of(&path)?;
        files.push(ShardFile {
            shard,
            file,
            bytes,
            sha256,
            sessions,
            events,
            tasks,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        tessera_version: env!("CARGO_PKG_VERSION").into(),
        created_unix_ms: now_ms,
        shards: dbs.len(),
        sealed,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let mpath = partial.join("manifest.json");
    std::fs::write(&mpath, text).map_err(|e| io(&mpath, e))?;
    let done = dest.join(&name);
    std::fs::rename(&partial, &done).map_err(|e| io(&done, e))?;
    if let Some(keep) = keep {
        prune(dest, keep.max(1))?;
    }
    Ok((done, manifest))
}

/// One line saying what backup `dir` holds.
pub fn describe(dir: &Path, m: &Manifest) -> String {
    let count = |f: fn(&ShardFile) -> u64| m.files.iter().map(f).sum::<u64>();
    format!(
        "backup {}: {} shard(s), {} session(s), {} SSE event(s), {} task(s), {} bytes{}",
        dir.display(),
        m.shards,
        count(|f| f.sessions),
        count(|f| f.events),
        count(|f| f.tasks),
        count(|f| f.bytes),
        if m.sealed { ", values sealed" } else { "" }
    )
}

/// Removes the oldest `backup-*` directories under `dest` beyond `keep`.
fn prune(dest: &Path, keep: usize) -> Result<(), String> {
    let mut names: Vec<String> = std::fs::read_dir(dest)
        .map_err(|e| io(dest, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        let p = dest.join(n);
        std::fs::remove_dir_all(&p).map_err(|e| io(&p, e))?;
        log::info!("backup: removed {} (--keep {keep})", p.display());
    }
    Ok(())
}

/// A backup of a stopped server's `data_dir` (its files opened here).
pub fn backup_offline(
    data_dir: &Path,
    dest: &Path,
    keep: Option<usize>,
) -> Result<(PathBuf, Manifest), String> {
    let mut dbs = Vec::new();
    while file_of(data_dir, dbs.len()).exists() {
        let path = file_of(data_dir, dbs.len());
        let db = Database::open(&path).map_err(|e| {
            io(
                &path,
                format!("{e} (a running server holds its files: give --upgrade-socket to back it up live)"),
            )
        })?;
        dbs.push(Arc::new(db));
    }
    if dbs.is_empty() {
        return Err(format!("{}: no shard files here", data_dir.display()));
    }
    let sealed = any_sealed(&dbs[0]);
    backup(&dbs, dest, keep, sealed)
}

/// Whether the first session record of `db` is sealed (for the manifest of
/// an offline backup, which has no key file to go by).
fn any_sealed(db: &Database) -> bool {
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    let Ok(t) = txn.open_table(SESSIONS) else {
        return false;
    };
    let first = t.iter().ok().and_then(|mut i| i.next());
    matches!(first, Some(Ok((_, v))) if super::seal::is_sealed(v.value()))
}

/// Checks `from`'s manifest and digests, then writes its shard files into
/// `data_dir` (which must hold none). `shards`: the count the operator
/// expects; a backup of another count is refused.
pub fn restore(from: &Path, data_dir: &Path, shards: Option<usize>) -> Result<Manifest, String> {
    let mpath = from.join("manifest.json");
    let text = std::fs::read(&mpath).map_err(|e| io(&mpath, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| io(&mpath, e))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "{}: format {:?}, this tessera reads {FORMAT:?}",
            mpath.display(),
            manifest.format
        ));
    }
    if manifest.files.len() != manifest.shards
        || manifest.files.iter().enumerate().any(|(i, f)| f.shard != i)
    {
        return Err(format!(
            "{}: lists {} file(s) for {} shard(s)",
            mpath.display(),
            manifest.files.len(),
            manifest.shards
        ));
    }
    if let Some(n) = shards {
        if n != manifest.shards {
            return Err(format!(
                "the backup holds {} shard(s) and --shards says {n}: restore it for {} shard(s) (a server with fewer shards folds the extra files in at start; one with more cannot reach sessions it never had)",
                manifest.shards, manifest.shards
            ));
        }
    }
    for f in &manifest.files {
        let p = from.join(&f.file);
        let (bytes, sha) = sha256_of(&p)?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(format!(
                "{}: digest mismatch (the manifest says {} bytes, sha256 {}; the file is {bytes} bytes, sha256 {sha})",
                p.display(),
                f.bytes,
                f.sha256
            ));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    if file_of(data_dir, 0).exists() {
        return Err(format!(
            "{}: already holds shard files; restore into an empty directory",
            data_dir.display()
        ));
    }
    for f in &manifest.files {
        let target = file_of(data_dir, f.shard);
        let partial = target.with_extension("redb.partial");
        let _ = std::fs::remove_file(&partial);
        load_dump(&from.join(&f.file), &partial, f)?;
        std::fs::rename(&partial, &target).map_err(|e| io(&target, e))?;
    }
    Ok(manifest)
}

/// Writes the rows of dump `src` into a new redb file `dst`, checking the
/// counts against the manifest.
fn load_dump(src: &Path, dst: &Path, expect: &ShardFile) -> Result<(), String> {
    let file = std::fs::File::open(src).map_err(|e| io(src, e))?;
    let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let db = Database::create(dst).map_err(|e| io(dst, e))?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let mut counts = [0u64; 3];
    {
        let mut tables: Vec<redb::Table<&str, &[u8]>> = TABLES
            .iter()
            .map(|t| txn.open_table(*t))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        loop {
            let mut tag = [0u8; 1];
            match gz.read(&mut tag).map_err(|e| io(src, e))? {
                0 => break,
                _ if usize::from(tag[0]) < TABLES.len() => {}
                _ => return Err(format!("{}: corrupt (table {})", src.display(), tag[0])),
            }
            let key = read_part(&mut gz, src)?;
            let value = read_part(&mut gz, src)?;
            let key = std::str::from_utf8(&key)
                .map_err(|_| format!("{}: corrupt (a key is not UTF-8)", src.display()))?;
            let i = usize::from(tag[0]);
            tables[i]
                .insert(key, value.as_slice())
                .map_err(|e| e.to_string())?;
            counts[i] += 1;
        }
    }
    if counts != [expect.sessions, expect.events, expect.tasks] {
        return Err(format!(
            "{}: holds {counts:?} records, the manifest says {:?}",
            src.display(),
            [expect.sessions, expect.events, expect.tasks]
        ));
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(())
}

fn read_part(r: &mut impl Read, src: &Path) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| io(src, e))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > RECORD_BYTES_MAX {
        return Err(format!("{}: corrupt (a {len}-byte record)", src.display()));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| io(src, e))?;
    Ok(buf)
}
