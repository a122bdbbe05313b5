//! Adapters: the I/O the MCP layer needs, behind its small traits. Each owns
//! its thread or descriptor; nothing here runs a blocking call on an
//! executor (files are scanned and read on glommio's blocking thread, the
//! store and the audit log have writer threads, child processes are spawned
//! and reaped off the executor).
//!
//! - [`store`]: `--data-dir`, one redb file and writer thread per shard
//!   (implements `server::store::Store`);
//! - [`audit`]: `--audit-log`, a bounded buffer per shard and one writer
//!   thread that owns and rotates the file (`server::audit::AuditSink`);
//! - [`files`]: `[[resources.dir]]`, directories served as resources and
//!   watched with inotify (`server::registry::ResourceSource`);
//! - [`command`]: `[[tool]]`, tools that run a program per call;
//! - [`prompt_files`]: `[[prompt]]`, prompt templates read from files;
//! - [`secrets`]: the tokens file and JWT keys of `--auth`;
//! - [`seal`]: `--store-key-file`, stored records sealed at rest;
//! - [`backup`]: `tessera backup` / `restore`, snapshots of `--data-dir`;
//! - [`tls`]: `--tls-cert` and friends, PEM files into rustls configurations.

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod cluster;
pub(crate) mod command;
pub(crate) mod files;
pub(crate) mod otel;
pub(crate) mod prompt_files;
pub(crate) mod seal;
pub(crate) mod secrets;
pub(crate) mod store;
pub(crate) mod tls;
