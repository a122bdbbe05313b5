//! One HTTP request at the MCP endpoint: checks that apply to every request
//! (path, Origin, Host, method, media types, size), then the era's rules.
//!
//! Modern (2026-07-28) requests are served here, statelessly, on whatever
//! shard received them: no session, no hop. Legacy requests belong to a
//! session and are served by the shard that owns it (`session`, `forward`).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use simd_json::prelude::*;

use super::body::{sse_event, trim_newline, McpBody, McpResponse, OutBody, SseSource};
use super::forward::{self, Accepts, HttpCall, HttpMethod};
use super::session;
use crate::config::HttpConfig;
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::mcp::{self, code, meta};
use crate::protocol::PARSE_PADDING;
use crate::runtime::local::Pipe;
use crate::runtime::shard::Shard;
use crate::server::auth::{self, AuthConfig};
use crate::server::ratelimit::Principal;
use crate::server::{account, kv, Notifier, Session, SharedNotifier};

/// Serves one HTTP request; `peer` is the client's address (the rate-limit
/// principal of requests without a session).
pub async fn handle(
    shard: Rc<Shard>,
    req: Request<Incoming>,
    peer: Option<IpAddr>,
) -> Response<OutBody> {
    let cfg = shard.http.clone().expect("HTTP configured");
    let resp = route(&shard, &cfg, req, peer).await;
    if resp.status >= 400 && resp.status != 404 && resp.status != 503 {
        shard.metrics.borrow_mut().counters.http_rejected += 1;
    }
    resp.into_hyper(&shard, &cfg)
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn reject(status: u16, code: i32, message: &str) -> McpResponse {
    McpResponse::rpc_error(status, &Id::Null, code, message)
}

/// Which response forms an `Accept` header allows (absent: any).
pub fn parse_accept(value: Option<&str>) -> Accepts {
    let Some(value) = value else {
        return Accepts {
            json: true,
            sse: true,
        };
    };
    let mut a = Accepts {
        json: false,
        sse: false,
    };
    for item in value.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.starts_with("q=0") && p[2..].trim_start_matches(['0', '.']).is_empty()
        });
        if refused {
            continue;
        }
        match media.as_str() {
            "*/*" => {
                a.json = true;
                a.sse = true;
            }
            "application/json" | "application/*" => a.json = true,
            "text/event-stream" | "text/*" => a.sse = true,
            _ => {}
        }
    }
    a
}

/// Loopback origins are always allowed; others only when configured.
fn origin_allowed(origin: &str, cfg: &HttpConfig) -> bool {
    if cfg
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    is_loopback_name(host_part(rest))
}

/// `host[:port]` (with `[v6]` brackets kept) to its host.
fn host_part(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return hostport.split_inclusive(']').next().unwrap_or(hostport);
    }
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "[::1]"
}

fn host_allowed(host: &str, cfg: &HttpConfig) -> bool {
    let name = host_part(host);
    if is_loopback_name(name) {
        return true;
    }
    let bound = cfg.addr.ip();
    if !bound.is_unspecified() {
        let bound_name = match bound {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if name == bound_name {
            return true;
        }
    }
    cfg.allowed_hosts
        .iter()
        .any(|h| h == "*" || h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host))
}

async fn route(
    shard: &Rc<Shard>,
    cfg: &HttpConfig,
    req: Request<Incoming>,
    peer: Option<IpAddr>,
) -> McpResponse {
    if let Some(auth) = &cfg.auth {
        if req.uri().path().starts_with(auth::METADATA_PATH) && req.method() == Method::GET {
            return protected_resource_metadata(auth, cfg, req.headers());
        }
    }
    if req.uri().path() != cfg.path {
        let msg = format!("Not Found: the MCP endpoint is {}", cfg.path);
        return reject(404, jsonrpc::INVALID_REQUEST, &msg);
    }
    let h = req.headers();
    if let Some(origin) = header(h, "origin") {
        if !origin_allowed(origin, cfg) {
            return reject(
                403,
                jsonrpc::INVALID_REQUEST,
                "Forbidden: Origin not allowed",
            );
        }
    }
    match header(h, "host") {
        Some(host) if host_allowed(host, cfg) => {}
        Some(_) => return reject(403, jsonrpc::INVALID_REQUEST, "Forbidden: Host not allowed"),
        None => {
            return reject(
                400,
                jsonrpc::INVALID_REQUEST,
                "Bad Request: Host header required",
            )
        }
    }
    let principal = match &cfg.auth {
        None => None,
        Some(auth) => match authenticate(auth, cfg, h) {
            Ok(p) => Some(p),
            Err(r) => {
                shard.metrics.borrow_mut().counters.auth_failures += 1;
                audit_refusal(shard, h);
                return r;
            }
        },
    };
    let method = match *req.method() {
        Method::POST => HttpMethod::Post,
        Method::GET => HttpMethod::Get,
        Method::DELETE => HttpMethod::Delete,
        _ => {
            return reject(
                405,
                jsonrpc::INVALID_REQUEST,
                "Method Not Allowed: use POST, GET or DELETE",
            )
            .with_header("allow", "GET, POST, DELETE")
        }
    };
    let accepts = parse_accept(header(h, "accept"));
    let version = header(h, "mcp-protocol-version").map(str::to_owned);
    let modern = version
        .as_deref()
        .is_some_and(|v| mcp::modern_version(v).is_some());
    let session_id = header(h, "mcp-session-id").map(str::to_owned);
    let last_event_id = header(h, "last-event-id").map(str::to_owned);
    let headers = h.clone();

    if method != HttpMethod::Post {
        if modern {
            // 2026-07-28 has no GET stream and no sessions to delete.
            return reject(
                405,
                jsonrpc::INVALID_REQUEST,
                "Method Not Allowed: this protocol version uses POST only",
            )
            .with_header("allow", "POST");
        }
        if let Some(v) = version.as_deref() {
            if !mcp::is_legacy_version(v) {
                return unsupported_version_header(v);
            }
        }
        let Some(session_id) = session_id else {
            return reject(
                400,
                jsonrpc::INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header required",
            );
        };
        let call = HttpCall {
            session_id,
            method,
            protocol_version: version,
            last_event_id,
            accepts,
            body: Vec::new(),
            principal,
        };
        return to_owner(shard, call).await;
    }

    // POST: every body is one JSON-RPC message.
    match header(&headers, "content-type") {
        Some(ct)
            if ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json") => {}
        _ => {
            return reject(
                415,
                jsonrpc::INVALID_REQUEST,
                "Unsupported Media Type: POST bodies must be application/json",
            )
        }
    }
    if !accepts.json && !accepts.sse {
        return reject(
            406,
            jsonrpc::INVALID_REQUEST,
            "Not Acceptable: accept application/json and/or text/event-stream",
        );
    }
    let body = match read_body(shard, cfg, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };

    // Requests without a session are limited per peer address here; a
    // session's requests at its owner (`session::serve_call`).
    if session_id.is_none() || modern {
        let who = match (&principal, peer) {
            (Some(p), _) => Some(Principal::User(p.principal.clone())),
            (None, Some(ip)) => Some(Principal::Peer(ip)),
            (None, None) => None,
        };
        if let Some(who) = who {
            if let Err(wait) = shard.rate_check(&who, std::time::Instant::now()) {
                return McpResponse::rate_limited(wait);
            }
        }
    }
    // A version we do not know is answered the modern way (-32022 with the
    // versions we support), echoing the request's id.
    if modern
        || version
            .as_deref()
            .is_some_and(|v| !mcp::is_legacy_version(v))
    {
        return modern_post(shard, &headers, accepts, body, principal.as_ref()).await;
    }
    if let Some(session_id) = session_id {
        let call = HttpCall {
            session_id,
            method,
            protocol_version: version,
            last_event_id: None,
            accepts,
            body,
            principal,
        };
        return to_owner(shard, call).await;
    }
    match peek(shard, body) {
        Peeked::Initialize(body) => session::initialize(shard, accepts, body, principal).await,
        // A modern request without its version header.
        Peeked::Modern(body) => {
            modern_post(shard, &headers, accepts, body, principal.as_ref()).await
        }
        Peeked::Other => reject(
            400,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header required",
        ),
        Peeked::Invalid(r) => r,
    }
}

/// The principal of a request's bearer token, or the 401 to answer: with
/// `WWW-Authenticate` naming the protected-resource metadata (RFC 9728) so a
/// client can find the authorization server.
fn authenticate(
    auth: &AuthConfig,
    cfg: &HttpConfig,
    h: &HeaderMap,
) -> Result<auth::Identity, McpResponse> {
    let presented = header(h, "authorization").and_then(auth::bearer);
    let refused = match presented.map(|t| auth.authenticate(t)) {
        Some(Ok(who)) => return Ok(who),
        Some(Err(why)) => Some(why),
        None => None,
    };
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        metadata_url(auth, cfg, h)
    );
    let message = match &refused {
        Some(why) => {
            // RFC 6750 3: the description is a quoted-string of printable
            // ASCII without quotes or backslashes.
            let clean: String = why
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
                .collect();
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{clean}\""
            ));
            log::info!("bearer token refused: {why}");
            format!("Unauthorized: {why}")
        }
        None => "Unauthorized: send Authorization: Bearer <token>".to_string(),
    };
    Err(reject(401, jsonrpc::INVALID_REQUEST, &message).with_header("www-authenticate", challenge))
}

/// Audits a request refused 401 (its body is never read, so the method is
/// the MCP-Method header when the client sent one).
fn audit_refusal(shard: &Shard, h: &HeaderMap) {
    let mut audit = shard.audit.borrow_mut();
    let Some(buf) = audit.as_mut() else {
        return;
    };
    let written = buf.record(&crate::server::audit::AuditRecord {
        principal: None,
        session: header(h, "mcp-session-id"),
        method: header(h, "mcp-method"),
        name: header(h, "mcp-name"),
        outcome: "unauthorized",
        code: None,
        latency_us: 0,
    });
    if !written {
        shard.metrics.borrow_mut().counters.audit_dropped += 1;
    }
}

/// This endpoint's resource URI: configured, or from the request's Host.
fn resource_uri(auth: &AuthConfig, cfg: &HttpConfig, h: &HeaderMap) -> String {
    auth.resource.clone().unwrap_or_else(|| {
        format!(
            "http://{}{}",
            header(h, "host").unwrap_or("localhost"),
            cfg.path
        )
    })
}

/// Where the metadata lives: the resource's origin, the well-known path,
/// then the resource's path (RFC 9728 section 3.1).
fn metadata_url(auth: &AuthConfig, cfg: &HttpConfig, h: &HeaderMap) -> String {
    let resource = resource_uri(auth, cfg, h);
    let (scheme, rest) = resource.split_once("://").unwrap_or(("http", &resource));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{host}{}{path}", auth::METADATA_PATH)
}

fn protected_resource_metadata(auth: &AuthConfig, cfg: &HttpConfig, h: &HeaderMap) -> McpResponse {
    let body = serde_json::json!({
        "resource": resource_uri(auth, cfg, h),
        "authorization_servers": auth.authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "tessera MCP server",
    });
    McpResponse::json(200, body.to_string().into_bytes())
}

fn unsupported_version_header(v: &str) -> McpResponse {
    let mut out = Vec::new();
    crate::server::write_unsupported_version(&mut out, &Id::Null, v);
    trim_newline(&mut out);
    McpResponse::json(400, out)
}

/// Reads the body within `max_message_bytes` and `body_timeout_ms`.
async fn read_body(
    shard: &Rc<Shard>,
    cfg: &HttpConfig,
    body: Incoming,
) -> Result<Vec<u8>, McpResponse> {
    let max = shard.limits.max_message_bytes;
    let limited = http_body_util::Limited::new(body, max);
    let timeout = Duration::from_millis(cfg.body_timeout_ms);
    let collected = futures_lite::future::or(async { Some(limited.collect().await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match collected {
        None => Err(reject(
            408,
            jsonrpc::INVALID_REQUEST,
            "Request Timeout: body not received in time",
        )),
        Some(Ok(c)) => Ok(c.to_bytes().to_vec()),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            shard.metrics.borrow_mut().counters.oversize_messages += 1;
            let msg =
                format!("Payload Too Large: bodies are limited to {max} bytes (max-message-bytes)");
            Err(reject(413, jsonrpc::INVALID_REQUEST, &msg))
        }
        Some(Err(_)) => Err(reject(
            400,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: the body could not be read",
        )),
    }
}

/// Sends a legacy session request to the shard that owns the session.
async fn to_owner(shard: &Rc<Shard>, call: HttpCall) -> McpResponse {
    let Some(owner) = session::owner_of(&call.session_id, shard.shard_count) else {
        return reject(404, jsonrpc::INVALID_REQUEST, "Session not found");
    };
    if owner == shard.id {
        return session::serve_call(shard, call).await;
    }
    match forward::relay(shard, owner, call).await {
        Ok(r) => r,
        Err(e) => {
            let err = kv::mesh_error(e, owner, shard.limits.mesh_timeout_ms);
            reject(503, err.code, &err.message).with_header("retry-after", "1")
        }
    }
}

enum Peeked {
    Initialize(Vec<u8>),
    Modern(Vec<u8>),
    Other,
    Invalid(McpResponse),
}

/// Classifies a session-less legacy POST without handling it.
fn peek(shard: &Rc<Shard>, body: Vec<u8>) -> Peeked {
    let (mut buf, len) = padded(body);
    let verdict = shard.parser.borrow_mut().parse(&mut buf, len, |parsed| {
        let root = match parsed {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("Parse error: {e}");
                return Err(McpResponse::rpc_error(
                    400,
                    &Id::Null,
                    jsonrpc::PARSE_ERROR,
                    &msg,
                ));
            }
        };
        match jsonrpc::classify(root) {
            Err(inv) => Err(McpResponse::rpc_error(400, &inv.id, inv.code, inv.message)),
            Ok(Message::Request { method, params, .. }) => {
                let declared = params
                    .as_ref()
                    .and_then(|p| p.get("_meta"))
                    .and_then(|m| m.get(meta::PROTOCOL_VERSION))
                    .is_some();
                Ok(if method == mcp::method::INITIALIZE {
                    1
                } else if method == mcp::method::DISCOVER || declared {
                    2
                } else {
                    0
                })
            }
            Ok(_) => Ok(0),
        }
    });
    buf.truncate(len);
    match verdict {
        Ok(1) => Peeked::Initialize(buf),
        Ok(2) => Peeked::Modern(buf),
        Ok(_) => Peeked::Other,
        Err(r) => Peeked::Invalid(r),
    }
}

fn padded(mut body: Vec<u8>) -> (Vec<u8>, usize) {
    let len = body.len();
    body.resize(len + PARSE_PADDING, b' ');
    (body, len)
}

/// Decodes a header value that may use the `=?base64?...?=` sentinel.
fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|x| x.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(v.to_owned()),
    }
}

/// The HTTP status a modern JSON-RPC error travels with.
fn modern_status(code: i32) -> u16 {
    match code {
        jsonrpc::METHOD_NOT_FOUND => 404,
        jsonrpc::PARSE_ERROR | jsonrpc::INVALID_REQUEST => 400,
        code::HEADER_MISMATCH
        | code::MISSING_REQUIRED_CLIENT_CAPABILITY
        | code::UNSUPPORTED_PROTOCOL_VERSION => 400,
        _ => 200,
    }
}

/// Reads `"code":N` back from an encoded error response.
fn error_code_of(out: &[u8]) -> Option<i32> {
    let at = memchr::memmem::find(out, b"\"error\":{\"code\":")? + 16;
    let rest = &out[at..];
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Progress for a modern SSE response: events without ids (modern streams
/// are not resumable); dropped, and counted, if the client is not reading.
struct ModernSink {
    pipe: Rc<Pipe<Bytes>>,
    shard: std::rc::Weak<Shard>,
}

impl Notifier for ModernSink {
    fn notify(&self, message: &[u8]) {
        if self.pipe.push(sse_event(None, message)).is_err() {
            if let Some(s) = self.shard.upgrade() {
                s.metrics.borrow_mut().counters.notifications_dropped += 1;
            }
        }
    }
}

enum ModernOutcome {
    Done(McpResponse),
    Answer {
        /// Where messages related to the request go, when the client
        /// accepts a stream.
        pipe: Option<Rc<Pipe<Bytes>>>,
        pending: Option<crate::server::Pending>,
        out: Vec<u8>,
        /// The client accepts only a stream.
        sse_only: bool,
    },
}

/// A 2026-07-28 request: validated against its headers, served statelessly.
///
/// The response is JSON unless the request produces a related message
/// (progress, a log line, a listen acknowledgement) before its result, or
/// the client accepts only a stream: then it becomes an SSE stream, the
/// form that can carry them.
async fn modern_post(
    shard: &Rc<Shard>,
    headers: &HeaderMap,
    accepts: Accepts,
    body: Vec<u8>,
    principal: Option<&auth::Identity>,
) -> McpResponse {
    let auth = shard.http.as_ref().and_then(|c| c.auth.as_deref());
    let (mut buf, len) = padded(body);
    let started = Instant::now();
    let outcome = shard.parser.borrow_mut().parse(&mut buf, len, |parsed| {
        let root = match parsed {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("Parse error: {e}");
                return ModernOutcome::Done(McpResponse::rpc_error(
                    400,
                    &Id::Null,
                    jsonrpc::PARSE_ERROR,
                    &msg,
                ));
            }
        };
        let msg = match jsonrpc::classify(root) {
            Ok(m) => m,
            Err(inv) => {
                return ModernOutcome::Done(McpResponse::rpc_error(
                    400,
                    &inv.id,
                    inv.code,
                    inv.message,
                ))
            }
        };
        let mut session = Session::new(shard, None);
        if let (Some(auth), Some(who)) = (auth, principal) {
            session.set_identity(auth, who);
        }
        let (id, method, params) = match &msg {
            Message::Request { id, method, params } => (*id, *method, *params),
            Message::Notification { .. } => {
                let mut out = Vec::new();
                let h = session.handle_parsed(shard, msg, &mut out, started, None);
                account(shard, &h, started);
                return ModernOutcome::Done(McpResponse::empty(202));
            }
            Message::Response { id, .. } => {
                return ModernOutcome::Done(McpResponse::rpc_error(
                    400,
                    id,
                    jsonrpc::INVALID_REQUEST,
                    "clients do not send responses in protocol version 2026-07-28",
                ))
            }
        };
        if let Err((status, code, message)) = check_headers(shard, headers, method, &params) {
            let mut r = McpResponse::rpc_error(status, &id, code, &message);
            r.status = status;
            shard
                .metrics
                .borrow_mut()
                .record_error(crate::metrics::MethodKind::Invalid);
            return ModernOutcome::Done(r);
        }
        let mut out = Vec::with_capacity(256);
        let pipe = accepts
            .sse
            .then(|| Pipe::new(shard.http.as_ref().map_or(256, |c| c.sse_queue_events)));
        let related: Option<SharedNotifier> = pipe.as_ref().map(|p| {
            Rc::new(ModernSink {
                pipe: p.clone(),
                shard: Rc::downgrade(shard),
            }) as SharedNotifier
        });
        let h = session.handle_parsed(shard, msg, &mut out, started, related.as_ref());
        account(shard, &h, started);
        ModernOutcome::Answer {
            pipe,
            pending: h.pending,
            out,
            sse_only: !accepts.json,
        }
    });
    let (pipe, pending, mut out, sse_only) = match outcome {
        ModernOutcome::Done(r) => return r,
        ModernOutcome::Answer {
            pipe,
            pending,
            out,
            sse_only,
        } => (pipe, pending, out, sse_only),
    };
    let json = |mut out: Vec<u8>| {
        trim_newline(&mut out);
        let status = error_code_of(&out).map_or(200, modern_status);
        McpResponse::json(status, out)
    };
    let sse = |pipe: Rc<Pipe<Bytes>>, task: Option<glommio::Task<()>>| McpResponse {
        status: 200,
        headers: Vec::new(),
        body: McpBody::Sse {
            source: SseSource::Local(pipe),
            task,
            resumable: false,
        },
    };
    let Some(p) = pending else {
        return match pipe {
            Some(pipe) if sse_only || !pipe.is_empty() => {
                trim_newline(&mut out);
                let _ = pipe.push_final(sse_event(None, &out));
                sse(pipe, None)
            }
            _ => json(out),
        };
    };
    let Some(pipe) = pipe else {
        return json(p.fut.await);
    };
    let result: Rc<std::cell::RefCell<Option<Vec<u8>>>> = Rc::default();
    let sink = pipe.clone();
    let slot = result.clone();
    // Owned by the response: when the client goes away, the response drops
    // and the handler is cancelled.
    let task = glommio::spawn_local(async move {
        let mut out = p.fut.await;
        trim_newline(&mut out);
        if out.is_empty() {
            sink.close();
            return;
        }
        let _ = sink.push_final(sse_event(None, &out));
        *slot.borrow_mut() = Some(out);
    });
    if !sse_only {
        pipe.ready().await;
        if pipe.is_closed() && pipe.len() == 1 {
            if let Some(out) = result.borrow_mut().take() {
                return json(out);
            }
        }
    }
    sse(pipe, Some(task))
}

/// Modern request metadata headers must be present and agree with the body
/// (Streamable HTTP 2026-07-28 §Server Validation).
fn check_headers(
    shard: &Shard,
    headers: &HeaderMap,
    method: &str,
    params: &Option<simd_json::tape::Value<'_, '_>>,
) -> Result<(), (u16, i32, String)> {
    let mismatch = |m: String| Err((400, code::HEADER_MISMATCH, m));
    let req_meta = params.as_ref().and_then(|p| p.get("_meta"));
    let body_version = req_meta
        .as_ref()
        .and_then(|m| m.get(meta::PROTOCOL_VERSION))
        .and_then(|v| v.into_string());
    let Some(header_version) = header(headers, "mcp-protocol-version") else {
        return mismatch("Header mismatch: MCP-Protocol-Version header is required".into());
    };
    let Some(body_version) = body_version else {
        return Err((
            400,
            jsonrpc::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/protocolVersion\"] is required".into(),
        ));
    };
    if header_version != body_version {
        return mismatch(format!(
            "Header mismatch: MCP-Protocol-Version header value '{header_version}' does not match body value '{body_version}'"
        ));
    }
    if mcp::modern_version(body_version).is_some()
        && !req_meta
            .as_ref()
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .is_some_and(|c| c.is_object())
    {
        return Err((
            400,
            jsonrpc::INVALID_PARAMS,
            "params._meta[\"io.modelcontextprotocol/clientCapabilities\"] (an object) is required"
                .into(),
        ));
    }
    match header(headers, "mcp-method") {
        None => return mismatch("Header mismatch: Mcp-Method header is required".into()),
        Some(m) if m != method => {
            return mismatch(format!(
            "Header mismatch: Mcp-Method header value '{m}' does not match body value '{method}'"
        ))
        }
        Some(_) => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        // SEP-2663: task methods route by task id.
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = params
            .as_ref()
            .and_then(|p| p.get(field))
            .and_then(|v| v.into_string());
        match header(headers, "mcp-name") {
            None => return mismatch("Header mismatch: Mcp-Name header is required".into()),
            Some(raw) => match decode_header_value(raw) {
                None => {
                    return mismatch(
                        "Header mismatch: Mcp-Name is not valid Base64-encoded UTF-8".into(),
                    )
                }
                Some(v) if Some(v.as_str()) != body_name => {
                    return mismatch(format!(
                    "Header mismatch: Mcp-Name header value '{v}' does not match body value '{}'",
                    body_name.unwrap_or("")
                ))
                }
                Some(_) => {}
            },
        }
    }
    if method == "tools/call" {
        check_param_headers(shard, headers, params)?;
    }
    Ok(())
}

/// Arguments a tool marks with `x-mcp-header` travel in `Mcp-Param-{name}`
/// headers too, and the two must agree (SEP-2243): a value in the body
/// needs its header; the header's value (Base64 inside `=?base64?...?=`,
/// strictly padded) must equal the argument's string form.
fn check_param_headers(
    shard: &Shard,
    headers: &HeaderMap,
    params: &Option<simd_json::tape::Value<'_, '_>>,
) -> Result<(), (u16, i32, String)> {
    let mismatch = |m: String| Err((400, code::HEADER_MISMATCH, m));
    let Some(name) = params
        .as_ref()
        .and_then(|p| p.get("name"))
        .and_then(|n| n.into_string())
    else {
        return Ok(());
    };
    let Some(entry) = shard.registry.tool(name) else {
        return Ok(());
    };
    let args = params.as_ref().and_then(|p| p.get("arguments"));
    for (param, suffix) in &entry.header_params {
        let header_name = format!("mcp-param-{}", suffix.to_ascii_lowercase());
        let body = args
            .as_ref()
            .and_then(|a| a.get(param.as_str()))
            .filter(|v| !v.is_null());
        let body_text = body.map(|v| match v.into_string() {
            Some(s) => s.to_owned(),
            None => crate::protocol::json::encode_value(v),
        });
        match (header(headers, &header_name), body_text) {
            (None, None) => {}
            (None, Some(_)) => {
                return mismatch(format!(
                    "Header mismatch: Mcp-Param-{suffix} header is required when arguments.{param} is present"
                ))
            }
            (Some(_), None) => {
                return mismatch(format!(
                    "Header mismatch: Mcp-Param-{suffix} header is present but arguments.{param} is not"
                ))
            }
            (Some(raw), Some(body)) => match decode_header_value(raw) {
                None => {
                    return mismatch(format!(
                        "Header mismatch: Mcp-Param-{suffix} is not valid Base64-encoded UTF-8"
                    ))
                }
                Some(v) if v != body => {
                    return mismatch(format!(
                        "Header mismatch: Mcp-Param-{suffix} header value '{v}' does not match arguments.{param}"
                    ))
                }
                Some(_) => {}
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HttpConfig {
        HttpConfig::new("127.0.0.1:7070".parse().unwrap())
    }

    #[test]
    fn accept_header_forms() {
        assert_eq!(
            parse_accept(None),
            Accepts {
                json: true,
                sse: true
            }
        );
        assert_eq!(
            parse_accept(Some("application/json, text/event-stream")),
            Accepts {
                json: true,
                sse: true
            }
        );
        assert_eq!(
            parse_accept(Some("text/event-stream")),
            Accepts {
                json: false,
                sse: true
            }
        );
        assert_eq!(
            parse_accept(Some("text/html")),
            Accepts {
                json: false,
                sse: false
            }
        );
        assert_eq!(
            parse_accept(Some("application/json;q=0, */*")),
            Accepts {
                json: true,
                sse: true
            }
        );
        assert_eq!(
            parse_accept(Some("application/json;q=0")),
            Accepts {
                json: false,
                sse: false
            }
        );
    }

    #[test]
    fn origins_and_hosts() {
        let mut c = cfg();
        assert!(origin_allowed("http://localhost:3000", &c));
        assert!(origin_allowed("https://127.0.0.1", &c));
        assert!(origin_allowed("http://[::1]:8080", &c));
        assert!(!origin_allowed("http://evil.example", &c));
        assert!(!origin_allowed("http://localhost.evil.example", &c));
        assert!(!origin_allowed("null", &c));
        c.allowed_origins.push("https://app.example".into());
        assert!(origin_allowed("https://app.example", &c));
        assert!(host_allowed("localhost:7070", &c));
        assert!(host_allowed("127.0.0.1", &c));
        assert!(!host_allowed("attacker.example:7070", &c));
        c.allowed_hosts.push("mcp.internal".into());
        assert!(host_allowed("mcp.internal:7070", &c));
    }

    #[test]
    fn header_values_decode_base64_sentinels() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
        assert_eq!(
            error_code_of(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#),
            Some(-32601)
        );
        assert_eq!(
            error_code_of(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            None
        );
    }
}
