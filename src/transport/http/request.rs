//! One HTTP request at the MCP endpoint: the checks that apply to every
//! request (URI length, path, Origin, Host, bearer token, method, media
//! types, body size), then the era's rules: modern (2026-07-28) requests go
//! to [`super::modern`], served statelessly on whatever shard received them;
//! legacy requests belong to a session and are served by the shard that owns
//! it ([`super::session`], over [`super::relay`] when that is another shard).

use crate::server::core::Core;
use crate::server::trace::TraceParent;
use crate::transport::Peer;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use simd_json::prelude::*;

use super::head::{Head, Headers};
use super::relay::{self, Accepts, HttpCall, HttpMethod};
use super::response::McpResponse;
use super::{cluster, modern, session, HttpConfig, HttpShard};
use crate::protocol::jsonrpc::{self, Id, Message};
use crate::protocol::mcp::{self, meta};
use crate::protocol::method::Method as McpMethod;
use crate::protocol::PARSE_PADDING;
use crate::server::audit::AuditRecord;
use crate::server::auth::{self, AuthConfig, Identity};
use crate::server::msg::hop_error;
use crate::server::ratelimit::Principal;

/// A request's body: still arriving through hyper, or already read by the
/// lean path (within `max_message_bytes`).
pub(crate) enum Body {
    Hyper(Incoming),
    Read(Vec<u8>),
}

/// Serves one HTTP request; `peer` is the client's address (the rate-limit
/// principal of requests without a session).
pub(crate) async fn handle(
    http: &Rc<HttpShard>,
    head: Head,
    body: Body,
    peer: &Peer,
) -> McpResponse {
    let resp = route(http, head, body, peer).await;
    if resp.status >= 400 && resp.status != 404 && resp.status != 503 {
        http.net.core.metrics.borrow_mut().counters.http_rejected += 1;
    }
    resp
}

pub(super) fn header<'h>(h: &'h Headers, name: &str) -> Option<&'h str> {
    h.get(name)
}

/// The request's W3C trace context headers, when tracing is on (a server
/// without `--otlp-endpoint` never reads them).
pub(super) fn trace_header(core: &Core, h: &Headers) -> Option<TraceParent> {
    core.tracer()?;
    let mut p = TraceParent::parse(header(h, "traceparent")?)?;
    p.state = header(h, "tracestate")
        .filter(|s| !s.is_empty())
        .map(Into::into);
    Some(p)
}

fn reject(status: u16, code: i32, message: &str) -> McpResponse {
    McpResponse::rpc_error(status, &Id::Null, code, message)
}

/// Which response forms an `Accept` header allows (absent: any).
pub(crate) fn parse_accept(value: Option<&str>) -> Accepts {
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

/// The endpoint's checks, then the request's method.
async fn route(http: &Rc<HttpShard>, head: Head, body: Body, peer: &Peer) -> McpResponse {
    let core = &http.net.core;
    let cfg = &http.cfg;
    if let Some(r) = check_target(http, &head) {
        return r;
    }
    let h = &head.headers;
    if let Some(auth) = core.auth() {
        if head.path().starts_with(auth::METADATA_PATH) && head.method == Method::GET {
            return protected_resource_metadata(&auth, cfg, h);
        }
    }
    if head.path() != cfg.path {
        let msg = format!("Not Found: the MCP endpoint is {}", cfg.path);
        return reject(404, jsonrpc::INVALID_REQUEST, &msg);
    }
    if cluster::is_relay(h) {
        return relayed(http, &head, body).await;
    }
    if let Some(r) = check_origin_and_host(cfg, h) {
        return r;
    }
    let principal = match core.auth() {
        None => None,
        Some(auth) => match authenticate(&auth, cfg, h, peer) {
            Ok(p) => Some(p),
            Err(r) => {
                core.metrics.borrow_mut().counters.auth_failures += 1;
                audit_refusal(http, h);
                return r;
            }
        },
    };
    match head.method {
        Method::POST => post(http, h, body, peer.ip, principal).await,
        Method::GET => get_or_delete(http, h, HttpMethod::Get, principal).await,
        Method::DELETE => get_or_delete(http, h, HttpMethod::Delete, principal).await,
        _ => reject(
            405,
            jsonrpc::INVALID_REQUEST,
            "Method Not Allowed: use POST, GET or DELETE",
        )
        .with_header("allow", "GET, POST, DELETE"),
    }
}

/// A request target longer than `--http-max-uri-bytes` is refused (414) and
/// counted (hyper bounds the whole head; this bounds the URI within it).
fn check_target(http: &HttpShard, head: &Head) -> Option<McpResponse> {
    let len = head.target.len();
    if len <= http.cfg.max_uri_bytes {
        return None;
    }
    http.net
        .core
        .metrics
        .borrow_mut()
        .counters
        .http_heads_refused += 1;
    let msg = format!(
        "URI Too Long: request targets are limited to {} bytes (http-max-uri-bytes)",
        http.cfg.max_uri_bytes
    );
    Some(reject(414, jsonrpc::INVALID_REQUEST, &msg).with_header("connection", "close"))
}

/// DNS-rebinding defence: a foreign `Origin` or `Host` is refused (403).
fn check_origin_and_host(cfg: &HttpConfig, h: &Headers) -> Option<McpResponse> {
    if let Some(origin) = header(h, "origin") {
        if !origin_allowed(origin, cfg) {
            return Some(reject(
                403,
                jsonrpc::INVALID_REQUEST,
                "Forbidden: Origin not allowed",
            ));
        }
    }
    match header(h, "host") {
        Some(host) if host_allowed(host, cfg) => None,
        Some(_) => Some(reject(
            403,
            jsonrpc::INVALID_REQUEST,
            "Forbidden: Host not allowed",
        )),
        None => Some(reject(
            400,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: Host header required",
        )),
    }
}

/// `GET` (open or resume an SSE stream) or `DELETE` (end a session): legacy
/// sessions only.
async fn get_or_delete(
    http: &Rc<HttpShard>,
    h: &Headers,
    method: HttpMethod,
    principal: Option<Identity>,
) -> McpResponse {
    let version = header(h, "mcp-protocol-version");
    if version.is_some_and(|v| mcp::modern_version(v).is_some()) {
        // 2026-07-28 has no GET stream and no sessions to delete.
        return reject(
            405,
            jsonrpc::INVALID_REQUEST,
            "Method Not Allowed: this protocol version uses POST only",
        )
        .with_header("allow", "POST");
    }
    if let Some(v) = version {
        if !mcp::is_legacy_version(v) {
            return unsupported_version_header(v);
        }
    }
    let Some(session_id) = header(h, "mcp-session-id") else {
        return reject(
            400,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header required",
        );
    };
    let call = HttpCall {
        session_id: session_id.to_owned(),
        method,
        last_event_id: header(h, "last-event-id").map(str::to_owned),
        accepts: parse_accept(header(h, "accept")),
        body: Vec::new(),
        principal,
        from_node: false,
        trace: trace_header(&http.net.core, h),
    };
    to_owner(http, call).await
}

/// A request another node relayed (`--cluster`): served only with valid
/// proof of the cluster secret, as the caller the relaying node
/// authenticated, and only by this node.
async fn relayed(http: &Rc<HttpShard>, head: &Head, body: Body) -> McpResponse {
    let refuse = |why: &str| {
        http.net
            .core
            .metrics
            .borrow_mut()
            .counters
            .cluster_relays_refused += 1;
        log::warn!("refused a node-to-node request: {why}");
        reject(403, jsonrpc::INVALID_REQUEST, &format!("Forbidden: {why}"))
    };
    let Some(link) = http.cluster() else {
        return refuse("this node is not in a cluster");
    };
    let h = &head.headers;
    let method = match head.method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        _ => return refuse("unexpected relay method"),
    };
    let modern =
        header(h, "mcp-protocol-version").is_some_and(|v| mcp::modern_version(v).is_some());
    let session_id = match header(h, "mcp-session-id") {
        Some(s) => s.to_owned(),
        // A modern request (a task another node made) has no session.
        None if modern && method == HttpMethod::Post => String::new(),
        None => return refuse("relay without a session"),
    };
    let body = match read_body(http, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let proof = header(h, cluster::RELAY_HEADER).unwrap_or_default();
    let verified = match cluster::verify(link.secret(), proof, method, &session_id, &body) {
        Ok(v) => v,
        Err(why) => return refuse(why),
    };
    if session_id.is_empty() {
        let accepts = parse_accept(header(h, "accept"));
        return modern::post(http, h, accepts, body, verified.principal.as_ref(), true).await;
    }
    let call = HttpCall {
        session_id,
        method,
        last_event_id: header(h, "last-event-id").map(str::to_owned),
        accepts: parse_accept(header(h, "accept")),
        body,
        principal: verified.principal,
        from_node: true,
        trace: trace_header(&http.net.core, h),
    };
    to_owner(http, call).await
}

/// `POST`: one JSON-RPC message, modern (stateless, here) or legacy (its
/// session's, at the owner; or `initialize`, which makes one here).
async fn post(
    http: &Rc<HttpShard>,
    h: &Headers,
    body: Body,
    peer: Option<IpAddr>,
    principal: Option<Identity>,
) -> McpResponse {
    let content_type = header(h, "content-type").and_then(|ct| ct.split(';').next());
    if !content_type.is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json")) {
        return reject(
            415,
            jsonrpc::INVALID_REQUEST,
            "Unsupported Media Type: POST bodies must be application/json",
        );
    }
    let accepts = parse_accept(header(h, "accept"));
    if !accepts.json && !accepts.sse {
        return reject(
            406,
            jsonrpc::INVALID_REQUEST,
            "Not Acceptable: accept application/json and/or text/event-stream",
        );
    }
    let body = match read_body(http, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let version = header(h, "mcp-protocol-version");
    let modern = version.is_some_and(|v| mcp::modern_version(v).is_some());
    let session_id = header(h, "mcp-session-id");
    // Requests without a session are limited per principal (or peer address)
    // here; a session's requests at its owner (`session::serve_call`).
    if session_id.is_none() || modern {
        if let Some(r) = rate_limit(http, principal.as_ref(), peer).await {
            return r;
        }
    }
    // A version we do not know is answered the modern way (-32022 with the
    // versions we support), echoing the request's id.
    if modern || version.is_some_and(|v| !mcp::is_legacy_version(v)) {
        return modern::post(http, h, accepts, body, principal.as_ref(), false).await;
    }
    if let Some(session_id) = session_id {
        let call = HttpCall {
            session_id: session_id.to_owned(),
            method: HttpMethod::Post,
            last_event_id: None,
            accepts,
            body,
            principal,
            from_node: false,
            trace: trace_header(&http.net.core, h),
        };
        return to_owner(http, call).await;
    }
    match peek(http, body) {
        Peeked::Initialize(body) => {
            let trace = trace_header(&http.net.core, h);
            session::initialize(http, accepts, body, principal, trace).await
        }
        // A modern request without its version header.
        Peeked::Modern(body) => {
            modern::post(http, h, accepts, body, principal.as_ref(), false).await
        }
        Peeked::Other => reject(
            400,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header required",
        ),
        Peeked::Invalid(r) => r,
    }
}

/// The rate limit of a request without a session: its principal's, or its
/// peer address's.
///
/// With `--rate-limit-scope cluster` the bucket is the cluster's (one Redis
/// round trip on this path, by choice); a session's requests all reach its
/// owner, so the owner's limiter is already cluster-wide for them.
async fn rate_limit(
    http: &HttpShard,
    principal: Option<&Identity>,
    peer: Option<IpAddr>,
) -> Option<McpResponse> {
    let who = match (principal, peer) {
        (Some(p), _) => Principal::User(p.principal.clone()),
        (None, Some(ip)) => Principal::Peer(ip),
        (None, None) => return None,
    };
    let core = &http.net.core;
    let shared = core.shared.borrow().clone();
    let (rate, burst) = core.rate_limit();
    match shared.filter(|s| s.shares_rate_limits() && rate > 0) {
        None => core
            .rate_check(&who, std::time::Instant::now())
            .err()
            .map(McpResponse::rate_limited),
        Some(s) => match s.rate_check(who.key(), rate, burst).await {
            Ok(None) => None,
            Ok(Some(wait)) => {
                core.metrics.borrow_mut().counters.rate_limited += 1;
                Some(McpResponse::rate_limited(wait))
            }
            Err(why) => Some(cluster::unavailable(&why)),
        },
    }
}

/// The principal of a request's bearer token, or the 401 to answer: with
/// `WWW-Authenticate` naming the protected-resource metadata (RFC 9728) so a
/// client can find the authorization server.
///
/// Under `--auth cert` the caller is the connection's client certificate
/// (`peer.cert_name`) and an `Authorization` header is not looked at.
fn authenticate(
    auth: &AuthConfig,
    cfg: &HttpConfig,
    h: &Headers,
    peer: &Peer,
) -> Result<Identity, McpResponse> {
    if auth.by_certificate() {
        return auth
            .authenticate_cert(peer.cert_name.as_deref())
            .map_err(|why| {
                log::info!("client certificate refused: {why}");
                reject(
                    401,
                    jsonrpc::INVALID_REQUEST,
                    &format!("Unauthorized: {why}"),
                )
            });
    }
    let presented = header(h, "authorization").and_then(auth::bearer);
    let refused = match presented.map(|t| auth.authenticate(t)) {
        Some(Ok(who)) => return Ok(who),
        Some(Err(why)) => Some(why.to_string()),
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
fn audit_refusal(http: &HttpShard, h: &Headers) {
    let core = &http.net.core;
    let mut audit = core.audit.borrow_mut();
    let Some(sink) = audit.as_mut() else {
        return;
    };
    let written = sink.record(&AuditRecord {
        principal: None,
        session: header(h, "mcp-session-id"),
        method: header(h, "mcp-method"),
        name: header(h, "mcp-name"),
        error: None,
        unauthorized: true,
        latency_us: 0,
    });
    if !written {
        core.metrics.borrow_mut().counters.audit_dropped += 1;
    }
}

/// This endpoint's resource URI: configured, or from the request's Host.
fn resource_uri(auth: &AuthConfig, cfg: &HttpConfig, h: &Headers) -> String {
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
fn metadata_url(auth: &AuthConfig, cfg: &HttpConfig, h: &Headers) -> String {
    let resource = resource_uri(auth, cfg, h);
    let (scheme, rest) = resource.split_once("://").unwrap_or(("http", &resource));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{host}{}{path}", auth::METADATA_PATH)
}

fn protected_resource_metadata(auth: &AuthConfig, cfg: &HttpConfig, h: &Headers) -> McpResponse {
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
    crate::server::encode::unsupported_version(&mut out, &Id::Null, v);
    super::response::trim_newline(&mut out);
    McpResponse::json(400, out)
}

/// 408: a body that did not arrive within `body_timeout_ms`.
pub(super) fn body_timed_out() -> McpResponse {
    reject(
        408,
        jsonrpc::INVALID_REQUEST,
        "Request Timeout: body not received in time",
    )
}

/// Reads the body within `max_message_bytes` and `body_timeout_ms` (the lean
/// path has read it already, within both).
async fn read_body(http: &HttpShard, body: Body) -> Result<Vec<u8>, McpResponse> {
    let body = match body {
        Body::Read(b) => return Ok(b),
        Body::Hyper(b) => b,
    };
    let max = http.net.limits.max_message_bytes;
    let limited = http_body_util::Limited::new(body, max);
    let timeout = Duration::from_millis(http.cfg.body_timeout_ms);
    let collected = futures_lite::future::or(async { Some(limited.collect().await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match collected {
        None => Err(body_timed_out()),
        Some(Ok(c)) => Ok(c.to_bytes().to_vec()),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            http.net
                .core
                .metrics
                .borrow_mut()
                .counters
                .oversize_messages += 1;
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
async fn to_owner(http: &Rc<HttpShard>, call: HttpCall) -> McpResponse {
    let core = &http.net.core;
    let Some(owner) = session::owner_of(&call.session_id, core.shard_count, http.node_id()) else {
        return reject(404, jsonrpc::INVALID_REQUEST, "Session not found");
    };
    if owner == core.id {
        return session::serve_call(http, call).await;
    }
    match relay::relay(http, owner, call).await {
        Ok(r) => r,
        Err(e) => {
            let err = hop_error(e, owner, core.limits.mesh_timeout_ms);
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
fn peek(http: &HttpShard, body: Vec<u8>) -> Peeked {
    let (mut buf, len) = padded(body);
    let verdict = http
        .net
        .core
        .parser
        .borrow_mut()
        .parse(&mut buf, len, |parsed| {
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
                    Ok(match McpMethod::parse(method) {
                        Some(McpMethod::Initialize) => 1,
                        Some(McpMethod::Discover) => 2,
                        _ if declared => 2,
                        _ => 0,
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

/// A request's JSON body, padded for the in-place parser.
pub(super) fn padded(mut body: Vec<u8>) -> (Vec<u8>, usize) {
    let len = body.len();
    body.resize(len + PARSE_PADDING, b' ');
    (body, len)
}

/// Every header check a request goes through, on headers and a body given
/// as data (the fuzz target's entry): panics only on a bug.
#[cfg(feature = "internals")]
pub(crate) fn fuzz_checks(headers: &[(String, String)], body: &[u8]) {
    use hyper::header::{HeaderName, HeaderValue};
    let mut h = Headers::default();
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.push(n.as_str().as_bytes(), v.as_bytes());
        }
    }
    let cfg = HttpConfig::new(([127, 0, 0, 1], 7070).into());
    let _ = parse_accept(header(&h, "accept"));
    let refused = check_origin_and_host(&cfg, &h);
    // A loopback Host and no Origin always pass.
    if header(&h, "origin").is_none()
        && header(&h, "host").is_some_and(|x| is_loopback_name(host_part(x)))
    {
        assert!(refused.is_none(), "a loopback request was refused");
    }
    modern::fuzz_check_headers(&h, body);
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
}
