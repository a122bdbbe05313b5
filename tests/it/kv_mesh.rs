//! The kv tools across two shards: a key owned by the other shard crosses the
//! mesh and back, and every shard sees the same data.

use std::collections::HashMap;

use crate::common::*;
use serde_json::{json, Value};

/// Two shards on the first two CPUs this process may use.
fn two_shards() -> Server {
    let cores = allowed_cores();
    assert!(
        cores.len() >= 2,
        "this test needs 2 CPUs, the process may use {cores:?}"
    );
    let list = format!("{},{}", cores[0], cores[1]);
    Server::start(&["--cores", &list])
}

fn shard_info(r: &Value) -> (u64, u64) {
    let m = &r["result"]["_meta"]["tessera/shard"];
    (
        m["served_by"].as_u64().unwrap(),
        m["owner"].as_u64().unwrap(),
    )
}

/// Opens connections until there is one on each shard (SO_REUSEPORT spreads
/// them by a hash of the address pair).
fn one_client_per_shard(server: &Server) -> HashMap<u64, Client> {
    let mut by_shard = HashMap::new();
    for _ in 0..200 {
        let mut c = server.connect();
        c.initialize();
        let r = c.call_tool("kv_get", json!({"key": "probe"}));
        let (served_by, _) = shard_info(&r);
        by_shard.entry(served_by).or_insert(c);
        if by_shard.len() == 2 {
            return by_shard;
        }
    }
    panic!("200 connections all landed on one shard");
}

#[test]
fn keys_owned_by_the_other_shard_round_trip_over_the_mesh() {
    let server = two_shards();
    let mut clients = one_client_per_shard(&server);

    // Find a key owned by each shard.
    let mut key_of_owner: HashMap<u64, String> = HashMap::new();
    {
        let c = clients.get_mut(&0).unwrap();
        for i in 0..100 {
            let key = format!("key-{i}");
            let (_, owner) = shard_info(&c.call_tool("kv_get", json!({"key": key})));
            key_of_owner.entry(owner).or_insert(key);
        }
    }
    assert_eq!(
        key_of_owner.len(),
        2,
        "100 keys should spread over both shards"
    );

    for (&owner, key) in &key_of_owner {
        let other = 1 - owner;
        let value = json!({"owner": owner, "text": "crossed \"the\" mesh"});
        // Write through the shard that does not own the key: one hop.
        let w = clients
            .get_mut(&other)
            .unwrap()
            .call_tool("kv_set", json!({"key": key, "value": value}));
        assert_eq!(shard_info(&w), (other, owner), "{w}");
        assert_eq!(w["result"]["structuredContent"]["created"], true, "{w}");
        // Read it back locally on the owner, and across again from the other.
        let local = clients
            .get_mut(&owner)
            .unwrap()
            .call_tool("kv_get", json!({"key": key}));
        assert_eq!(shard_info(&local), (owner, owner));
        assert_eq!(
            local["result"]["structuredContent"]["value"], value,
            "{local}"
        );
        let remote = clients
            .get_mut(&other)
            .unwrap()
            .call_tool("kv_get", json!({"key": key}));
        assert_eq!(
            remote["result"]["structuredContent"]["value"], value,
            "{remote}"
        );
        // Delete across the mesh; both sides see it gone.
        let d = clients
            .get_mut(&other)
            .unwrap()
            .call_tool("kv_delete", json!({"key": key}));
        assert_eq!(d["result"]["structuredContent"]["deleted"], true, "{d}");
        let gone = clients
            .get_mut(&owner)
            .unwrap()
            .call_tool("kv_get", json!({"key": key}));
        assert_eq!(
            gone["result"]["structuredContent"]["found"], false,
            "{gone}"
        );
    }
}

#[test]
fn pipelined_cross_shard_calls_are_all_answered() {
    let server = two_shards();
    let mut clients = one_client_per_shard(&server);
    let mut writer = clients.remove(&0).unwrap();
    let mut reader = clients.remove(&1).unwrap();
    const N: u64 = 2000;
    for i in 0..N {
        writer.send(&json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "kv_set", "arguments": {"key": format!("p{i}"), "value": i}}}));
    }
    let mut seen = vec![false; N as usize];
    let mut crossed = 0;
    for _ in 0..N {
        let r = writer.recv();
        let id = r["id"].as_u64().unwrap();
        assert!(!seen[id as usize], "answered twice: {r}");
        seen[id as usize] = true;
        assert_eq!(r["result"]["structuredContent"]["created"], true, "{r}");
        let (served, owner) = shard_info(&r);
        crossed += (served != owner) as u32;
    }
    assert!(crossed > 100, "only {crossed} of {N} keys crossed shards");
    for i in (0..N).step_by(97) {
        let r = reader.call_tool("kv_get", json!({"key": format!("p{i}")}));
        assert_eq!(r["result"]["structuredContent"]["value"], i, "{r}");
    }
}

#[test]
fn shutdown_summary_counts_mesh_traffic() {
    let mut server = two_shards();
    let mut clients = one_client_per_shard(&server);
    let c = clients.get_mut(&0).unwrap();
    for i in 0..50 {
        c.call_tool("kv_set", json!({"key": format!("s{i}"), "value": i}));
    }
    drop(clients);
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let err = server.stderr();
    assert!(err.contains("on 2 shard(s)"), "{err}");
    let sent = err
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mesh_requests_sent="))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no mesh counter in summary:\n{err}"));
    assert!(sent > 0, "{err}");
}
