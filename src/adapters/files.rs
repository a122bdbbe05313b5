//! File resources from the config file (`[[resources.dir]]`): every regular
//! file under `root` is a resource `<uri_prefix><relative path>`, listed by
//! `resources/list`, read by `resources/read`, and watched with inotify so
//! subscribers hear `resources/updated` and everyone `list_changed`. A
//! [`FileDir`] is one shard's `server::registry::ResourceSource` for one
//! directory.
//!
//! Each shard owns its own copy of every directory's index and its own
//! inotify instance (shared-nothing: no shard waits for another to learn of
//! a change). A change is reported to subscribers only by the URI's watch
//! owner, so every subscriber hears it once; list changes go to each shard's
//! own sessions.
//!
//! No file system call runs on an executor: the first scan happens while the
//! shard's registry is built, before its executor serves anything; rescans,
//! the inotify queue and every read run on the executor's blocking thread
//! (`spawn_blocking`), and the shard only swaps in the result.
//!
//! Safety: a URI is decoded, refused if any segment is empty, `.`, `..` or
//! starts with a dot, then resolved with symlinks followed and refused unless
//! the real path is still under the real root. The file is then opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the root's own
//! descriptor, so a symlink swapped in after the check cannot lead outside.
//! Reads are bounded (`max_file_bytes`). Listing and rescans touch only
//! metadata and are bounded by `max_files`; dotfiles and dot-directories are
//! never served.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;

use crate::runtime::local::Flag;
use crate::server::api::McpServer;
use crate::server::content::{blob_contents, text_contents};
use crate::server::ctx::CallCtx;
use crate::server::encode::resource_not_found;
use crate::server::registry::{
    percent_decode, JsonReply, ResourceDescriptor, ResourceSource, SourceChange,
};
use crate::server::tools::{CallError, RpcError};

/// How often each shard looks at its inotify queue.
pub(crate) const WATCH_POLL_MS: u64 = 200;
/// Deepest directory nesting scanned under a root.
pub(crate) const DEPTH_MAX: usize = 32;
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

/// Why a directory cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileDirError(String);

impl FileDirConfig {
    pub fn validate(&self) -> Result<(), FileDirError> {
        let bad = |m: String| Err(FileDirError(m));
        if !self.root.is_absolute() {
            return bad(format!("root {:?} must be an absolute path", self.root));
        }
        if !self.root.is_dir() {
            return bad(format!("root {:?} is not a directory", self.root));
        }
        if !self.uri_prefix.contains(':') || self.uri_prefix.contains(['{', '}', ' ']) {
            return bad(format!(
                "uri_prefix {:?} must be a URI prefix such as \"file:///docs/\"",
                self.uri_prefix
            ));
        }
        if self.max_file_bytes == 0 || self.max_files == 0 {
            return bad("max_file_bytes and max_files must be greater than zero".into());
        }
        Ok(())
    }
}

impl McpServer {
    /// Serves the files under a directory as resources (`[[resources.dir]]`).
    /// The directory is checked now; each shard scans it when it starts.
    pub fn file_dir(self, d: FileDirConfig) -> Result<Self, FileDirError> {
        d.validate()?;
        let d = Arc::new(d);
        Ok(self.source(Arc::new(move || {
            match FileDir::open(&d) {
                Ok(dir) => Rc::new(dir) as Rc<dyn ResourceSource>,
                // The directory went away between the check and a shard's
                // start: serve it empty and say so.
                Err(e) => {
                    log::error!(
                        "resources.dir {}: {e}; serving no files from it",
                        d.uri_prefix
                    );
                    Rc::new(FileDir::empty(&d)) as Rc<dyn ResourceSource>
                }
            }
        })))
    }
}

/// The MIME type of `path` by extension.
pub(crate) fn mime_of(path: &str, overrides: &BTreeMap<String, String>) -> String {
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

/// What a scan found, in a form that crosses threads.
type Scanned = BTreeMap<String, (u64, Option<SystemTime>)>;

/// Why a URI is not served.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    NotFound,
    /// Traversal, a symlink out of the root, a dotfile.
    Outside,
    TooLarge(u64),
}

/// The directory as the blocking thread sees it: its real path, its own
/// descriptor (reads are opened beneath it), its limits.
struct Root {
    cfg: FileDirConfig,
    /// `root`, with symlinks resolved: every served file's real path is
    /// under it.
    real: PathBuf,
    fd: OwnedFd,
}

impl Root {
    fn open(cfg: &FileDirConfig) -> std::io::Result<Self> {
        let real = cfg.root.canonicalize()?;
        let c = CString::new(real.as_os_str().as_bytes())?;
        // SAFETY: `c` is a NUL-terminated path valid for the call; the flags
        // ask only for a directory handle. The result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            cfg: cfg.clone(),
            real,
            fd,
        })
    }

    /// Every file under the root (bounded), registering a watch on every
    /// directory visited. The bool says the listing was cut at `max_files`.
    fn scan(&self, mut watcher: Option<&mut Inotify>) -> (Scanned, bool) {
        let mut out = BTreeMap::new();
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(self.real.clone(), String::new(), 0)];
        let mut truncated = false;
        while let Some((dir, rel_dir, depth)) = stack.pop() {
            if let Some(w) = watcher.as_deref_mut() {
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
                out.insert(rel, (meta.len(), meta.modified().ok()));
            }
        }
        (out, truncated)
    }

    /// The real path (relative to the root) and metadata of `rel`, if it is
    /// a regular file under the root.
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
            .real
            .join(rel)
            .canonicalize()
            .map_err(|_| Refused::NotFound)?;
        let beneath = real
            .strip_prefix(&self.real)
            .map_err(|_| Refused::Outside)?
            .to_owned();
        let meta = std::fs::metadata(&real).map_err(|_| Refused::NotFound)?;
        if !meta.is_file() {
            return Err(Refused::NotFound);
        }
        Ok((beneath, meta))
    }

    /// Reads `rel` (at most `max_file_bytes`), opening the resolved path
    /// beneath the root's descriptor with no symlink allowed on the way.
    fn read(&self, rel: &str) -> Result<Vec<u8>, ReadError> {
        let (beneath, meta) = self.resolve(rel).map_err(ReadError::Refused)?;
        let max = self.cfg.max_file_bytes;
        if meta.len() > max {
            return Err(ReadError::Refused(Refused::TooLarge(meta.len())));
        }
        let file = open_beneath(&self.fd, &beneath).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) {
                // A symlink appeared on the path after it was checked.
                ReadError::Refused(Refused::Outside)
            } else {
                ReadError::Io(e)
            }
        })?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // One byte more than allowed tells a file that grew from one that fits.
        std::fs::File::from(file)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(ReadError::Io)?;
        if bytes.len() as u64 > max {
            return Err(ReadError::Grew);
        }
        Ok(bytes)
    }
}

enum ReadError {
    Refused(Refused),
    Grew,
    Io(std::io::Error),
}

/// `openat2(dir, path, O_RDONLY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
fn open_beneath(dir: &OwnedFd, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: open_how is a plain C struct for which all-zero is valid (no
    // flags, no mode, no resolve restrictions); the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `dir` is an open directory descriptor, `c` a NUL-terminated
    // path and `how` an initialised open_how whose size is passed; all live
    // for the call. The result is checked before use.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One directory served, as one shard sees it.
pub(crate) struct FileDir {
    cfg: FileDirConfig,
    /// Shared with the blocking thread for scans and reads.
    root: Option<Arc<Root>>,
    index: RefCell<BTreeMap<String, Entry>>,
    truncated: Cell<bool>,
    /// Taken while a rescan runs on the blocking thread.
    watcher: RefCell<Option<Inotify>>,
}

impl FileDir {
    /// Opens and scans `cfg.root` (and starts watching it when asked). Runs
    /// while a shard's registry is built, before its executor serves.
    fn open(cfg: &FileDirConfig) -> std::io::Result<Self> {
        let root = Root::open(cfg)?;
        let mut watcher = if cfg.watch {
            Some(Inotify::new()?)
        } else {
            None
        };
        let (scanned, truncated) = root.scan(watcher.as_mut());
        let dir = Self {
            cfg: cfg.clone(),
            root: Some(Arc::new(root)),
            index: RefCell::new(BTreeMap::new()),
            truncated: Cell::new(false),
            watcher: RefCell::new(watcher),
        };
        dir.install(scanned, truncated);
        Ok(dir)
    }

    /// A directory that serves nothing.
    fn empty(cfg: &FileDirConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            root: None,
            index: RefCell::new(BTreeMap::new()),
            truncated: Cell::new(false),
            watcher: RefCell::new(None),
        }
    }

    fn uri(&self, rel: &str) -> String {
        format!("{}{}", self.cfg.uri_prefix, encode_path(rel))
    }

    /// The path under the root that `uri` names, if it is one of ours.
    fn rel_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        uri.strip_prefix(self.cfg.uri_prefix.as_str())
    }

    /// Replaces the index with a scan's result; returns the old one.
    fn install(&self, scanned: Scanned, truncated: bool) -> BTreeMap<String, Entry> {
        if truncated && !self.truncated.get() {
            log::warn!(
                "{}: more than max_files ({}) files; the rest are not served",
                self.cfg.root.display(),
                self.cfg.max_files
            );
        }
        self.truncated.set(truncated);
        let index = scanned
            .into_iter()
            .map(|(rel, (size, modified))| {
                let mime: Rc<str> = mime_of(&rel, &self.cfg.mime).into();
                (
                    rel,
                    Entry {
                        size,
                        modified,
                        mime,
                    },
                )
            })
            .collect();
        std::mem::replace(&mut *self.index.borrow_mut(), index)
    }

    /// Looks at the inotify queue and, on any event, rescans (both on the
    /// blocking thread); returns what changed, if anything did.
    async fn poll_changes(&self) -> Option<SourceChange> {
        let root = self.root.clone()?;
        let mut watcher = self.watcher.borrow_mut().take()?;
        let (watcher, found) = glommio::executor()
            .spawn_blocking(move || {
                let found = watcher.drain().map(|touched| {
                    let (scanned, truncated) = root.scan(Some(&mut watcher));
                    (touched, scanned, truncated)
                });
                (watcher, found)
            })
            .await;
        *self.watcher.borrow_mut() = Some(watcher);
        let (touched, scanned, truncated) = found?;
        let old = self.install(scanned, truncated);
        let new = self.index.borrow();
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
        Some(SourceChange {
            listing_changed,
            updated,
        })
    }
}

impl ResourceSource for FileDir {
    fn uri_prefix(&self) -> &str {
        &self.cfg.uri_prefix
    }

    fn descriptors(&self) -> Vec<ResourceDescriptor> {
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

    fn contains(&self, uri: &str) -> bool {
        self.rel_of(uri)
            .and_then(percent_decode)
            .is_some_and(|rel| self.index.borrow().contains_key(&rel))
    }

    fn read(&self, cx: &CallCtx<'_>, uri: &str) -> JsonReply {
        let era = cx.era;
        let core = cx.core.clone();
        let max = self.cfg.max_file_bytes;
        let refuse = move |uri: &str, r: Refused| {
            core.metrics.borrow_mut().counters.file_reads_refused += 1;
            Err(CallError::Rpc(match r {
                Refused::NotFound => resource_not_found(era, uri),
                Refused::Outside => {
                    log::warn!("refused resources/read of {uri:?}: outside the root");
                    resource_not_found(era, uri)
                }
                Refused::TooLarge(size) => RpcError::invalid_params(format!(
                    "{uri} is {size} bytes, more than max_file_bytes ({max})"
                )),
            }))
        };
        let (Some(root), Some(rel)) =
            (self.root.clone(), self.rel_of(uri).and_then(percent_decode))
        else {
            return JsonReply::Ready(refuse(uri, Refused::NotFound));
        };
        let mime = mime_of(&rel, &self.cfg.mime);
        let uri = uri.to_owned();
        JsonReply::Pending(Box::pin(async move {
            let read = glommio::executor()
                .spawn_blocking(move || root.read(&rel))
                .await;
            let bytes = match read {
                Ok(b) => b,
                Err(ReadError::Refused(r)) => return refuse(&uri, r),
                Err(ReadError::Grew) => {
                    return Err(CallError::Rpc(RpcError::invalid_params(format!(
                        "{uri} grew past max_file_bytes ({max}) while being read"
                    ))))
                }
                Err(ReadError::Io(e)) => {
                    return Err(CallError::Rpc(RpcError::new(
                        crate::protocol::jsonrpc::INTERNAL_ERROR,
                        format!("reading {uri}: {e}"),
                    )))
                }
            };
            if is_textual(&mime) {
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    return Ok(text_contents(&uri, &mime, text));
                }
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Ok(blob_contents(&uri, &mime, &b64))
        }))
    }

    fn follow(
        self: Rc<Self>,
        stop: Rc<Flag>,
        on_change: Rc<dyn Fn(SourceChange)>,
    ) -> Option<Pin<Box<dyn Future<Output = ()>>>> {
        self.watcher.borrow().as_ref()?;
        Some(Box::pin(async move {
            let period = Duration::from_millis(WATCH_POLL_MS);
            loop {
                let stopped = futures_lite::future::or(
                    async {
                        glommio::timer::sleep(period).await;
                        false
                    },
                    async {
                        stop.wait().await;
                        true
                    },
                )
                .await;
                if stopped {
                    return;
                }
                if let Some(change) = self.poll_changes().await {
                    on_change(change);
                }
            }
        }))
    }
}

/// A non-blocking inotify instance and what each watch descriptor names.
struct Inotify {
    fd: OwnedFd,
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
        // SAFETY: plain syscall without pointers; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by inotify_init1 and nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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
        // SAFETY: the descriptor is our open inotify instance and `c` a
        // NUL-terminated path, both live for the call.
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

    /// The paths (relative to the root) named by queued events; `None` when
    /// nothing happened.
    fn drain(&mut self) -> Option<HashSet<String>> {
        let mut touched = HashSet::new();
        let mut any = false;
        loop {
            // SAFETY: reading into our own buffer of exactly that length.
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
            self.parse_events(n as usize, &mut touched);
            if (n as usize) < self.buf.len() {
                break;
            }
        }
        any.then_some(touched)
    }

    fn parse_events(&mut self, n: usize, touched: &mut HashSet<String>) {
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0usize;
        while at + header <= n {
            // SAFETY: the kernel wrote whole events into `buf[..n]` and the
            // loop keeps `at + header <= n`; read_unaligned copes with the
            // byte buffer's alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(self.buf[at..].as_ptr().cast()) };
            let name_end = (at + header + ev.len as usize).min(n);
            let name_bytes = &self.buf[at + header..name_end];
            let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
            if ev.mask & libc::IN_IGNORED != 0 {
                self.dirs.remove(&ev.wd);
            } else if let (Some(dir), Ok(name)) = (self.dirs.get(&ev.wd), std::str::from_utf8(name))
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
        let r = d.root.as_ref().unwrap();
        assert_eq!(r.resolve("../etc/passwd").unwrap_err(), Refused::Outside);
        assert_eq!(r.resolve("escape").unwrap_err(), Refused::Outside);
        assert_eq!(r.resolve(".hidden").unwrap_err(), Refused::Outside);
        assert_eq!(r.resolve("sub/../a.md").unwrap_err(), Refused::Outside);
        assert_eq!(r.resolve("nope").unwrap_err(), Refused::NotFound);
        // A symlink inside the root is served: it reads the file it names.
        assert_eq!(r.read("alias.md").ok(), Some(b"# A".to_vec()));
        assert!(matches!(
            r.read("escape"),
            Err(ReadError::Refused(Refused::Outside))
        ));
        assert_eq!(mime_of("x.MD", &BTreeMap::new()), "text/markdown");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn opening_beneath_the_root_refuses_a_symlink_on_the_way() {
        // The check-then-open race: the path was checked, then a component
        // became a symlink out of the root. openat2 refuses it.
        let root = dir("beneath");
        std::fs::write(root.join("sub/f.txt"), "in").unwrap();
        let r = Root::open(&FileDirConfig {
            root: root.clone(),
            uri_prefix: "x://".into(),
            mime: BTreeMap::new(),
            max_file_bytes: 1024,
            max_files: 10,
            watch: false,
        })
        .unwrap();
        assert!(open_beneath(&r.fd, Path::new("sub/f.txt")).is_ok());
        std::fs::remove_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("sub")).unwrap();
        let e = open_beneath(&r.fd, Path::new("sub/hostname")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
