#!/usr/bin/env python3
"""What relaying a legacy HTTP session's request to its owning core costs:
round-trip latency of `tools/call echo` sent one at a time on a connection
the session's own shard accepted (local), against one another shard
accepted (relayed over the mesh), in alternating batches.

Needs two CPUs for the server. The kernel spreads connections over the
shards' SO_REUSEPORT sockets, so the script opens connections until it has
one of each kind; the `x-tessera-shard` response header says which shard
answered, and the session id's first four hex digits name its owner.
Measures latency only: a Python client cannot load the server.

Usage: bench/relay_cost.py [--calls 5000] [--cores 0-1] [--server target/release/tessera]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_listening  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2025-11-25"}
ECHO = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hello"}}})


def call(conn, body, headers):
    conn.request("POST", "/mcp", body, headers)
    r = conn.getresponse()
    data = r.read()
    if r.status not in (200, 202):
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
    return r, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--cores", default="0-1")
    ap.add_argument("--server", default="target/release/tessera")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([a.server, "serve", "--cores", a.cores, "--http", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        r, _ = call(first, json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "relay", "version": "1"}}}), HEADERS)
        sid = r.getheader("Mcp-Session-Id")
        owner = int(sid[:4], 16)
        h = dict(HEADERS, **{"Mcp-Session-Id": sid})
        call(first, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), h)
        conns = {}
        for _ in range(200):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            r, _ = call(c, ECHO, h)
            kind = "local" if int(r.getheader("x-tessera-shard")) == owner else "relayed"
            conns.setdefault(kind, c)
            if len(conns) == 2:
                break
        if len(conns) < 2:
            sys.exit("could not get both a local and a relayed connection (one shard only?)")
        lat = {"local": [], "relayed": []}
        for _ in range(10):
            for kind, c in conns.items():
                for _ in range(a.calls // 10):
                    t = time.perf_counter()
                    _, data = call(c, ECHO, h)
                    lat[kind].append((time.perf_counter() - t) * 1e6)
                    if b'"text":"hello"' not in data:
                        raise RuntimeError(f"wrong answer: {data[:200]!r}")
        res = {}
        for kind, v in lat.items():
            v.sort()
            res[kind] = {"p50_us": statistics.median(v), "p99_us": v[int(len(v) * 0.99)]}
            print(f"{kind:8} p50 {res[kind]['p50_us']:8.1f} us   p99 {res[kind]['p99_us']:8.1f} us")
        print(f"relayed / local p50: {res['relayed']['p50_us'] / res['local']['p50_us']:.2f}")
        print(json.dumps(res))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
