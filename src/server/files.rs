//! File resources from the config file (`[[resources.dir]]`): every regular
//! file under `root` is a resource `<uri_prefix><relative path>`, listed by
//! `resources/list`, read by `resources/read`, and watched with inotify so
//! subscribers hear `resources/updated` and everyone `list_changed`.
//!
//! Each shard owns its own copy of every directory's index and its own
//! inotify instance (shared-nothing: no shard waits for another to learn of
//! a change). A change is reported to subscribers only by the URI's watch
//! owner, so every subscriber hears it once; list changes go to each shard's
//! own sessions.
//!
//! Safety: a URI is decoded, refused if any segment is empty, `.`, `..` or
//! starts with a dot, then resolved with symlinks followed and refused unless
//! the real path is still under the real root. Reads are bounded
//! (`max_file_bytes`) and done with io_uring (glommio), never blocking the
//! executor. Listing and rescans touch only metadata and are bounded by
//! `max_files`; dotfiles and dot-directories are never served.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use base64::Engine;

use super::registry::{JsonReply, ResourceDescriptor};
use super::resources::{blob_contents, not_found, text_contents};
use super::tools::{CallError, RpcError};
use super::Era;
use crate::runtime::shard::Shard;

/// How often each shard looks at its inotify queue.
pub const WATCH_POLL_MS: u64 = 200;
/// Deepest directory nesting scanned under a root.
pub const DEPTH_MAX: usize = 32;
/// Bytes of inotify events read per poll (the kernel queues the rest, or
/// reports an overflow, which triggers a full rescan anyway).
const EVENT_BUFFER_BYTES: usize = 64 * 1024;

fn default_max_file_bytes() -> u64 {
    1024 * 1024
}
fn default_max_files() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}

/// One `[[resources.dir]]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirConfig {
    /// The directory served (absolute).
    pub root: PathBuf,
    /// URIs are this prefix plus the file's path under root, e.g.
    /// `file:///docs/` or `docs://`.
    pub uri_prefix: String,
    /// MIME types by file extension, over the built-in table
    /// (`{ "log" = "text/plain" }`).
    #[serde(default)]
    pub mime: BTreeMap<String, String>,
    /// Larger files are listed but a read is refused.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Files listed at most (beyond: not served, logged).
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// Follow changes on disk (inotify).
    #[serde(default = "default_true")]
    pub watch: bool,
}

impl FileDirConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.root.is_absolute() {
            return Err(format!("root {:?} must be an absolute path", self.root));
        }
        if !self.root.is_dir() {
            return Err(format!("root {:?} is not a directory", self.root));
        }
        if !self.uri_prefix.contains(':') || self.uri_prefix.contains(['{', '}', ' ']) {
            return Err(format!(
                "uri_prefix {:?} must be a URI prefix such as \"file:///docs/\"",
                self.uri_prefix
            ));
        }
        if self.max_file_bytes == 0 || self.max_files == 0 {
            return Err("max_file_bytes and max_files must be greater than zero".into());
        }
        Ok(())
    }
}

/// The MIME type of `path` by extension.
pub fn mime_of(path: &str, overrides: &BTreeMap<String, String>) -> String {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if let Some(m) = overrides.get(&ext) {
        return m.clone();
    }
    match ext.as_str() {
        "txt" | "text" | "log" | "cfg" | "conf" | "ini" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "toml" => "application/toml",
        "yaml" | "yml" => "application/yaml",
        "xml" => "application/xml",
        "rs" => "text/x-rust",
        "py" => "text/x-python",
        "c" | "h" => "text/x-c",
        "sh" => "text/x-shellscript",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
    .to_owned()
}

/// Whether a read of this MIME type is answered as text (when the bytes are
/// UTF-8) rather than base64.
fn is_textual(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json" | "application/toml" | "application/yaml" | "application/xml"
        )
        || mime.ends_with("+xml")
}

/// `/`-separated path with every segment percent-encoded (RFC 3986
/// unreserved bytes kept).
fn encode_path(rel: &str) -> String {
    let mut s = String::with_capacity(rel.len());
    for &b in rel.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    size: u64,
    modified: Option<SystemTime>,
    mime: Rc<str>,
}

/// One directory served, as one shard sees it.
pub struct FileDir {
    cfg: FileDirConfig,
    /// `root`, with symlinks resolved: every served file's real path is
    /// under it.
    real_root: PathBuf,
    index: RefCell<BTreeMap<String, Entry>>,
    truncated: Cell<bool>,
    watcher: RefCell<Option<Inotify>>,
}

/// Why a URI is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    /// Traversal, a symlink out of the root, a dotfile.
    Outside,
    TooLarge(u64),
}

impl FileDir {
    /// Scans `cfg.root` (and starts watching it when asked).
    pub fn open(cfg: &FileDirConfig) -> Result<Self, String> {
        cfg.validate()?;
        let real_root = cfg
            .root
            .canonicalize()
            .map_err(|e| format!("root {:?}: {e}", cfg.root))?;
        let watcher = if cfg.watch {
            Some(Inotify::new().map_err(|e| format!("inotify for {:?}: {e}", cfg.root))?)
        } else {
            None
        };
        let dir = Self {
            cfg: cfg.clone(),
            real_root,
            index: RefCell::new(BTreeMap::new()),
            truncated: Cell::new(false),
            watcher: RefCell::new(watcher),
        };
        let index = dir.scan();
        *dir.index.borrow_mut() = index;
        Ok(dir)
    }

    pub fn uri_prefix(&self) -> &str {
        &self.cfg.uri_prefix
    }

    pub fn watched(&self) -> bool {
        self.watcher.borrow().is_some()
    }

    fn uri(&self, rel: &str) -> String {
        format!("{}{}", self.cfg.uri_prefix, encode_path(rel))
    }

    /// Every file under the root (bounded), registering a watch on every
    /// directory visited.
    fn scan(&self) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        let mut stack: Vec<(PathBuf, String, usize)> =
            vec![(self.real_root.clone(), String::new(), 0)];
        let mut watcher = self.watcher.borrow_mut();
        let mut truncated = false;
        while let Some((dir, rel_dir, depth)) = stack.pop() {
            if let Some(w) = watcher.as_mut() {
                w.watch(&dir, &rel_dir);
            }
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    continue; // not representable in a URI as text
                };
                if name.starts_with('.') {
                    continue;
                }
                let rel = if rel_dir.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel_dir}/{name}")
                };
                let Ok(ft) = entry.file_type() else {
                    continue;
                };
                if ft.is_dir() {
                    if depth + 1 < DEPTH_MAX {
                        stack.push((entry.path(), rel, depth + 1));
                    }
                    continue;
                }
                // Regular files, and symlinks to files that stay inside the
                // root (symlinked directories are not descended: loops).
                let meta = if ft.is_symlink() {
                    match self.resolve(&rel) {
                        Ok((_, m)) => m,
                        Err(_) => continue,
                    }
                } else if ft.is_file() {
                    match entry.metadata() {
                        Ok(m) => m,
                        Err(_) => continue,
                    }
                } else {
                    continue;
                };
                if out.len() >= self.cfg.max_files {
                    truncated = true;
                    break;
                }
                let mime: Rc<str> = mime_of(&rel, &self.cfg.mime).into();
                out.insert(
                    rel,
                    Entry {
                        size: meta.len(),
                        modified: meta.modified().ok(),
                        mime,
                    },
                );
            }
        }
        if truncated && !self.truncated.get() {
            log::warn!(
                "{}: more than max_files ({}) files; the rest are not served",
                self.cfg.root.display(),
                self.cfg.max_files
            );
        }
        self.truncated.set(truncated);
        out
    }

    /// The real path and metadata of `rel`, if it is a regular file under
    /// the root.
    fn resolve(&self, rel: &str) -> Result<(PathBuf, std::fs::Metadata), Refused> {
        if rel.is_empty()
            || rel.contains('\0')
            || rel
                .split('/')
                .any(|seg| seg.is_empty() || seg.starts_with('.'))
        {
            return Err(Refused::Outside);
        }
        let real = self
            .real_root
            .join(rel)
            .canonicalize()
            .map_err(|_| Refused::NotFound)?;
        if !real.starts_with(&self.real_root) {
            return Err(Refused::Outside);
        }
        let meta = std::fs::metadata(&real).map_err(|_| Refused::NotFound)?;
        if !meta.is_file() {
            return Err(Refused::NotFound);
        }
        Ok((real, meta))
    }

    /// The path under the root that `uri` names, if it is one of ours.
    pub fn rel_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        uri.strip_prefix(self.cfg.uri_prefix.as_str())
    }

    /// Whether `uri` names a listed file.
    pub fn contains(&self, uri: &str) -> bool {
        self.rel_of(uri)
            .and_then(super::registry::percent_decode)
            .is_some_and(|rel| self.index.borrow().contains_key(&rel))
    }

    /// The descriptors of every listed file, in path order.
    pub fn descriptors(&self) -> Vec<ResourceDescriptor> {
        self.index
            .borrow()
            .iter()
            .map(|(rel, e)| ResourceDescriptor {
                uri: self.uri(rel),
                name: rel.clone(),
                title: None,
                description: None,
                mime_type: Some(e.mime.to_string()),
                size: Some(e.size),
            })
            .collect()
    }

    /// Reads `uri` (which starts with this directory's prefix).
    pub fn read(&self, shard: &Shard, era: Era, uri: &str) -> JsonReply {
        let refuse = |r: Refused| {
            shard.metrics.borrow_mut().counters.file_reads_refused += 1;
            let e = match r {
                Refused::NotFound => not_found(era, uri),
                Refused::Outside => {
                    log::warn!("refused resources/read of {uri:?}: outside the root");
                    not_found(era, uri)
                }
                Refused::TooLarge(size) => RpcError::invalid_params(format!(
                    "{uri} is {size} bytes, more than max_file_bytes ({})",
                    self.cfg.max_file_bytes
                )),
            };
            JsonReply::Ready(Err(CallError::Rpc(e)))
        };
        let Some(rel) = self.rel_of(uri).and_then(super::registry::percent_decode) else {
            return refuse(Refused::NotFound);
        };
        let (path, meta) = match self.resolve(&rel) {
            Ok(p) => p,
            Err(r) => return refuse(r),
        };
        let max = self.cfg.max_file_bytes;
        if meta.len() > max {
            return refuse(Refused::TooLarge(meta.len()));
        }
        let mime = mime_of(&rel, &self.cfg.mime);
        let uri = uri.to_owned();
        JsonReply::Pending(Box::pin(async move {
            let bytes = read_bounded(&path, max).await.map_err(|e| {
                CallError::Rpc(RpcError::new(
                    crate::protocol::jsonrpc::INTERNAL_ERROR,
                    format!("reading {uri}: {e}"),
                ))
            })?;
            if bytes.len() as u64 > max {
                return Err(CallError::Rpc(RpcError::invalid_params(format!(
                    "{uri} grew past max_file_bytes ({max}) while being read"
                ))));
            }
            if is_textual(&mime) {
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    return Ok(text_contents(&uri, &mime, text));
                }
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Ok(blob_contents(&uri, &mime, &b64))
        }))
    }

    /// Looks at the inotify queue; on any event rescans and reports what
    /// changed: (the listing changed, URIs whose content changed or that
    /// appeared or went away).
    pub fn poll_changes(&self) -> Option<(bool, Vec<String>)> {
        let touched = self.watcher.borrow_mut().as_mut()?.drain()?;
        let new = self.scan();
        let mut old = self.index.borrow_mut();
        let listing_changed =
            old.len() != new.len() || old.keys().zip(new.keys()).any(|(a, b)| a != b);
        let mut updated: Vec<String> = Vec::new();
        for (rel, e) in new.iter() {
            if old.get(rel) != Some(e) || touched.contains(rel) {
                updated.push(self.uri(rel));
            }
        }
        for rel in old.keys() {
            if !new.contains_key(rel) {
                updated.push(self.uri(rel));
            }
        }
        *old = new;
        Some((listing_changed, updated))
    }
}

async fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let glommio_err = |e: glommio::GlommioError<()>| std::io::Error::other(e.to_string());
    let file = glommio::io::BufferedFile::open(path)
        .await
        .map_err(glommio_err)?;
    // One byte more than allowed tells a file that grew from one that fits.
    let read = file
        .read_at(0, (max + 1) as usize)
        .await
        .map_err(glommio_err);
    let _ = file.close().await;
    Ok(read?.to_vec())
}

/// A non-blocking inotify instance and what each watch descriptor names.
struct Inotify {
    fd: std::os::fd::OwnedFd,
    dirs: HashMap<i32, String>,
    buf: Vec<u8>,
}

const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR;

impl Inotify {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self {
            fd,
            dirs: HashMap::new(),
            buf: vec![0; EVENT_BUFFER_BYTES],
        })
    }

    fn watch(&mut self, dir: &Path, rel: &str) {
        let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
        if wd >= 0 {
            self.dirs.insert(wd, rel.to_owned());
        } else {
            log::warn!(
                "cannot watch {}: {} (fs.inotify.max_user_watches?)",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
    }

    /// The paths (relative to the root) named by queued events; None when
    /// nothing happened.
    fn drain(&mut self) -> Option<std::collections::HashSet<String>> {
        use std::os::fd::AsRawFd;
        let mut touched = std::collections::HashSet::new();
        let mut any = false;
        loop {
            // SAFETY: reading into our own buffer of that length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
            any = true;
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes
                // with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(self.buf[at..].as_ptr().cast()) };
                let name_bytes = &self.buf[at + header..at + header + ev.len as usize];
                let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
                if ev.mask & libc::IN_IGNORED != 0 {
                    self.dirs.remove(&ev.wd);
                } else if let (Some(dir), Ok(name)) =
                    (self.dirs.get(&ev.wd), std::str::from_utf8(name))
                {
                    if !name.is_empty() {
                        touched.insert(if dir.is_empty() {
                            name.to_owned()
                        } else {
                            format!("{dir}/{name}")
                        });
                    }
                }
                at += header + ev.len as usize;
            }
            if (n as usize) < self.buf.len() {
                break;
            }
        }
        any.then_some(touched)
    }
}

/// On every shard with watched directories: turns changes on disk into
/// `resources/updated` (sent by each URI's watch owner) and `list_changed`
/// (each shard to its own sessions).
pub async fn watch_loop(shard: Rc<Shard>) {
    use super::registry::ListKind;
    loop {
        if shard
            .sleep_unless_shutdown(Duration::from_millis(WATCH_POLL_MS))
            .await
        {
            return;
        }
        let mut list_changed = false;
        let mut updated = Vec::new();
        for dir in &shard.registry.file_dirs {
            if let Some((l, u)) = dir.poll_changes() {
                list_changed |= l;
                updated.extend(u);
            }
        }
        if list_changed {
            super::listen::list_changed(&shard, ListKind::Resources);
        }
        for uri in updated {
            if super::resources::watch_owner(&uri, shard.shard_count) == shard.id {
                super::resources::notify_watchers(&shard, &uri);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        d
    }

    #[test]
    fn scans_files_and_refuses_what_is_outside() {
        let root = dir("scan");
        std::fs::write(root.join("a.md"), "# A").unwrap();
        std::fs::write(root.join("sub/b c.json"), "{}").unwrap();
        std::fs::write(root.join(".hidden"), "no").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("a.md"), root.join("alias.md")).unwrap();
        let d = FileDir::open(&FileDirConfig {
            root: root.clone(),
            uri_prefix: "file:///docs/".into(),
            mime: BTreeMap::new(),
            max_file_bytes: 1024,
            max_files: 100,
            watch: false,
        })
        .unwrap();
        let uris: Vec<String> = d.descriptors().into_iter().map(|r| r.uri).collect();
        assert_eq!(
            uris,
            vec![
                "file:///docs/a.md",
                "file:///docs/alias.md",
                "file:///docs/sub/b%20c.json"
            ]
        );
        assert!(d.contains("file:///docs/sub/b%20c.json"));
        assert_eq!(d.resolve("../etc/passwd").unwrap_err(), Refused::Outside);
        assert_eq!(d.resolve("escape").unwrap_err(), Refused::Outside);
        assert_eq!(d.resolve(".hidden").unwrap_err(), Refused::Outside);
        assert_eq!(d.resolve("sub/../a.md").unwrap_err(), Refused::Outside);
        assert_eq!(d.resolve("nope").unwrap_err(), Refused::NotFound);
        assert!(d.resolve("alias.md").is_ok());
        assert_eq!(mime_of("x.MD", &BTreeMap::new()), "text/markdown");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
