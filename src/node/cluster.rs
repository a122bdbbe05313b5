//! One shard's part of `--cluster`: its Redis connection, its heartbeat and
//! its copy of the live-node list, wired to the shard's gauges. The Redis
//! work itself is the adapter's (`adapters::cluster`); this module decides
//! when it runs in the shard's life.

use std::cell::RefCell;
use std::rc::Rc;

use crate::adapters::cluster::membership::{self, Beat, LiveNodes};
use crate::adapters::cluster::{ClusterConfig, ClusterError, Redis};
use crate::runtime::local::Flag;
use crate::server::core::Core;

pub(crate) struct ClusterShard {
    pub redis: Rc<Redis>,
    pub live: Rc<RefCell<LiveNodes>>,
    kick: Rc<Flag>,
    heartbeat: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl ClusterShard {
    pub fn new(cfg: &ClusterConfig, core: Rc<Core>) -> Result<Self, ClusterError> {
        Ok(Self {
            redis: Redis::new(cfg, Some(core))?,
            live: Rc::default(),
            kick: Rc::default(),
            heartbeat: RefCell::new(None),
        })
    }

    /// Connects (in the background) and beats for the rest of the shard's
    /// life; after every reconnect the node re-registers at once.
    pub fn start(&self, beat: Beat, sessions: impl Fn() -> u64 + 'static) {
        let kick = self.kick.clone();
        self.redis.start(move || kick.raise());
        let task = glommio::spawn_local(membership::heartbeat_loop(
            self.redis.clone(),
            beat,
            sessions,
            self.live.clone(),
            self.kick.clone(),
        ))
        .detach();
        *self.heartbeat.borrow_mut() = Some(task);
    }

    /// At a clean stop: stops beating and takes the node out of the live
    /// list at once (every shard does; the first wins), so no one waits a
    /// TTL to take its sessions over.
    pub async fn leave(&self) {
        if let Some(t) = self.heartbeat.borrow_mut().take() {
            t.cancel();
        }
        if let Err(e) = membership::leave(&self.redis).await {
            log::debug!("leaving the cluster: {e}");
        }
        self.redis.close().await;
    }
}
