//! What the store keeps of legacy sessions (`--data-dir`, or Redis with
//! `--cluster`): each session's record, which records changed since the
//! last flush, and bringing sessions back from what was stored (at start,
//! or one at a time when a cluster node takes a session over).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::{owner_of, HttpSession, Live, Stored};
use crate::server::auth::Identity;
use crate::server::content::LogLevel;
use crate::server::ctx::ClientCaps;
use crate::server::session::Resume;
use crate::server::store::{parse_event_key, Loaded, Op};
use crate::transport::http::HttpShard;

/// How far a restored session's stream ids jump past the stored counter
/// (streams opened after the record was last written are not in it).
const STREAM_ID_SKIP: u64 = 1 << 20;

/// What the store keeps of a legacy session (`--data-dir`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionRecord {
    version: String,
    sampling: bool,
    elicitation: bool,
    roots: bool,
    tasks_extension: bool,
    initialized: bool,
    log_level: Option<String>,
    principal: Option<String>,
    roles: Vec<String>,
    subscriptions: Vec<String>,
    next_stream: u64,
    standalone_next_seq: u64,
    scope: u64,
}

/// With `--data-dir`: which sessions' records may have changed since they
/// were last written, and a hash of each one written, to skip rewrites.
#[derive(Default)]
pub(crate) struct StoredRecords {
    dirty: HashSet<String>,
    written: HashMap<String, u64>,
}

impl HttpSession {
    /// What the store keeps of this session (besides its events).
    pub(super) fn record(&self) -> Option<Vec<u8>> {
        let mcp = self.mcp.borrow();
        let r = mcp.resume_state()?;
        let caps = r.caps;
        let who = self.principal.borrow();
        let st = self.streams.borrow();
        let rec = SessionRecord {
            version: r.version.to_owned(),
            sampling: caps.sampling,
            elicitation: caps.elicitation,
            roots: caps.roots,
            tasks_extension: caps.tasks_extension,
            initialized: r.client_initialized,
            log_level: r.log_level.map(|l| l.name().to_owned()),
            principal: who.as_ref().map(|w| w.principal.clone()),
            roles: who.as_ref().map(|w| w.roles.clone()).unwrap_or_default(),
            subscriptions: mcp.subscriptions(),
            next_stream: st.next_stream,
            standalone_next_seq: st.live.get(&0).map_or(1, |l| l.next_seq),
            scope: mcp.scope(),
        };
        serde_json::to_vec(&rec).ok()
    }
}

impl StoredRecords {
    /// An ended session: nothing of it is written any more.
    pub(super) fn forget(&mut self, id: &str) {
        self.dirty.remove(id);
        self.written.remove(id);
    }
}

pub(super) fn mark_dirty(http: &HttpShard, id: &str) {
    if let Some(r) = http.records.borrow_mut().as_mut() {
        r.dirty.insert(id.to_owned());
    }
}

/// Writes the records of sessions that may have changed (only those whose
/// record differs from what was last written).
pub(crate) fn flush_store(http: &HttpShard) {
    let dirty = match http.records.borrow_mut().as_mut() {
        Some(r) => std::mem::take(&mut r.dirty),
        None => return,
    };
    for id in dirty {
        let session = http.sessions.borrow().get(&id).cloned();
        let Some(rec) = session.filter(|s| !s.ended.get()).and_then(|s| s.record()) else {
            continue;
        };
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rec.hash(&mut h);
            h.finish()
        };
        let mut records = http.records.borrow_mut();
        let records = records.as_mut().expect("taken from above");
        if records.written.get(&id) != Some(&hash) {
            http.net.core.persist(Op::PutSession(id.clone(), rec));
            records.written.insert(id, hash);
        }
    }
}

/// Drops a session another node has taken over (its writes were fenced):
/// its live streams end and later requests are looked up in the cluster.
pub(crate) fn forget(http: &HttpShard, id: &str) {
    let removed = http.sessions.borrow_mut().remove(id);
    if let Some(s) = removed {
        http.net
            .core
            .metrics
            .borrow_mut()
            .counters
            .cluster_sessions_fenced += 1;
        s.end(http);
    }
}

/// Writes every held session's record again at the next flush (after the
/// store lost them, e.g. a Redis restart).
pub(crate) fn republish(http: &HttpShard) {
    let ids: Vec<String> = http.sessions.borrow().keys().cloned().collect();
    if let Some(r) = http.records.borrow_mut().as_mut() {
        r.written.clear();
        r.dirty.extend(ids);
    }
}

/// Brings back the sessions (and their SSE events) a shard's file held;
/// from now on their changes are written. Returns how many sessions were
/// restored.
pub(crate) fn restore(http: &Rc<HttpShard>, loaded: Loaded) -> usize {
    *http.records.borrow_mut() = Some(StoredRecords::default());
    let core = &http.net.core;
    let mut events: HashMap<String, Vec<(u64, u64, Vec<u8>)>> = HashMap::new();
    for (k, v) in loaded.events {
        if let Some((id, stream, seq)) = parse_event_key(&k) {
            events
                .entry(id.to_owned())
                .or_default()
                .push((stream, seq, v));
        }
    }
    let mut restored = 0;
    for (id, bytes) in loaded.sessions {
        let stored_events = events.remove(&id).unwrap_or_default();
        if restore_one(http, id, &bytes, stored_events).is_some() {
            restored += 1;
        }
    }
    // Events of sessions that are gone.
    for id in events.into_keys() {
        core.persist(Op::DelSession(id));
    }
    restored
}

/// Brings back one stored session and its events (`(stream, seq, frame)`
/// in order) on this shard, its owner; None (and the record deleted) when
/// it is unreadable or belongs elsewhere.
pub(crate) fn restore_one(
    http: &Rc<HttpShard>,
    id: String,
    record: &[u8],
    events: Vec<(u64, u64, Vec<u8>)>,
) -> Option<Rc<HttpSession>> {
    let core = &http.net.core;
    let rec: SessionRecord = match serde_json::from_slice(record) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("stored session {id} is unreadable ({e}); dropped");
            core.persist(Op::DelSession(id));
            return None;
        }
    };
    if owner_of(&id, core.shard_count, http.node_id()) != Some(core.id) {
        log::warn!("stored session {id} belongs to another shard count; dropped");
        core.persist(Op::DelSession(id));
        return None;
    }
    let session = HttpSession::with_id(http, id.clone());
    session.restore_from(http, rec, events);
    http.sessions.borrow_mut().insert(id, session.clone());
    Some(session)
}

impl HttpSession {
    /// Takes on what a stored record and its events say.
    fn restore_from(
        &self,
        http: &Rc<HttpShard>,
        rec: SessionRecord,
        events: Vec<(u64, u64, Vec<u8>)>,
    ) {
        let core = &http.net.core;
        let identity = rec.principal.as_ref().map(|p| Identity {
            principal: p.clone(),
            roles: rec.roles.clone(),
        });
        {
            let mut mcp = self.mcp.borrow_mut();
            mcp.resume(
                core,
                Resume {
                    version: crate::protocol::mcp::negotiate(&rec.version),
                    caps: ClientCaps {
                        sampling: rec.sampling,
                        elicitation: rec.elicitation,
                        roots: rec.roots,
                        tasks_extension: rec.tasks_extension,
                    },
                    client_initialized: rec.initialized,
                    log_level: rec.log_level.as_deref().and_then(LogLevel::parse),
                    identity: identity.clone().filter(|_| core.auth_on()),
                },
            );
            mcp.set_scope(rec.scope);
            mcp.restore_subscriptions(core, rec.subscriptions);
        }
        *self.principal.borrow_mut() = identity;
        let mut st = self.streams.borrow_mut();
        let now = Instant::now();
        let mut next_stream = rec.next_stream.max(1);
        let mut standalone_next = rec.standalone_next_seq.max(1);
        for (stream, seq, frame) in events {
            next_stream = next_stream.max(stream + 1);
            if stream == 0 {
                standalone_next = standalone_next.max(seq + 1);
            }
            st.store.push_back(Stored {
                stream,
                seq,
                at: now,
                frame: Bytes::from(frame),
                durable: true,
            });
        }
        // Stream ids are not stored on every POST: skip past any the stored
        // counter may have missed, so no id is reused.
        st.next_stream = next_stream + STREAM_ID_SKIP;
        st.live.insert(0, Live::new(None, standalone_next));
    }
}
