//! The dispatch table and a [`Session`] driven without sockets: method
//! parsing, the table's order and targets, the steps every request goes
//! through, and the access check of every method that names something.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Value};

use super::*;
use crate::config::Limits;
use crate::protocol::PARSE_PADDING;
use crate::server::api::McpServer;
use crate::server::auth::{hash_line, AuthConfig, Role, TokenTable, Verifier};
use crate::server::core::{test_core, FaultRates};
use crate::server::Notifier;

/// Collects what a session sends its client unprompted.
#[derive(Default)]
struct Sink(RefCell<Vec<Vec<u8>>>);

impl Notifier for Sink {
    fn notify(&self, message: &[u8]) {
        self.0.borrow_mut().push(message.to_vec());
    }
}

/// Runs `f` on a glommio executor, as a shard would.
fn on_executor(f: impl FnOnce()) {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async { f() });
}

/// Sends `msg` and returns the immediate answer (`Value::Null` for none).
fn send(session: &mut Session, core: &Rc<Core>, msg: &Value) -> Value {
    let text = msg.to_string();
    let mut buf = text.clone().into_bytes();
    buf.resize(text.len() + PARSE_PADDING, b' ');
    let mut out = Vec::new();
    let pending = session.handle_message(
        core,
        &mut buf,
        text.len(),
        &mut out,
        None,
        &mut Instant::now(),
    );
    assert!(pending.is_none(), "{text} did not answer at once");
    if out.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn code(answer: &Value) -> Option<i64> {
    answer.pointer("/error/code").and_then(Value::as_i64)
}

fn initialize(session: &mut Session, core: &Rc<Core>, meta: Value) -> Value {
    let params = json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "unit", "version": "0"},
        "_meta": meta,
    });
    send(session, core, &request(0, "initialize", params))
}

fn builtins_core(limits: &Limits, auth: Option<AuthConfig>, faults: FaultRates) -> Rc<Core> {
    test_core(
        &McpServer::new().with_builtins().build(),
        limits,
        auth,
        faults,
    )
}

#[test]
fn method_names_round_trip_and_unknown_names_are_none() {
    for (i, m) in Method::ALL.iter().enumerate() {
        assert_eq!(*m as usize, i, "Method::ALL is in declaration order");
        assert_eq!(Method::parse(m.name()), Some(*m));
    }
    for unknown in [
        "",
        "tools/CALL",
        "tools/call ",
        "notifications/initialized",
        "rpc.discover",
    ] {
        assert_eq!(Method::parse(unknown), None, "{unknown:?}");
    }
}

#[test]
fn the_table_has_one_row_per_method_in_order() {
    for m in Method::ALL {
        assert_eq!(ROUTES[m as usize].method, m);
    }
}

#[test]
fn every_method_that_names_something_is_checked() {
    let expected = |m: Method| match m {
        Method::ToolsCall => Target::Tool,
        Method::PromptsGet => Target::Prompt,
        Method::ResourcesRead
        | Method::ResourcesSubscribe
        | Method::ResourcesUnsubscribe
        | Method::ResourcesDirectoryRead
        | Method::SkillsGet => Target::Resource,
        Method::CompletionComplete => Target::CompletionRef,
        Method::SubscriptionsListen => Target::ListenFilter,
        Method::Initialize
        | Method::Ping
        | Method::Discover
        | Method::LoggingSetLevel
        | Method::ToolsList
        | Method::PromptsList
        | Method::ResourcesList
        | Method::ResourcesTemplatesList
        | Method::TasksGet
        | Method::TasksResult
        | Method::TasksList
        | Method::TasksCancel
        | Method::TasksUpdate
        | Method::SkillsList => Target::Nothing,
    };
    for m in Method::ALL {
        assert_eq!(target_of(m), expected(m), "{}", m.name());
    }
}

#[test]
fn eras_are_decided_by_the_table() {
    assert!(route(Method::Initialize).eras.serves(Era::Legacy));
    assert!(!route(Method::Initialize)
        .eras
        .serves(Era::Modern("2026-07-28")));
    assert!(!route(Method::Discover).eras.serves(Era::Legacy));
    assert!(!route(Method::SubscriptionsListen).eras.serves(Era::Legacy));
    assert!(!route(Method::ResourcesSubscribe)
        .eras
        .serves(Era::Modern("2026-07-28")));
    assert!(route(Method::ToolsCall).eras.serves(Era::Legacy));
    assert!(route(Method::ToolsCall)
        .eras
        .serves(Era::Modern("2026-07-28")));
}

#[test]
fn a_session_is_initialized_first_and_unknown_methods_are_not_found() {
    on_executor(|| {
        let core = builtins_core(&Limits::default(), None, FaultRates::default());
        let mut s = Session::new(&core, None);
        let early = send(&mut s, &core, &request(1, "tools/list", json!({})));
        assert_eq!(
            code(&early),
            Some(jsonrpc::INVALID_REQUEST as i64),
            "{early}"
        );
        let ping = send(&mut s, &core, &request(2, "ping", json!({})));
        assert_eq!(ping["result"], json!({}));
        let init = initialize(&mut s, &core, json!({}));
        assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
        let list = send(&mut s, &core, &request(3, "tools/list", json!({})));
        assert!(
            list["result"]["tools"]
                .as_array()
                .is_some_and(|t| !t.is_empty()),
            "{list}"
        );
        let unknown = send(&mut s, &core, &request(4, "tools/frobnicate", json!({})));
        assert_eq!(code(&unknown), Some(jsonrpc::METHOD_NOT_FOUND as i64));
        // Served in the other era only.
        let discover = send(
            &mut s,
            &core,
            &request(5, "subscriptions/listen", json!({})),
        );
        assert_eq!(code(&discover), Some(jsonrpc::METHOD_NOT_FOUND as i64));
    });
}

#[test]
fn modern_requests_need_their_capabilities_and_a_known_version() {
    on_executor(|| {
        let core = builtins_core(&Limits::default(), None, FaultRates::default());
        let mut s = Session::new(&core, None);
        let v = "io.modelcontextprotocol/protocolVersion";
        let c = "io.modelcontextprotocol/clientCapabilities";
        let no_caps = send(
            &mut s,
            &core,
            &request(1, "tools/list", json!({"_meta": {v: "2026-07-28"}})),
        );
        assert_eq!(
            code(&no_caps),
            Some(jsonrpc::INVALID_PARAMS as i64),
            "{no_caps}"
        );
        let unknown = send(
            &mut s,
            &core,
            &request(2, "tools/list", json!({"_meta": {v: "2099-01-01", c: {}}})),
        );
        assert!(code(&unknown).is_some(), "{unknown}");
        let ok = send(
            &mut s,
            &core,
            &request(3, "tools/list", json!({"_meta": {v: "2026-07-28", c: {}}})),
        );
        assert!(ok["result"]["tools"].is_array(), "{ok}");
        // No `initialize` happened: the legacy lifecycle is untouched.
        assert_eq!(s.negotiated_version(), None);
    });
}

const TOKEN: &str = "unit-test-token";

/// `--auth token` with one principal whose one role may call `echo` only.
fn echo_only_auth() -> AuthConfig {
    let line = hash_line(TOKEN, "alice", &["echoer".to_owned()]);
    let mut auth = AuthConfig::new(Verifier::Tokens(
        TokenTable::parse(&line).expect("a valid line"),
    ));
    auth.roles = vec![Role {
        name: "echoer".into(),
        tools: vec!["echo".into()],
        prompts: Vec::new(),
        resources: Vec::new(),
    }];
    auth
}

fn bearer() -> Value {
    json!({"authorization": format!("Bearer {TOKEN}")})
}

/// A TCP-like session under `--auth token` that has authenticated as alice.
fn alice(core: &Rc<Core>) -> Session {
    let mut s = Session::new(core, Some(Rc::new(Sink::default())));
    s.require_token();
    let init = initialize(&mut s, core, bearer());
    assert!(init.get("result").is_some(), "{init}");
    assert_eq!(s.identity().map(|i| i.principal.as_str()), Some("alice"));
    s
}

#[test]
fn roles_are_checked_for_every_method_that_names_something() {
    on_executor(|| {
        let core = builtins_core(
            &Limits::default(),
            Some(echo_only_auth()),
            FaultRates::default(),
        );
        let mut s = alice(&core);
        let modern = |mut params: Value| {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            params
        };
        let refused = [
            (
                "tools/call",
                json!({"name": "kv_get", "arguments": {"key": "k"}}),
            ),
            ("prompts/get", json!({"name": "any"})),
            ("resources/read", json!({"uri": "kv://k"})),
            ("resources/subscribe", json!({"uri": "kv://k"})),
            ("resources/unsubscribe", json!({"uri": "kv://k"})),
            ("resources/directory/read", json!({"uri": "skill://x/"})),
            ("skills/get", json!({"uri": "skill://x/SKILL.md"})),
            (
                "completion/complete",
                json!({"ref": {"type": "ref/resource", "uri": "kv://{key}"}, "argument": {"name": "key", "value": ""}}),
            ),
            (
                "completion/complete",
                json!({"ref": {"type": "ref/prompt", "name": "any"}, "argument": {"name": "a", "value": ""}}),
            ),
            (
                "subscriptions/listen",
                modern(json!({"notifications": {"resourceSubscriptions": ["kv://k"]}})),
            ),
        ];
        for (i, (method, params)) in refused.into_iter().enumerate() {
            let a = send(&mut s, &core, &request(10 + i as u64, method, params));
            assert_eq!(code(&a), Some(jsonrpc::FORBIDDEN as i64), "{method}: {a}");
        }
        // What the role grants still works.
        let echo = send(
            &mut s,
            &core,
            &request(
                99,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            ),
        );
        assert_eq!(echo["result"]["content"][0]["text"], "hi", "{echo}");
        // A refused subscription left nothing behind.
        assert!(s.subscriptions().is_empty());
    });
}

#[test]
fn a_panic_in_the_token_check_never_opens_the_session() {
    on_executor(|| {
        let faults = FaultRates {
            auth_panic: 1.0,
            ..FaultRates::default()
        };
        let core = builtins_core(&Limits::default(), Some(echo_only_auth()), faults);
        let mut s = Session::new(&core, None);
        s.require_token();
        let panicked = initialize(&mut s, &core, bearer());
        assert_eq!(
            code(&panicked),
            Some(jsonrpc::INTERNAL_ERROR as i64),
            "{panicked}"
        );
        for (id, method) in [(1, "tools/list"), (2, "tools/call"), (3, "initialize")] {
            let a = send(&mut s, &core, &request(id, method, json!({"name": "echo"})));
            assert_eq!(
                code(&a),
                Some(jsonrpc::UNAUTHORIZED as i64),
                "{method}: {a}"
            );
        }
        assert!(s.identity().is_none());
    });
}

#[test]
fn a_refused_subscription_is_not_kept() {
    on_executor(|| {
        let limits = Limits {
            max_watchers_per_key: 1,
            ..Limits::default()
        };
        let core = builtins_core(&limits, None, FaultRates::default());
        let sub = |s: &mut Session, id| {
            send(
                s,
                &core,
                &request(id, "resources/subscribe", json!({"uri": "kv://k"})),
            )
        };
        let mut first = Session::new(&core, Some(Rc::new(Sink::default())));
        initialize(&mut first, &core, json!({}));
        assert_eq!(sub(&mut first, 1)["result"], json!({}));
        let mut second = Session::new(&core, Some(Rc::new(Sink::default())));
        initialize(&mut second, &core, json!({}));
        let refused = sub(&mut second, 2);
        assert_eq!(
            code(&refused),
            Some(jsonrpc::INVALID_REQUEST as i64),
            "{refused}"
        );
        assert_eq!(first.subscriptions(), vec!["kv://k".to_owned()]);
        assert!(
            second.subscriptions().is_empty(),
            "the refused URI was kept"
        );
        // Once the first lets go, the second may watch it.
        first.close(&core);
        assert_eq!(sub(&mut second, 3)["result"], json!({}));
        assert_eq!(second.subscriptions(), vec!["kv://k".to_owned()]);
    });
}

#[test]
fn notifications_and_responses_get_no_answer() {
    on_executor(|| {
        let core = builtins_core(&Limits::default(), None, FaultRates::default());
        let mut s = Session::new(&core, None);
        let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(send(&mut s, &core, &n), Value::Null);
        let r = json!({"jsonrpc": "2.0", "id": 7, "result": {}});
        assert_eq!(send(&mut s, &core, &r), Value::Null);
        let bad = send(&mut s, &core, &json!({"jsonrpc": "2.0", "id": 1}));
        assert_eq!(code(&bad), Some(jsonrpc::INVALID_REQUEST as i64), "{bad}");
    });
}
