//! Validated server configuration: what the shards need to start, as plain
//! `Send + Clone` data copied into every executor thread.
//!
//! Every bound the server enforces lives in [`Limits`], each with its unit in
//! its name, its default, and what happens when it is hit.

use std::net::SocketAddr;
use std::time::Duration;

/// Bounds on every table, queue and buffer. Hitting one is counted in the
/// shard's metrics (`metrics::Counters`) and never silently drops work.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest accepted JSON-RPC message (one NDJSON line). Longer lines get a
    /// -32600 error; the rest of the line is read and discarded and the
    /// connection stays open.
    pub max_message_bytes: usize,
    /// Requests of one connection whose handlers are still running (async
    /// tools, cross-core hops). At the bound the connection stops reading its
    /// socket until one completes: TCP flow control pushes back on the client.
    pub max_inflight_per_conn: usize,
    /// Encoded responses waiting for a slow reader. Past the bound the
    /// connection stops reading requests until the client drains its socket.
    pub max_output_buffer_bytes: usize,
    /// Depth of each one-way queue between two shards. A full request queue
    /// answers the client with -32010 (server overloaded); nothing is queued
    /// beyond it.
    pub mesh_queue_depth: usize,
    /// Cross-core requests one shard may have outstanding at once. At the bound
    /// new hops are refused with -32010.
    pub mesh_pending_max: usize,
    /// How long a cross-core hop may take before the client gets -32011.
    pub mesh_timeout_ms: u64,
    /// Keys one shard may hold; `kv_set` of a new key beyond it is a tool
    /// error (`isError: true`), updates of existing keys still succeed.
    pub kv_max_keys_per_shard: usize,
    /// Longest key accepted by the kv tools (UTF-8 bytes).
    pub kv_max_key_bytes: usize,
    /// Largest value accepted by `kv_set`, measured as compact JSON.
    pub kv_max_value_bytes: usize,
    /// On shutdown, how long connections get to finish requests already
    /// read before the shard stops anyway.
    pub drain_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_inflight_per_conn: 1024,
            max_output_buffer_bytes: 8 * 1024 * 1024,
            mesh_queue_depth: 1024,
            mesh_pending_max: 65_536,
            mesh_timeout_ms: 5_000,
            kv_max_keys_per_shard: 1_000_000,
            kv_max_key_bytes: 1024,
            kv_max_value_bytes: 64 * 1024,
            drain_timeout_ms: 5_000,
        }
    }
}

impl Limits {
    pub fn mesh_timeout(&self) -> Duration {
        Duration::from_millis(self.mesh_timeout_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Rejects settings that would make the server unusable rather than
    /// merely strict.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, usize, usize); 7] = [
            ("max-message-bytes", self.max_message_bytes, 64),
            ("max-inflight-per-conn", self.max_inflight_per_conn, 1),
            (
                "max-output-buffer-bytes",
                self.max_output_buffer_bytes,
                4096,
            ),
            ("mesh-queue-depth", self.mesh_queue_depth, 1),
            ("mesh-pending-max", self.mesh_pending_max, 1),
            ("kv-max-key-bytes", self.kv_max_key_bytes, 1),
            ("kv-max-value-bytes", self.kv_max_value_bytes, 4),
        ];
        for (name, value, min) in checks {
            if value < min {
                return Err(format!("--{name} must be at least {min} (got {value})"));
            }
        }
        if self.mesh_timeout_ms == 0 {
            return Err("--mesh-timeout-ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Everything `tessera serve` needs, after CLI parsing and validation.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// CPUs to run one shard each on, in shard order (shard i runs on cores[i]).
    pub cores: Vec<usize>,
    pub tcp: Option<SocketAddr>,
    /// Serve one client on stdin/stdout (attached to shard 0).
    pub stdio: bool,
    /// Busy-poll this long before an idle executor sleeps in the kernel.
    pub spin_before_park: Option<Duration>,
    /// Print a stats line this often while running.
    pub stats_interval: Option<Duration>,
    pub limits: Limits,
}

impl ServerConfig {
    pub fn shard_count(&self) -> usize {
        self.cores.len()
    }
}
