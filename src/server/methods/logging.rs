//! `logging/setLevel` (legacy): which `notifications/message` the session
//! gets from its handlers.

use std::rc::Rc;

use super::super::content::LogLevel;
use super::super::core::Core;
use super::super::dispatch::Req;
use super::super::encode::{self, Era};
use super::super::session::Session;
use super::super::Handled;
use crate::metrics::MethodKind;
use crate::protocol::jsonrpc;

pub(crate) fn set_level(
    session: &mut Session,
    _: &Rc<Core>,
    req: &Req<'_, '_>,
    out: &mut Vec<u8>,
) -> Handled {
    let kind = MethodKind::OtherRequest;
    match req.str_param("level").and_then(LogLevel::parse) {
        Some(l) => {
            if session.log_level != Some(l) {
                session.log_level = Some(l);
                session.changed();
            }
            encode::empty_result(out, &req.id, Era::Legacy);
            Handled::ok(kind)
        }
        None => {
            let msg = "logging/setLevel needs params.level: one of debug, info, notice, warning, error, critical, alert, emergency";
            Handled::err(
                kind,
                encode::error(out, &req.id, jsonrpc::INVALID_PARAMS, msg),
            )
        }
    }
}
