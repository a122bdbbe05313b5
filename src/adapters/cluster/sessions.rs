//! Legacy sessions and tasks in Redis (`--cluster`): the shard's [`Store`]
//! (the same operations `--data-dir` writes to redb) written behind to
//! Redis with owner-epoch fencing, and the lookup of a session or task this
//! node does not hold.
//!
//! Keys, hash-tagged by id so one session's keys share a Redis Cluster slot
//! (its scripts touch only them):
//! - `{prefix}:s:{ID}`: hash `owner` (node id), `epoch`, `rec` (the session
//!   record: version, capabilities, log level, subscriptions, principal),
//!   and `t:{TASK}` for each of the session's tasks (legacy tasks belong to
//!   their session and move with it).
//! - `{prefix}:s:{ID}:ev`: the session's SSE event log, a Redis Stream
//!   capped at `sse_store_max_events` (fields `k`: stream/seq, `f`: frame).
//! - `{prefix}:t:{TASK}`: hash `owner`, `epoch`, `rec` of a modern task; it
//!   expires with the task (`--task-ttl-ms`, or the client's shorter wish).
//!
//! A session's keys expire `session_idle_ttl_ms` after their last write or
//! refresh; the owner refreshes every held session every third of that.
//!
//! Fencing: every write is a script that first checks that `owner` and
//! `epoch` are still this node's; a takeover (a script too) bumps the epoch,
//! so an old owner that was only paused cannot write again: its next write
//! is refused, it drops the session (counted `cluster_sessions_fenced`) and
//! later requests for it are relayed to the new owner.
//!
//! Nothing here is on a request's path except [`locate`], which runs only
//! for a session this node does not hold. Writes are batched: the shard
//! queues operations (at most `store_pending_ops_max`; past it they are
//! dropped and counted `store_dropped`) and every flush sends one batch,
//! concurrently, so fred pipelines it into one round trip; one batch is in
//! flight at a time, which keeps a session's writes in order. An SSE event
//! whose write fails is queued again, ahead of what came after it (a
//! retried `XADD` may store an event twice; reading the log drops the
//! copy). With `--cluster-sync-events` (write-through) an event goes out at
//! the next executor turn instead of the next flush, what queued while a
//! batch was in flight goes out as soon as it returns, and each
//! acknowledged event is handed back to its session, which only then sends
//! it to the reader.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use bytes::Bytes;
use fred::prelude::{HashesInterface, KeysInterface, LuaInterface, StreamsInterface};
use fred::types::Value;
use futures::future::join_all;

use super::membership::node_key;
use super::{Purpose, Redis};
use crate::server::clock::now_ms;
use crate::server::placement;
use crate::server::shared::Claimed;
use crate::server::store::{event_key, parse_event_key, Op, Store};

/// A session's or a modern task's record.
const PUT_RECORD: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if o[1] and (o[1] ~= ARGV[1] or o[2] ~= ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[2], 'rec', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1";

const PUT_EVENT: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if o[1] and (o[1] ~= ARGV[1] or o[2] ~= ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '*', 'k', ARGV[3], 'f', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1";

/// A legacy task, kept in its session's hash.
const PUT_FIELD: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if o[1] and (o[1] ~= ARGV[1] or o[2] ~= ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1";

const DEL_FIELD: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if o[1] and (o[1] ~= ARGV[1] or o[2] ~= ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[3])
return 1";

/// A session (with its events) or a modern task.
const DEL_RECORD: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if o[1] and (o[1] ~= ARGV[1] or o[2] ~= ARGV[2]) then return 0 end
redis.call('DEL', unpack(KEYS))
return 1";

/// `{0}` gone; `{1}` someone else moved it first (look again);
/// `{2, epoch, record, task, record, ...}` it is the caller's now, with the
/// tasks kept in its hash. A TTL of 0 keeps the keys' expiry.
const TAKE_OVER: &str = r"
local o = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'rec')
if not o[1] then return {0} end
if o[1] ~= ARGV[1] or o[2] ~= ARGV[2] then return {1} end
local e = tostring(tonumber(o[2]) + 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'epoch', e)
if ARGV[4] ~= '0' then
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ARGV[4]) end
end
local out = {2, e, o[3]}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 't:' then
    out[#out + 1] = string.sub(all[i], 3)
    out[#out + 1] = all[i + 1]
  end
end
return out";

/// Under `--store-key-file` every value this module sends to Redis is sealed
/// (`adapters::seal`) with the kind of record and its Redis key (plus the
/// hash field or event position) as associated data, so a value moved to
/// another key or field does not open. Values that do not open are skipped,
/// logged and counted (`store_records_unreadable`), never served. Sealing
/// runs on the shard: XChaCha20-Poly1305 on a record of a few hundred bytes
/// is a microsecond of CPU, no I/O.
const SEALED_SESSION: &str = "redis/session";
const SEALED_EVENT: &str = "redis/event";
const SEALED_TASK: &str = "redis/task";

/// What the associated data names for a field of a hash.
fn field_name(key: &str, field: &str) -> String {
    format!("{key}#{field}")
}

/// `plain`, sealed when the cluster has keys.
fn seal(redis: &Redis, table: &str, name: &str, plain: Vec<u8>) -> Vec<u8> {
    match &redis.cfg.keys {
        Some(k) => k.seal(table, name, &plain),
        None => plain,
    }
}

/// A value read back from Redis, opened when the cluster has keys; None
/// (logged and counted) when it does not open or is plain under keys.
fn open(redis: &Redis, table: &str, name: &str, value: &[u8]) -> Option<Vec<u8>> {
    match crate::adapters::seal::read_value(redis.cfg.keys.as_ref(), table, name, value) {
        Ok(v) => Some(v),
        Err(why) => {
            log::error!("{table} {name} in Redis is skipped: {why:?}");
            redis.count(|c| c.store_records_unreadable += 1);
            None
        }
    }
}

/// The field of a session's hash that holds task `id`.
fn task_field(id: &str) -> String {
    format!("t:{id}")
}

/// How many times a lookup retries a takeover that lost a race.
const TAKEOVER_ATTEMPTS: usize = 3;

fn session_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:s:{{{id}}}")
}

fn events_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:s:{{{id}}}:ev")
}

fn task_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:t:{{{id}}}")
}

/// What a store's write was fenced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Session,
    Task,
}

/// What the session store needs to know of the HTTP settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionBounds {
    pub ttl_ms: u64,
    pub max_events: usize,
    pub pending_ops_max: usize,
}

/// What the shard does with a session or task another node took over.
type OnFenced = Box<dyn Fn(Kind, &str)>;

/// One shard's sessions in Redis.
pub(crate) struct RedisStore {
    me: Weak<RedisStore>,
    redis: Rc<Redis>,
    bounds: SessionBounds,
    queue: RefCell<Vec<Op>>,
    in_flight: Cell<bool>,
    /// Write-through: a flush is scheduled for the next executor turn.
    kicked: Cell<bool>,
    /// The owner epoch of every session this shard writes.
    epochs: RefCell<HashMap<String, u64>>,
    /// The owner epoch of every modern task this shard writes.
    task_epochs: RefCell<HashMap<String, u64>>,
    /// Called with a session or task another node has taken over.
    on_fenced: RefCell<Option<OnFenced>>,
    /// Called with each SSE event Redis acknowledged: (session, stream,
    /// seq).
    on_durable: RefCell<Option<OnDurable>>,
}

type OnDurable = Box<dyn Fn(&str, u64, u64)>;

impl RedisStore {
    pub fn new(redis: Rc<Redis>, bounds: SessionBounds) -> Rc<Self> {
        Rc::new_cyclic(|me| Self {
            me: me.clone(),
            redis,
            bounds,
            queue: RefCell::new(Vec::new()),
            in_flight: Cell::new(false),
            kicked: Cell::new(false),
            epochs: RefCell::new(HashMap::new()),
            task_epochs: RefCell::new(HashMap::new()),
            on_fenced: RefCell::new(None),
            on_durable: RefCell::new(None),
        })
    }

    /// Nothing queued and nothing in flight.
    pub fn flushed(&self) -> bool {
        self.queue.borrow().is_empty() && !self.in_flight.get()
    }

    pub fn on_durable(&self, f: impl Fn(&str, u64, u64) + 'static) {
        *self.on_durable.borrow_mut() = Some(Box::new(f));
    }

    pub fn on_fenced(&self, f: impl Fn(Kind, &str) + 'static) {
        *self.on_fenced.borrow_mut() = Some(Box::new(f));
    }

    fn epoch_of(&self, id: &str) -> u64 {
        // A session first written here was created here: epoch 1.
        *self.epochs.borrow_mut().entry(id.to_owned()).or_insert(1)
    }

    /// A session's epoch for a write to one of its tasks (which does not
    /// make the session one this shard writes).
    fn session_epoch(&self, id: &str) -> u64 {
        self.epochs.borrow().get(id).copied().unwrap_or(1)
    }

    fn task_epoch_of(&self, id: &str) -> u64 {
        // A task first written here was made here: epoch 1.
        *self
            .task_epochs
            .borrow_mut()
            .entry(id.to_owned())
            .or_insert(1)
    }

    /// Sends one batch and reports fenced sessions.
    async fn write(self: Rc<Self>, batch: Vec<Op>) {
        let prefix = self.redis.cfg.key_prefix.clone();
        let node = self.redis.cfg.node_id.clone();
        let ttl = self.bounds.ttl_ms.to_string();
        let client = self.redis.client();
        let mut calls = Vec::new();
        // The SSE events of the batch, in order: written again if their
        // write fails (events only: a record retried after a newer one
        // was written would overwrite it).
        let mut events: Vec<Option<(String, u64, u64, Bytes)>> = Vec::new();
        let mut gone = Vec::new();
        let mut tasks_gone = Vec::new();
        for op in batch {
            let mut event = None;
            let (kind, id, keys, script, args): (Kind, String, Vec<String>, &str, Vec<Value>) =
                match op {
                    Op::PutSession(id, rec) => {
                        let epoch = self.epoch_of(&id);
                        let key = session_key(&prefix, &id);
                        let rec = seal(&self.redis, SEALED_SESSION, &key, rec);
                        let args = vec![
                            node.as_str().into(),
                            epoch.to_string().into(),
                            Value::Bytes(rec.into()),
                            ttl.as_str().into(),
                        ];
                        let keys = vec![key];
                        (Kind::Session, id, keys, PUT_RECORD, args)
                    }
                    Op::PutEvent(key, frame) => {
                        let Some((id, stream, seq)) = parse_event_key(&key) else {
                            continue;
                        };
                        let id = id.to_owned();
                        let epoch = self.epoch_of(&id);
                        event = Some((id.clone(), stream, seq, frame.clone()));
                        let position = format!("{stream:x}/{seq:x}");
                        let name = field_name(&events_key(&prefix, &id), &position);
                        let frame = match self.redis.cfg.keys {
                            Some(_) => {
                                seal(&self.redis, SEALED_EVENT, &name, frame.to_vec()).into()
                            }
                            None => frame,
                        };
                        let args = vec![
                            node.as_str().into(),
                            epoch.to_string().into(),
                            position.into(),
                            Value::Bytes(frame),
                            self.bounds.max_events.to_string().into(),
                            ttl.as_str().into(),
                        ];
                        let keys = vec![session_key(&prefix, &id), events_key(&prefix, &id)];
                        (Kind::Session, id, keys, PUT_EVENT, args)
                    }
                    Op::DelSession(id) => {
                        let epoch = self.epoch_of(&id);
                        gone.push(id.clone());
                        let args = vec![node.as_str().into(), epoch.to_string().into()];
                        let keys = vec![session_key(&prefix, &id), events_key(&prefix, &id)];
                        (Kind::Session, id, keys, DEL_RECORD, args)
                    }
                    // Capped by the stream's MAXLEN instead.
                    Op::DelEvent(_) => continue,
                    Op::PutTask(t) => match t.session {
                        Some(sid) => {
                            let key = session_key(&prefix, &sid);
                            let field = task_field(&t.id);
                            let name = field_name(&key, &field);
                            let record = seal(&self.redis, SEALED_TASK, &name, t.record);
                            let args = vec![
                                node.as_str().into(),
                                self.session_epoch(&sid).to_string().into(),
                                field.into(),
                                Value::Bytes(record.into()),
                                ttl.as_str().into(),
                            ];
                            let keys = vec![key];
                            (Kind::Session, sid, keys, PUT_FIELD, args)
                        }
                        None => {
                            let left_ms = t.expires_at_ms.saturating_sub(now_ms());
                            if left_ms == 0 {
                                continue; // expired: its deletion follows
                            }
                            let key = task_key(&prefix, &t.id);
                            let record = seal(&self.redis, SEALED_TASK, &key, t.record);
                            let args = vec![
                                node.as_str().into(),
                                self.task_epoch_of(&t.id).to_string().into(),
                                Value::Bytes(record.into()),
                                left_ms.to_string().into(),
                            ];
                            let keys = vec![key];
                            (Kind::Task, t.id, keys, PUT_RECORD, args)
                        }
                    },
                    Op::DelTask { id, session } => match session {
                        Some(sid) => {
                            let args = vec![
                                node.as_str().into(),
                                self.session_epoch(&sid).to_string().into(),
                                task_field(&id).into(),
                            ];
                            let keys = vec![session_key(&prefix, &sid)];
                            (Kind::Session, sid, keys, DEL_FIELD, args)
                        }
                        None => {
                            let epoch = self.task_epoch_of(&id);
                            tasks_gone.push(id.clone());
                            let args = vec![node.as_str().into(), epoch.to_string().into()];
                            let keys = vec![task_key(&prefix, &id)];
                            (Kind::Task, id, keys, DEL_RECORD, args)
                        }
                    },
                };
            events.push(event);
            calls.push(async move {
                let r: Result<i64, _> = client.eval(script, keys, args).await;
                (kind, id, r)
            });
        }
        if !calls.is_empty() {
            let n = calls.len() as u64;
            let results = self
                .redis
                .call(Purpose::Background, n, async { Ok(join_all(calls).await) })
                .await;
            let mut retry = Vec::new();
            match results {
                Ok(results) => {
                    for ((kind, id, r), event) in results.into_iter().zip(events) {
                        match r {
                            Ok(0) => self.fenced(kind, &id),
                            Ok(_) => {
                                if let Some((sid, stream, seq, _)) = event {
                                    self.durable(&sid, stream, seq);
                                }
                            }
                            Err(e) => {
                                log::warn!("writing session {id} to Redis: {e}");
                                retry.extend(event);
                            }
                        }
                    }
                }
                Err(e) => {
                    log::warn!("writing sessions to Redis: {e}");
                    retry.extend(events.into_iter().flatten());
                }
            }
            retry.retain(|(sid, ..)| !gone.contains(sid));
            self.write_again(retry);
        }
        for id in gone {
            self.epochs.borrow_mut().remove(&id);
        }
        for id in tasks_gone {
            self.task_epochs.borrow_mut().remove(&id);
        }
        self.in_flight.set(false);
        if self.redis.cfg.sync_events {
            // Group commit: what queued up meanwhile goes out at once.
            self.flush();
        }
    }

    /// Tells the shard that an event is in Redis.
    fn durable(&self, session: &str, stream: u64, seq: u64) {
        if let Some(f) = self.on_durable.borrow().as_ref() {
            f(session, stream, seq);
        }
    }

    /// Queues events whose write failed ahead of everything queued since,
    /// so they go out first once Redis answers again; within
    /// `pending_ops_max` (past it they are dropped, and logged).
    fn write_again(&self, events: Vec<(String, u64, u64, Bytes)>) {
        if events.is_empty() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        let room = self.bounds.pending_ops_max.saturating_sub(q.len());
        if events.len() > room {
            log::warn!(
                "{} SSE event(s) could not be written to Redis and the write queue is full; dropped",
                events.len() - room
            );
        }
        let again = events
            .into_iter()
            .take(room)
            .map(|(sid, stream, seq, frame)| Op::PutEvent(event_key(&sid, stream, seq), frame));
        q.splice(0..0, again);
    }

    fn fenced(&self, kind: Kind, id: &str) {
        let what = match kind {
            Kind::Session => {
                self.epochs.borrow_mut().remove(id);
                "session"
            }
            Kind::Task => {
                self.task_epochs.borrow_mut().remove(id);
                "task"
            }
        };
        log::warn!("{what} {id} was taken over by another node; dropped here");
        if let Some(f) = self.on_fenced.borrow().as_ref() {
            f(kind, id);
        }
    }

    /// Refreshes the expiry of every session this shard writes (their keys
    /// would otherwise expire while a session is used without changing).
    pub async fn refresh(&self) {
        let prefix = &self.redis.cfg.key_prefix;
        let ids: Vec<String> = self.epochs.borrow().keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let client = self.redis.client();
        let ttl = self.bounds.ttl_ms as i64;
        let calls = ids.iter().flat_map(|id| {
            [session_key(prefix, id), events_key(prefix, id)]
                .map(|k| async move { client.pexpire::<i64, _>(k, ttl, None).await })
        });
        let n = 2 * ids.len() as u64;
        let _ = self
            .redis
            .call(Purpose::Background, n, async { Ok(join_all(calls).await) })
            .await;
    }
}

impl Store for RedisStore {
    fn push(&self, op: Op) -> bool {
        let event = matches!(op, Op::PutEvent(..));
        {
            let mut q = self.queue.borrow_mut();
            if q.len() >= self.bounds.pending_ops_max {
                return false;
            }
            q.push(op);
        }
        if event && self.redis.cfg.sync_events && !self.kicked.replace(true) {
            // Write-through: an event's reader waits for its write, so it
            // goes out at the next turn of the executor (with whatever else
            // was queued by then), not at the next flush interval.
            let me = self.me.upgrade().expect("the store is alive while used");
            glommio::spawn_local(async move {
                me.kicked.set(false);
                me.flush();
            })
            .detach();
        }
        true
    }

    fn flush(&self) -> bool {
        if self.queue.borrow().is_empty() {
            return true;
        }
        if self.in_flight.get() || !self.redis.connected() {
            return false;
        }
        let batch = std::mem::take(&mut *self.queue.borrow_mut());
        self.in_flight.set(true);
        let me = self.me.upgrade().expect("the store is alive while used");
        glommio::spawn_local(me.write(batch)).detach();
        true
    }
}

/// Where a session this node does not hold lives, as Redis says.
pub(crate) enum Whereabouts {
    Missing,
    Remote {
        node: String,
        addr: String,
    },
    Adopt {
        record: Vec<u8>,
        events: Vec<(u64, u64, Vec<u8>)>,
        /// The session's tasks: (task id, record).
        tasks: Vec<(String, Vec<u8>)>,
    },
}

/// What a takeover script gave.
enum TakeOver {
    Gone,
    /// Another node moved it first: look again.
    Moved,
    Taken {
        epoch: u64,
        record: Vec<u8>,
        tasks: Vec<(String, Vec<u8>)>,
    },
}

/// The owner and epoch a record's hash names, if it exists.
async fn owner_and_epoch(redis: &Redis, key: &str) -> Result<Option<(String, String)>, String> {
    let client = redis.client();
    let (owner, epoch): (Option<String>, Option<String>) = redis
        .call(Purpose::Request, 1, async {
            client.hmget(key, vec!["owner", "epoch"]).await
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(owner.zip(epoch))
}

/// Moves the record at `keys[0]` from `owner` (at `epoch`) to this node;
/// `ttl_ms` 0 keeps the keys' expiry.
async fn take_over(
    redis: &Redis,
    keys: Vec<String>,
    owner: &str,
    epoch: &str,
    ttl_ms: u64,
) -> Result<TakeOver, String> {
    let args: Vec<Value> = vec![
        owner.into(),
        epoch.into(),
        redis.cfg.node_id.as_str().into(),
        ttl_ms.to_string().into(),
    ];
    let client = redis.client();
    let taken: Vec<Value> = redis
        .call(Purpose::Request, 1, async {
            client.eval(TAKE_OVER, keys, args).await
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(match taken.first().and_then(Value::as_i64) {
        Some(0) => TakeOver::Gone,
        Some(2) => {
            let epoch: u64 = taken
                .get(1)
                .and_then(Value::as_string)
                .and_then(|e| e.parse().ok())
                .ok_or("malformed takeover reply")?;
            let record = taken
                .get(2)
                .and_then(Value::as_bytes)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let tasks = taken[3.min(taken.len())..]
                .chunks_exact(2)
                .filter_map(|kv| Some((kv[0].as_string()?, kv[1].as_bytes()?.to_vec())))
                .collect();
            TakeOver::Taken {
                epoch,
                record,
                tasks,
            }
        }
        _ => TakeOver::Moved,
    })
}

/// Looks session `id` up; takes it over when its owner is dead (or is this
/// node, restarted). On a takeover, `store` learns the new epoch before the
/// caller restores the session. `creator` is the node the id names: a
/// session not yet in Redis (its record is written behind its `initialize`)
/// is still its creator's while that node lives.
pub(crate) async fn locate(
    redis: &Redis,
    store: &RedisStore,
    id: &str,
    creator: Option<&str>,
) -> Result<Whereabouts, String> {
    if store.epochs.borrow().contains_key(id) {
        // Written by this shard but no longer held: it ended here and its
        // deletion is on its way to Redis.
        return Ok(Whereabouts::Missing);
    }
    let cfg = &redis.cfg;
    let key = session_key(&cfg.key_prefix, id);
    let ev_key = events_key(&cfg.key_prefix, id);
    for _ in 0..TAKEOVER_ATTEMPTS {
        let Some((owner, epoch)) = owner_and_epoch(redis, &key).await? else {
            return Ok(match live_creator(redis, creator).await? {
                Some((node, addr)) => Whereabouts::Remote { node, addr },
                None => Whereabouts::Missing,
            });
        };
        if owner != cfg.node_id {
            if let Some(addr) = advertised(redis, &owner).await? {
                return Ok(Whereabouts::Remote { node: owner, addr });
            }
        }
        // Its owner is dead (no heartbeat key), or is this node without it.
        let keys = vec![key.clone(), ev_key.clone()];
        match take_over(redis, keys, &owner, &epoch, store.bounds.ttl_ms).await? {
            TakeOver::Gone => return Ok(Whereabouts::Missing),
            TakeOver::Moved => continue,
            TakeOver::Taken {
                epoch,
                record,
                tasks,
            } => {
                let events = load_events(redis, &ev_key).await?;
                store.epochs.borrow_mut().insert(id.to_owned(), epoch);
                let Some(record) = open(redis, SEALED_SESSION, &key, &record) else {
                    return Ok(Whereabouts::Missing);
                };
                let tasks: Vec<(String, Vec<u8>)> = tasks
                    .into_iter()
                    .filter_map(|(task, v)| {
                        let name = field_name(&key, &task_field(&task));
                        Some((task, open(redis, SEALED_TASK, &name, &v)?))
                    })
                    .collect();
                log::info!(
                    "took session {id} over from node {owner} (epoch {epoch}, {} event(s), {} task(s))",
                    events.len(),
                    tasks.len()
                );
                return Ok(Whereabouts::Adopt {
                    record,
                    events,
                    tasks,
                });
            }
        }
    }
    Err(format!(
        "session {id} kept moving between nodes; retry later"
    ))
}

/// The node an id names and its address, while it lives (and is not this
/// node).
async fn live_creator(
    redis: &Redis,
    creator: Option<&str>,
) -> Result<Option<(String, String)>, String> {
    let Some(c) = creator.filter(|c| *c != redis.cfg.node_id) else {
        return Ok(None);
    };
    Ok(advertised(redis, c).await?.map(|addr| (c.to_owned(), addr)))
}

/// The live node other than this one that holds modern task `id`, and its
/// address; None when no live node does (its maker and every later owner
/// are dead, or it is this node's).
pub(crate) async fn task_holder(
    redis: &Redis,
    id: &str,
) -> Result<Option<(String, String)>, String> {
    let key = task_key(&redis.cfg.key_prefix, id);
    match owner_and_epoch(redis, &key).await? {
        None => live_creator(redis, placement::node_of(id)).await,
        Some((owner, _)) => live_creator(redis, Some(&owner)).await,
    }
}

/// Claims modern task `id` for this shard (see `Shared::claim_task`).
pub(crate) async fn claim_task(
    redis: &Redis,
    store: &RedisStore,
    id: &str,
) -> Result<Claimed, String> {
    let key = task_key(&redis.cfg.key_prefix, id);
    for _ in 0..TAKEOVER_ATTEMPTS {
        if store.task_epochs.borrow().contains_key(id) {
            return Ok(Claimed::Held); // claimed by another request meanwhile
        }
        let Some((owner, epoch)) = owner_and_epoch(redis, &key).await? else {
            // Never written, or expired: unless its maker lives (and the
            // request reached the wrong node), it is gone.
            return match live_creator(redis, placement::node_of(id)).await? {
                Some((node, _)) => Err(format!("task {id} is held by node {node}; retry")),
                None => Ok(Claimed::Gone),
            };
        };
        if let Some((node, _)) = live_creator(redis, Some(&owner)).await? {
            return Err(format!("task {id} is held by node {node}; retry"));
        }
        match take_over(redis, vec![key.clone()], &owner, &epoch, 0).await? {
            TakeOver::Gone => return Ok(Claimed::Gone),
            TakeOver::Moved => continue,
            TakeOver::Taken { epoch, record, .. } => {
                // Another request of this shard may have claimed it while
                // this one waited: the later epoch is the one that writes.
                store.task_epochs.borrow_mut().insert(id.to_owned(), epoch);
                log::info!("took task {id} over from node {owner} (epoch {epoch})");
                let Some(record) = open(redis, SEALED_TASK, &key, &record) else {
                    return Ok(Claimed::Gone);
                };
                return Ok(Claimed::Taken(record));
            }
        }
    }
    Err(format!("task {id} kept moving between nodes; retry later"))
}

/// The address a live node advertises; None when it is dead.
async fn advertised(redis: &Redis, node: &str) -> Result<Option<String>, String> {
    let key = node_key(&redis.cfg.key_prefix, node);
    redis
        .call(Purpose::Request, 1, async {
            redis.client().hget(&key, "advertise").await
        })
        .await
        .map_err(|e| e.to_string())
}

/// A session's event log, in (stream, seq) order.
async fn load_events(redis: &Redis, key: &str) -> Result<Vec<(u64, u64, Vec<u8>)>, String> {
    let client = redis.client();
    let entries: Vec<(String, HashMap<String, Value>)> = redis
        .call(Purpose::Request, 1, async {
            client.xrange(key, "-", "+", None).await
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut events: Vec<(u64, u64, Vec<u8>)> = entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let k = fields.get("k")?.as_string()?;
            let (stream, seq) = k.split_once('/')?;
            let stream = u64::from_str_radix(stream, 16).ok()?;
            let seq = u64::from_str_radix(seq, 16).ok()?;
            let frame = fields.get("f")?.as_bytes()?;
            let frame = open(redis, SEALED_EVENT, &field_name(key, &k), frame)?;
            Some((stream, seq, frame))
        })
        .collect();
    events.sort_by_key(|&(stream, seq, _)| (stream, seq));
    // A write retried after a lost reply may have added an event twice.
    events.dedup_by_key(|e| (e.0, e.1));
    Ok(events)
}
