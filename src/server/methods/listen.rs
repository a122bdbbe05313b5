//! `subscriptions/listen` (2026-07-28): acknowledges, then streams the
//! notifications the client asked for until it goes away or the server
//! stops.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use super::super::core::Core;
use super::super::dispatch::Req;
use super::super::encode;
use super::super::listen::{Filter, Listener, Tagged, LISTEN_TASKS_MAX};
use super::super::session::{Inflight, Session};
use super::super::{watch, Answer, Handled, Pending, PendingAnswer, SharedNotifier};
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc::{self, Id};

pub(crate) fn listen(
    session: &mut Session,
    core: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::OtherRequest;
    let Some(mut filter) = Filter::parse(req.params.as_ref().and_then(|p| p.get("notifications")))
    else {
        let msg = "subscriptions/listen needs params.notifications (a SubscriptionFilter object)";
        return Handled::err(
            kind,
            encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg),
        );
    };
    let Some(related) = req.related else {
        let msg = "subscriptions/listen needs a streaming response (Accept: text/event-stream)";
        return Handled::err(
            kind,
            encode::error(out, &req.id, jsonrpc::INVALID_REQUEST, msg),
        );
    };
    // Honour only what this server can send.
    filter.prompts &= core.registry().has_prompts();
    filter.resources &= core.registry().has_resources();
    filter
        .resource_uris
        .retain(|u| core.registry().resource_exists(u));
    if !crate::server::dispatch::modern_caps(req).tasks_extension {
        filter.task_ids.clear();
    }
    filter.task_ids.truncate(LISTEN_TASKS_MAX);
    let id_json = req.id.to_owned_bytes();
    let sink: SharedNotifier = Rc::new(Tagged {
        inner: related.clone(),
        id_json: id_json.clone(),
    });
    let mut ack = Vec::with_capacity(160);
    ack.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/subscriptions/acknowledged\",\"params\":{\"notifications\":");
    ack.extend_from_slice(filter.to_json().as_bytes());
    ack.extend_from_slice(b"}}");
    sink.notify(&ack);

    let lid = core.register_subscriber(sink.clone(), None);
    let uris = filter.resource_uris.clone();
    for u in &uris {
        if let watch::WatchOp::Remote(f) = watch::watch(core, u.clone(), lid) {
            glommio::spawn_local(async move {
                let _ = f.await;
            })
            .detach();
        }
    }
    core.listeners
        .borrow_mut()
        .insert(lid, Listener { filter, sink });
    session.listens.borrow_mut().insert(lid);
    core.metrics.borrow_mut().counters.listen_streams += 1;

    let guard = Unlisten {
        core: core.clone(),
        lid,
        uris,
        listens: session.listens.clone(),
    };
    let inflight: Rc<Inflight> = session.inflight.clone();
    inflight.begin_long_lived(&id_json);
    let track = id_json.clone();
    let core = core.clone();
    let fut: PendingAnswer = Box::pin(async move {
        let _guard = guard;
        core.shutdown.wait().await;
        inflight.finish(&id_json);
        // Graceful end: a SubscriptionsListenResult naming the subscription.
        let mut bytes = Vec::with_capacity(160);
        jsonrpc::begin_result(&mut bytes, &Id::Encoded(&id_json));
        bytes.extend_from_slice(
            b"{\"resultType\":\"complete\",\"_meta\":{\"io.modelcontextprotocol/subscriptionId\":",
        );
        bytes.extend_from_slice(&id_json);
        bytes.extend_from_slice(b"}}");
        jsonrpc::end_response(&mut bytes);
        // Not recorded in the latency histograms: a stream's lifetime is not
        // a request's service time.
        Answer { bytes, error: None }
    });
    Handled::later(
        kind,
        Pending {
            fut,
            id: Some(track),
            long_lived: true,
        },
    )
}

/// Takes a listen stream down when its request ends.
struct Unlisten {
    core: Rc<Core>,
    lid: u64,
    uris: Vec<String>,
    listens: Rc<RefCell<HashSet<u64>>>,
}

impl Drop for Unlisten {
    fn drop(&mut self) {
        self.core.listeners.borrow_mut().remove(&self.lid);
        self.core.subscribers.borrow_mut().remove(&self.lid);
        self.listens.borrow_mut().remove(&self.lid);
        for u in &self.uris {
            watch::unwatch(&self.core, u, self.lid);
        }
    }
}
