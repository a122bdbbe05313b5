//! One shard's part of `--cluster`: its Redis connection, its heartbeat, its
//! copy of the live-node list, its sessions' Redis store, and the link the
//! HTTP transport asks where a session lives. The Redis work itself is the
//! adapter's (`adapters::cluster`); this module decides when it runs in the
//! shard's life and connects it to the transport.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::adapters::cluster::membership::{self, Beat, LiveNodes};
use crate::adapters::cluster::sessions::{self, Kind, RedisStore, SessionBounds, Whereabouts};
use crate::adapters::cluster::shared::{subscribe, RedisShared};
use crate::adapters::cluster::{ClusterConfig, ClusterError, Redis};
use crate::runtime::local::Flag;
use crate::server::core::Core;
use crate::server::registry;
use crate::server::shared::{Announcement, Shared};
use crate::server::store::Store;
use crate::server::tasks;
use crate::server::watch;
use crate::transport::http::cluster::{ClusterLink, Located, TaskHolder};
use crate::transport::http::{self, HttpShard};
use fred::prelude::ClientLike;

/// Where relayed sessions live, remembered per shard for this long so a
/// session used through another node costs no Redis lookup per request.
const OWNER_CACHE_MS: u64 = 1000;
/// Owners remembered at most; past it the memory is cleared.
const OWNER_CACHE_MAX: usize = 10_000;

/// Operations a shard queues for Redis while a batch is in flight.
const PENDING_OPS_MAX: usize = 100_000;
/// How long a stopping shard waits for its last writes to reach Redis.
const FINAL_FLUSH_MS: u64 = 1000;

/// Session id -> (node, address, when looked up).
type Owners = HashMap<String, (String, SocketAddr, Instant)>;

pub(crate) struct ClusterShard {
    pub redis: Rc<Redis>,
    pub live: Rc<RefCell<LiveNodes>>,
    pub sessions: Rc<RedisStore>,
    kick: Rc<Flag>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    owners: Rc<RefCell<Owners>>,
    /// Shard 0: the subscriber connection.
    subscriber: RefCell<Option<Rc<fred::prelude::Client>>>,
}

impl ClusterShard {
    pub fn new(
        cfg: &ClusterConfig,
        core: Rc<Core>,
        web: &Rc<HttpShard>,
    ) -> Result<Self, ClusterError> {
        let redis = Redis::new(cfg, Some(core.clone()))?;
        let sessions = RedisStore::new(
            redis.clone(),
            SessionBounds {
                ttl_ms: web.cfg.session_idle_ttl_ms,
                max_events: web.cfg.sse_store_max_events,
                pending_ops_max: PENDING_OPS_MAX,
            },
        );
        *core.shared.borrow_mut() =
            Some(RedisShared::new(redis.clone(), sessions.clone()) as Rc<dyn Shared>);
        core.tasks.borrow_mut().set_node(&cfg.node_id);
        let weak: Weak<HttpShard> = Rc::downgrade(web);
        if cfg.sync_events {
            let weak = weak.clone();
            sessions.on_durable(move |id, stream, seq| {
                if let Some(h) = weak.upgrade() {
                    http::session::durable(&h, id, stream, seq);
                }
            });
        }
        sessions.on_fenced(move |kind, id| {
            let Some(h) = weak.upgrade() else { return };
            match kind {
                Kind::Session => http::session::forget(&h, id),
                Kind::Task => tasks::forget(&h.net.core, id),
            }
        });
        Ok(Self {
            redis,
            live: Rc::default(),
            sessions,
            kick: Rc::default(),
            tasks: RefCell::new(Vec::new()),
            owners: Rc::default(),
            subscriber: RefCell::new(None),
        })
    }

    /// Connects (in the background) and beats for the rest of the shard's
    /// life; after every reconnect the node re-registers at once and
    /// re-writes the sessions it holds (Redis may have lost them).
    pub fn start(
        &self,
        beat: Beat,
        web: Option<Rc<HttpShard>>,
        sessions: impl Fn() -> u64 + 'static,
    ) {
        let kick = self.kick.clone();
        let weak = web.as_ref().map(Rc::downgrade);
        self.redis.start(move || {
            kick.raise();
            if let Some(h) = weak.as_ref().and_then(Weak::upgrade) {
                http::session::republish(&h);
                tasks::republish(&h.net.core);
            }
        });
        let heartbeat = glommio::spawn_local(membership::heartbeat_loop(
            self.redis.clone(),
            beat,
            sessions,
            self.live.clone(),
            self.kick.clone(),
        ))
        .detach();
        let store = self.sessions.clone();
        let every = Duration::from_millis((self.redis.cfg.heartbeat_ttl_ms).max(1));
        let refresh_every = Duration::from_millis(
            web.as_ref()
                .map_or(60_000, |h| h.cfg.session_idle_ttl_ms / 3)
                .max(every.as_millis() as u64),
        );
        let refresh = glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(refresh_every).await;
                store.refresh().await;
            }
        })
        .detach();
        self.tasks.borrow_mut().extend([heartbeat, refresh]);
    }

    /// On shard 0: the node's one subscriber to what other nodes announce,
    /// handed to this node's watchers (who fan it out over the mesh).
    pub fn follow_announcements(&self, core: &Rc<Core>) -> Result<(), ClusterError> {
        let weak = Rc::downgrade(core);
        let client = subscribe(&self.redis.cfg, move |a| {
            let Some(core) = weak.upgrade() else {
                return;
            };
            match a {
                Announcement::Updated { uri } => watch::updated_here(&core, &uri),
                Announcement::Enabled { kind, name, on } => {
                    registry::set_enabled_here(&core, kind, &name, on)
                }
                Announcement::TaskStatus { id, params } => tasks::status_here(&core, &id, &params),
            }
        })?;
        *self.subscriber.borrow_mut() = Some(client);
        Ok(())
    }

    /// At a clean stop, after the drain: the last writes go out, the
    /// heartbeat stops, and the node leaves the live list at once (every
    /// shard deletes the key; the first wins), so no one waits a TTL to
    /// take its sessions over.
    pub async fn leave(&self) {
        let deadline = Instant::now() + Duration::from_millis(FINAL_FLUSH_MS);
        while !self.sessions.flushed() && Instant::now() < deadline {
            self.sessions.flush();
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        for t in self.tasks.borrow_mut().drain(..) {
            t.cancel();
        }
        if let Err(e) = membership::leave(&self.redis).await {
            log::debug!("leaving the cluster: {e}");
        }
        let subscriber = self.subscriber.borrow_mut().take();
        if let Some(sub) = subscriber {
            let _ = glommio::timer::timeout(Duration::from_millis(FINAL_FLUSH_MS), async {
                let _ = sub.quit().await;
                Ok(())
            })
            .await;
        }
        self.redis.close().await;
    }
}

impl ClusterShard {
    /// Where `id` lived at a lookup less than [`OWNER_CACHE_MS`] ago.
    fn remembered(&self, id: &str) -> Option<(String, SocketAddr)> {
        let owners = self.owners.borrow();
        let (node, addr, at) = owners.get(id)?;
        (at.elapsed() < Duration::from_millis(OWNER_CACHE_MS)).then(|| (node.clone(), *addr))
    }
}

impl ClusterLink for ClusterShard {
    fn node_id(&self) -> &str {
        &self.redis.cfg.node_id
    }

    fn sync_events(&self) -> bool {
        self.redis.cfg.sync_events
    }

    fn secret(&self) -> &[u8] {
        &self.redis.cfg.secret
    }

    fn locate(&self, id: &str) -> Pin<Box<dyn Future<Output = Result<Located, String>>>> {
        if let Some((node, addr)) = self.remembered(id) {
            return Box::pin(async move { Ok(Located::Remote { node, addr }) });
        }
        let redis = self.redis.clone();
        let store = self.sessions.clone();
        let owners = self.owners.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let creator = http::session::node_of(&id);
            let found = sessions::locate(&redis, &store, &id, creator).await?;
            Ok(match found {
                Whereabouts::Missing => Located::Missing,
                Whereabouts::Adopt {
                    record,
                    events,
                    tasks,
                } => Located::Adopt {
                    record,
                    events,
                    tasks,
                },
                Whereabouts::Remote { node, addr } => {
                    let addr = parse_advertised(&node, &addr)?;
                    remember(&owners, id, &node, addr);
                    Located::Remote { node, addr }
                }
            })
        })
    }

    fn forget(&self, id: &str) {
        self.owners.borrow_mut().remove(id);
    }

    fn locate_task(&self, id: &str) -> Pin<Box<dyn Future<Output = Result<TaskHolder, String>>>> {
        if let Some(r) = self.remembered(id) {
            return Box::pin(async move { Ok(Some(r)) });
        }
        let redis = self.redis.clone();
        let owners = self.owners.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let Some((node, addr)) = sessions::task_holder(&redis, &id).await? else {
                return Ok(None);
            };
            let addr = parse_advertised(&node, &addr)?;
            remember(&owners, id, &node, addr);
            Ok(Some((node, addr)))
        })
    }
}

/// A node's advertised address.
fn parse_advertised(node: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| format!("node {node} advertises a bad address {addr:?}"))
}

/// Remembers where `id` lives, within [`OWNER_CACHE_MAX`].
fn remember(owners: &RefCell<Owners>, id: String, node: &str, addr: SocketAddr) {
    let mut o = owners.borrow_mut();
    if o.len() >= OWNER_CACHE_MAX {
        o.clear();
    }
    o.insert(id, (node.to_owned(), addr, Instant::now()));
}
