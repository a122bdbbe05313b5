//! MCP semantics for both spec eras, without I/O.
//!
//! A transport hands [`session::Session::handle_message`] the bytes of one
//! complete message and an output buffer; the session parses the message in
//! place, runs the method through the one dispatch table
//! ([`dispatch`]), and appends the response to the buffer. Methods that must
//! wait (async handlers, cross-core hops, questions to the client) return a
//! [`Pending`] future that yields the encoded answer; the transport polls it
//! on the same shard and registers it so `notifications/cancelled` can stop
//! it.
//!
//! Era is decided per message: a request whose `_meta` names a modern
//! protocol version (2026-07-28) is served statelessly from that metadata;
//! anything else follows the legacy lifecycle of its session (`initialize`
//! first). Both can share one connection. What differs between the eras on
//! the wire lives in [`encode`].
//!
//! Server-to-client messages leave through [`Notifier`]s: the *related* one
//! passed with a request (its progress, logs, questions to the client) and the
//! session's *unrelated* one (list changes, resource updates), so the
//! transport decides where each lands.
//!
//! What this layer needs from outside (the other shards, a store, an audit
//! log, files) it reaches through small traits ([`msg::Link`],
//! [`store::Store`], [`audit::AuditSink`], [`registry::ResourceSource`])
//! implemented by adapters and wired by the composition root.

pub(crate) mod api;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod builtin;
pub(crate) mod clock;
pub(crate) mod content;
pub(crate) mod core;
pub(crate) mod ctx;
pub(crate) mod dispatch;
pub(crate) mod encode;
pub(crate) mod jwt;
pub(crate) mod kv;
pub(crate) mod listen;
pub(crate) mod methods;
pub(crate) mod mrtr;
pub(crate) mod msg;
pub(crate) mod placement;
pub(crate) mod ratelimit;
pub(crate) mod registry;
pub(crate) mod schema;
pub(crate) mod session;
pub(crate) mod shared;
pub(crate) mod skills;
pub(crate) mod store;
pub(crate) mod tasks;
pub(crate) mod tools;
pub(crate) mod trace;
pub(crate) mod watch;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::metrics::MethodKind;

/// Receives server-to-client JSON-RPC messages (one complete message, no
/// trailing newline). Must not block: transports queue or drop, and count.
pub(crate) trait Notifier {
    fn notify(&self, message: &[u8]);

    /// Ends the connection carrying this stream while the request goes on
    /// (Streamable HTTP, SEP-1699: the client resumes with `Last-Event-ID`).
    /// Transports whose streams cannot be resumed ignore it.
    fn close_stream(&self) {}
}

pub(crate) type SharedNotifier = Rc<dyn Notifier>;

/// The encoded answer to one request, and its JSON-RPC error code when it
/// is an error (as data: nobody reads the code back out of the bytes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// One response line; empty when the request ends without a response
    /// (a listen stream torn down, a cancelled request).
    pub bytes: Vec<u8>,
    pub error: Option<i32>,
}

/// A response that will be ready later.
pub(crate) type PendingAnswer = Pin<Box<dyn Future<Output = Answer>>>;

/// A deferred response and how the transport should treat it.
pub(crate) struct Pending {
    pub fut: PendingAnswer,
    /// The request id (JSON), for registering the task so it can be cancelled.
    pub id: Option<Box<[u8]>>,
    /// A stream that lives until the client goes away (`subscriptions/listen`):
    /// it does not hold a closing connection open.
    pub long_lived: bool,
}

/// What handling one message did.
pub(crate) struct Handled {
    pub kind: MethodKind,
    pub pending: Option<Pending>,
    /// The code of the JSON-RPC error written, when one was.
    pub error: Option<i32>,
}

impl Handled {
    /// Answered now with a result.
    pub fn ok(kind: MethodKind) -> Self {
        Self {
            kind,
            pending: None,
            error: None,
        }
    }

    /// Answered now with the JSON-RPC error `code`.
    pub fn err(kind: MethodKind, code: i32) -> Self {
        Self {
            kind,
            pending: None,
            error: Some(code),
        }
    }

    /// Answered now: with an error when `error` holds its code.
    pub fn done(kind: MethodKind, error: Option<i32>) -> Self {
        Self {
            kind,
            pending: None,
            error,
        }
    }

    /// Answered later.
    pub fn later(kind: MethodKind, pending: Pending) -> Self {
        Self {
            kind,
            pending: Some(pending),
            error: None,
        }
    }
}
