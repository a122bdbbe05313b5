#!/usr/bin/env python3
"""Memory per legacy HTTP session and per modern listen stream: the
server's RSS growth per session (2025-11-25: initialized, one resource
subscription, idle) and per open `subscriptions/listen` stream (2026-07-28:
one SSE response held open on its own connection, one resource in its
filter).

Starts `tessera serve` on one core with room for TOTAL sessions, creates one
kv key (`kv://mem`), then:

- sessions: WARM sessions first (the executor's tables and allocator reach
  their working size), RSS, then the rest up to TOTAL over a few keep-alive
  connections in parallel worker processes, RSS once it settles. Sessions
  need no socket each, so 100,000 fit on one shard here.
- listen streams: STREAMS connections (capped below RLIMIT_NOFILE), each
  posting subscriptions/listen and reading its acknowledgement, then idle;
  RSS before and after. A stream's figure includes its TCP connection
  (bench/idle_conns.py measures a bare connection alone).

Usage: bench/session_mem.py [--sessions 100000] [--warm 2000] [--streams 5000]
                            [--server target/release/tessera]
"""

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, settled_rss_kib, wait_listening  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
LEGACY = "2025-11-25"
MODERN = "2026-07-28"


def post(conn, body, headers):
    conn.request("POST", "/mcp", json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    if r.status not in (200, 202):
        raise RuntimeError(f"{body.get('method')}: HTTP {r.status}: {data[:200]!r}")
    return r, data


def make_sessions(args):
    port, count = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(count):
        r, _ = post(conn, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {},
            "clientInfo": {"name": "mem", "version": "1"}}}, HEADERS)
        sid = r.getheader("Mcp-Session-Id")
        h = dict(HEADERS, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": LEGACY})
        post(conn, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
        _, data = post(conn, {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
                              "params": {"uri": "kv://mem"}}, h)
        if b'"result"' not in data:
            raise RuntimeError(f"subscribe failed: {data[:200]!r}")
    return count


def sessions_in_parallel(port, total, workers=4):
    share = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    with multiprocessing.Pool(workers) as pool:
        return sum(pool.map(make_sessions, [(port, n) for n in share if n]))


LISTEN_BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {
    "notifications": {"resourceSubscriptions": ["kv://mem"]},
    "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
              "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()


def open_stream(port):
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {MODERN}\r\n"
            f"Mcp-Method: subscriptions/listen\r\nContent-Length: {len(LISTEN_BODY)}\r\n\r\n")
    s.sendall(head.encode() + LISTEN_BODY)
    got = b""
    while b"subscriptions/acknowledged" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"stream closed before its acknowledgement: {got[:300]!r}")
        got += chunk
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--warm", type=int, default=2_000)
    ap.add_argument("--streams", type=int, default=5_000)
    ap.add_argument("--server", default="target/release/tessera")
    ap.add_argument("--core", default="0")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    streams = min(a.streams, hard - 200)
    port = free_port()
    server = subprocess.Popen(
        [a.server, "serve", "--cores", a.core, "--http", f"127.0.0.1:{port}",
         "--max-sessions-per-shard", str(a.sessions + 1000),
         "--max-connections-per-shard", str(streams + 1000)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = []
    try:
        wait_listening(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        r, _ = post(conn, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "mem", "version": "1"}}},
            HEADERS)
        h = dict(HEADERS, **{"Mcp-Session-Id": r.getheader("Mcp-Session-Id"), "MCP-Protocol-Version": LEGACY})
        post(conn, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
        post(conn, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "kv_set", "arguments": {"key": "mem", "value": 1}}}, h)

        sessions_in_parallel(port, a.warm)
        base = settled_rss_kib(server.pid)
        t0 = time.time()
        made = sessions_in_parallel(port, a.sessions - a.warm)
        after = settled_rss_kib(server.pid)
        per_session = (after - base) * 1024 / made
        print(f"legacy sessions: {a.sessions} on one shard ({made} after {a.warm} warm, "
              f"{time.time() - t0:.0f} s), RSS {base} -> {after} KiB: "
              f"{per_session:,.0f} bytes per session (initialized, 1 subscription)")

        warm = max(1, streams // 10)
        for _ in range(warm):
            held.append(open_stream(port))
        base = settled_rss_kib(server.pid)
        for _ in range(streams - warm):
            held.append(open_stream(port))
        after = settled_rss_kib(server.pid)
        per_stream = (after - base) * 1024 / (streams - warm)
        print(f"modern listen streams: {streams} open ({streams - warm} after {warm} warm), "
              f"RSS {base} -> {after} KiB: {per_stream:,.0f} bytes per stream (connection included)")
        print(json.dumps({"bytes_per_session": per_session, "sessions": a.sessions,
                          "bytes_per_listen_stream": per_stream, "streams": streams}))
    finally:
        for s in held:
            s.close()
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
