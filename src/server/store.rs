//! What a shard keeps across restarts (`--data-dir`), as the layers above
//! the store see it: operations queued to a [`Store`], and what a shard's
//! file held when it started ([`Loaded`]). The store itself (files, a writer
//! thread, durability) is an adapter; nothing here touches a disk.

/// One change to a shard's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    PutSession(String, Vec<u8>),
    /// Removes the session and all its events.
    DelSession(String),
    PutEvent(String, bytes::Bytes),
    DelEvent(String),
    PutTask(TaskWrite),
    /// Removes a task (`session`: the legacy session it belongs to).
    DelTask {
        id: String,
        session: Option<String>,
    },
}

/// A task's record on its way to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskWrite {
    pub id: String,
    /// The legacy session the task belongs to (a cluster keeps the task
    /// with the session, so it moves with it).
    pub session: Option<String>,
    /// When the task expires (Unix ms): a store may forget it then.
    pub expires_at_ms: u64,
    pub record: Vec<u8>,
}

impl Op {
    /// The write's span name (a traced request's store write).
    pub fn span_name(&self) -> &'static str {
        match self {
            Op::PutSession(..) => "store put_session",
            Op::DelSession(_) => "store delete_session",
            Op::PutEvent(..) => "store put_event",
            Op::DelEvent(_) => "store delete_event",
            Op::PutTask(_) => "store put_task",
            Op::DelTask { .. } => "store delete_task",
        }
    }
}

/// Where a shard's changes go. Never blocks: a full buffer refuses.
pub(crate) trait Store {
    /// Queues `op`; false when it was dropped at the buffer's bound.
    fn push(&self, op: Op) -> bool;
    /// Queues `op` of a traced request; `span` is finished once the write
    /// is committed. A store that cannot report its commits (Redis, where
    /// the shard's own client writes) records no span.
    fn push_traced(&self, op: Op, span: super::trace::DetachedSpan) -> bool {
        let _ = span;
        self.push(op)
    }
    /// Hands what is queued to the writer, if it has room; true when
    /// nothing is left.
    fn flush(&self) -> bool;
}

/// The key of event `seq` of `stream` of `session`.
pub(crate) fn event_key(session: &str, stream: u64, seq: u64) -> String {
    format!("{session}/{stream:016x}/{seq:016x}")
}

/// `(session, stream, seq)` of an event key.
pub(crate) fn parse_event_key(key: &str) -> Option<(&str, u64, u64)> {
    let mut parts = key.split('/');
    let session = parts.next()?;
    let stream = u64::from_str_radix(parts.next()?, 16).ok()?;
    let seq = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((session, stream, seq))
}

/// What a shard's file held when it started.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub sessions: Vec<(String, Vec<u8>)>,
    /// In key order: by session, stream, seq.
    pub events: Vec<(String, Vec<u8>)>,
    pub tasks: Vec<(String, Vec<u8>)>,
    /// Records skipped because they did not open (`adapters::seal`).
    pub unreadable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_round_trip_and_sort_by_stream_then_seq() {
        let k = event_key("abc", 2, 17);
        assert_eq!(parse_event_key(&k), Some(("abc", 2, 17)));
        assert!(event_key("abc", 1, 900) < event_key("abc", 2, 1));
        assert_eq!(parse_event_key("abc/zz/1"), None);
        assert_eq!(parse_event_key("abc/1/2/3"), None);
    }
}
