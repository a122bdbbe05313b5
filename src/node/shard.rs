//! One shard as the composition root assembles it: the MCP service, the
//! transports that feed it, and the mesh that carries both layers' messages
//! to the other shards.
//!
//! The runtime's `Mesh<Req, Rep>` is generic; here its message types are
//! fixed to [`NodeMsg`] and [`NodeReply`], the sum of what each layer owns
//! (`server::msg`, `transport::http::relay`). Each layer reaches the mesh
//! through a link trait it defines, implemented here; incoming messages are
//! handed back to the layer that owns them.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use crate::metrics::{Gauges, MeshCounts};
use crate::runtime::local::Pipe;
use crate::runtime::mesh::{
    Joined, Mesh, MeshError, MeshEvent, MeshSettings, ReplyTo, Serve, Serving, StreamEnd,
};
use crate::server::core::Core;
use crate::server::msg::{self, Link, LinkCall, Msg, Reply};
use crate::transport::http::relay::{self, FrameStream, HttpCall, HttpFrame, HttpMsg, RelayLink};
use crate::transport::http::HttpShard;
use crate::transport::Net;

/// Every cross-core message of this build.
#[derive(Debug)]
pub(crate) enum NodeMsg {
    Server(Msg),
    Http(HttpMsg),
}

/// Every cross-core reply of this build.
#[derive(Debug)]
pub(crate) enum NodeReply {
    Server(Reply),
    Http(HttpFrame),
}

impl StreamEnd for NodeReply {
    fn ends_stream(&self) -> bool {
        matches!(self, NodeReply::Http(HttpFrame::End))
    }
}

type NodeMesh = Mesh<NodeMsg, NodeReply>;

/// The mesh this shard uses now (replaced when it is rebuilt).
type MeshSlot = Rc<RefCell<Option<Rc<NodeMesh>>>>;

/// What one shard runs.
pub(crate) struct NodeShard {
    pub id: usize,
    pub cpu: usize,
    pub core: Rc<Core>,
    pub net: Rc<Net>,
    pub http: Option<Rc<HttpShard>>,
    /// `--cluster`: this shard's Redis connection and membership.
    pub cluster: Option<Rc<super::cluster::ClusterShard>>,
    mesh: MeshSlot,
    serving: RefCell<Option<Serving>>,
    mesh_settings: MeshSettings,
}

impl NodeShard {
    pub fn new(
        cpu: usize,
        core: Rc<Core>,
        net: Rc<Net>,
        http: Option<Rc<HttpShard>>,
        cluster: Option<Rc<super::cluster::ClusterShard>>,
        mesh_settings: MeshSettings,
    ) -> Self {
        Self {
            id: core.id,
            cpu,
            core,
            net,
            http,
            cluster,
            mesh: Rc::default(),
            serving: RefCell::new(None),
            mesh_settings,
        }
    }

    fn mesh(&self) -> Option<Rc<NodeMesh>> {
        self.mesh.borrow().clone()
    }

    /// Replaces this shard's end of the mesh with a freshly joined one and
    /// starts serving it. Everything still waiting on the old mesh fails
    /// (its callers answer their clients with an error); returns how many.
    pub fn install_mesh(self: &Rc<Self>, joined: Joined<NodeMsg, NodeReply>) -> usize {
        let server: Rc<dyn Serve<NodeMsg, NodeReply>> = Rc::new(Receiver(Rc::downgrade(self)));
        let observer = observer(self);
        let (mesh, serving) = Mesh::start(joined, self.mesh_settings, server, observer);
        let old = self.mesh.replace(Some(mesh));
        // Dropping the old loops stops them; their queues go with them.
        drop(self.serving.replace(Some(serving)));
        let lost = old.map_or(0, |m| m.fail_all());
        self.core
            .set_link(Some(Rc::new(ServerLink(self.mesh.clone())) as Rc<dyn Link>));
        if let Some(h) = &self.http {
            h.set_link(Some(
                Rc::new(HttpLink(self.mesh.clone())) as Rc<dyn RelayLink>
            ));
        }
        lost
    }

    /// Leaves the mesh at shutdown, on the executor (its serving tasks can
    /// only be stopped there): waiters fail, the loops stop, the queues
    /// close. Returns how many waiters there were.
    pub fn leave_mesh(&self) -> usize {
        self.core.set_link(None);
        if let Some(h) = &self.http {
            h.set_link(None);
        }
        drop(self.serving.take());
        self.mesh.take().map_or(0, |m| m.fail_all())
    }

    /// After the executor died: its serving tasks cannot be stopped off it,
    /// so they are left to the dead executor like the rest of its tasks.
    pub fn abandon_mesh(&self) {
        if let Some(serving) = self.serving.take() {
            std::mem::forget(serving);
        }
    }

    /// What this shard holds right now, for the admin endpoint.
    pub fn gauges(&self) -> Gauges {
        let mesh_pending = self
            .mesh()
            .map(|m| {
                m.pending_per_shard()
                    .into_iter()
                    .enumerate()
                    .filter(|&(to, _)| to != self.id)
                    .map(|(to, n)| (self.id, to, n))
                    .collect()
            })
            .unwrap_or_default();
        let (tasks, kv_keys) = self.core.gauges();
        Gauges {
            connections: self.net.conns.live() as u64,
            http_sessions: self
                .http
                .as_ref()
                .map_or(0, |h| h.sessions.borrow().len() as u64),
            tasks,
            kv_keys,
            mesh_pending,
            cluster_shards: u64::from(self.cluster.is_some()),
            cluster_shards_connected: self
                .cluster
                .as_ref()
                .map_or(0, |c| u64::from(c.redis.connected())),
            cluster_nodes_live: self
                .cluster
                .as_ref()
                .map_or(0, |c| c.live.borrow().live_count()),
        }
    }

    /// What a dead shard held that is gone with it.
    pub fn describe_lost(&self) -> String {
        let g = self.gauges();
        format!(
            "{} connection(s), {} legacy HTTP session(s), {} kv key(s), {} task(s), {} cross-core request(s) in flight",
            g.connections,
            g.http_sessions,
            g.kv_keys,
            g.tasks,
            self.mesh().map_or(0, |m| m.pending()),
        )
    }
}

/// Counts the mesh's events in this shard's metrics, and tells an owner to
/// stop streaming a relay whose reader fell behind.
fn observer(shard: &Rc<NodeShard>) -> Rc<dyn Fn(MeshEvent)> {
    let weak = Rc::downgrade(shard);
    Rc::new(move |e| {
        let Some(s) = weak.upgrade() else { return };
        s.core.metrics.borrow_mut().counters.count_mesh(match e {
            MeshEvent::Sent => MeshCounts::Sent,
            MeshEvent::Served => MeshCounts::Served,
            MeshEvent::Overloaded => MeshCounts::Overloaded,
            MeshEvent::Dropped => MeshCounts::Dropped,
            MeshEvent::TimedOut => MeshCounts::TimedOut,
            MeshEvent::StreamCut { .. } => MeshCounts::StreamCut,
            MeshEvent::Unclaimed => {
                log::debug!(
                    "shard {}: unclaimed mesh reply dropped (its caller is gone)",
                    s.id
                );
                return;
            }
        });
        if let MeshEvent::StreamCut { shard, corr } = e {
            if let Some(m) = s.mesh() {
                let _ = m.tell(shard, NodeMsg::Http(HttpMsg::Cancel { stream: corr }));
            }
        }
    })
}

/// Hands each incoming message to the layer that owns it.
struct Receiver(Weak<NodeShard>);

impl Serve<NodeMsg, NodeReply> for Receiver {
    fn serve(&self, from: usize, req: NodeMsg, reply: Option<ReplyTo>) -> Option<NodeReply> {
        let shard = self.0.upgrade()?;
        match req {
            NodeMsg::Server(m) => match msg::serve(&shard.core, m) {
                msg::Served::NoReply => None,
                msg::Served::Now(r) => Some(NodeReply::Server(r)),
                msg::Served::Later(f) => {
                    // Answered when it is ready; a sender that stopped
                    // waiting has forgotten the call, and the reply is
                    // dropped.
                    let to = reply.expect("a message served later was sent as a call");
                    let weak = self.0.clone();
                    glommio::spawn_local(async move {
                        let r = f.await;
                        let mesh = weak.upgrade().and_then(|s| s.mesh());
                        if let Some(m) = mesh {
                            let _ = m.reply(to, NodeReply::Server(r)).await;
                        }
                    })
                    .detach();
                    None
                }
            },
            NodeMsg::Http(m) => {
                let http = shard.http.as_ref().expect(
                    "HTTP messages come only from shards that serve HTTP, as every shard does",
                );
                relay::serve(http, from, m, reply);
                None
            }
        }
    }
}

/// The MCP layer's way to the other shards.
struct ServerLink(MeshSlot);

impl Link for ServerLink {
    fn call(&self, to: usize, m: Msg) -> Result<LinkCall, MeshError> {
        let mesh = self.0.borrow().clone().ok_or(MeshError::PeerGone)?;
        let call = mesh.call(to, NodeMsg::Server(m))?;
        Ok(Box::pin(async move {
            match call.await? {
                NodeReply::Server(r) => Ok(r),
                NodeReply::Http(f) => panic!("a server call was answered with an HTTP frame {f:?}"),
            }
        }))
    }

    fn tell(&self, to: usize, m: Msg) -> Result<(), MeshError> {
        let mesh = self.0.borrow().clone().ok_or(MeshError::PeerGone)?;
        mesh.tell(to, NodeMsg::Server(m))
    }
}

/// The HTTP transport's way to the other shards.
struct HttpLink(MeshSlot);

impl HttpLink {
    fn mesh(&self) -> Result<Rc<NodeMesh>, MeshError> {
        self.0.borrow().clone().ok_or(MeshError::PeerGone)
    }
}

impl RelayLink for HttpLink {
    fn call(
        &self,
        to: usize,
        call: HttpCall,
        depth: usize,
    ) -> Result<(u64, Box<dyn FrameStream>), MeshError> {
        let (corr, pipe) =
            self.mesh()?
                .call_stream(to, NodeMsg::Http(HttpMsg::Call(Box::new(call))), depth)?;
        Ok((corr, Box::new(Frames(pipe))))
    }

    fn cancel(&self, to: usize, stream: u64) {
        if let Ok(m) = self.mesh() {
            let _ = m.tell(to, NodeMsg::Http(HttpMsg::Cancel { stream }));
        }
    }

    fn forget(&self, stream: u64) {
        if let Ok(m) = self.mesh() {
            m.forget(stream);
        }
    }

    fn reply(
        &self,
        to: ReplyTo,
        frame: HttpFrame,
    ) -> Pin<Box<dyn Future<Output = Result<(), MeshError>>>> {
        let mesh = self.mesh();
        Box::pin(async move { mesh?.reply(to, NodeReply::Http(frame)).await })
    }
}

/// A relayed response's frames, unwrapped from the mesh's replies.
struct Frames(Rc<Pipe<NodeReply>>);

impl FrameStream for Frames {
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<HttpFrame>> {
        self.0.poll_next(cx).map(|r| {
            r.map(|reply| match reply {
                NodeReply::Http(f) => f,
                NodeReply::Server(r) => panic!("a relayed stream carried a server reply {r:?}"),
            })
        })
    }

    fn detach(&self) {
        self.0.detach_consumer();
    }
}
