#!/usr/bin/env python3
"""Memory per idle connection: the server's RSS growth per open, idle MCP
connection.

Starts `tessera serve` on one core, opens WARM connections (the warm-up: the
executor's buffers, allocator arenas and tables reach their working size),
reads the server's RSS, opens the rest up to TOTAL, waits for RSS to settle
and reports (RSS_total - RSS_warm) / (TOTAL - WARM). Every connection sends
`initialize` and `notifications/initialized` and reads the answer, so each one
holds a real legacy session, then stays idle and open until the end.

Connections are spread over client processes (each holds at most
--per-process sockets) and over source addresses 127.0.0.1, 127.0.0.2, ...
(one address gives ~28K ephemeral ports per destination). The script raises
RLIMIT_NOFILE to its hard limit for itself and the server; the server needs
one descriptor per connection, so TOTAL is capped at the hard limit minus a
margin and the report says when it was.

Usage: bench/idle_conns.py [--total 100000] [--warm 1000] [--server target/release/tessera]
"""

import argparse
import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, settled_rss_kib, wait_listening  # noqa: E402

INIT = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"idle","version":"1"}}}\n'
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
)


def die_with_parent():
    """The server and clients end when this script does, however it ends."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def client(port, count, source, ready_fd):
    """Child: open `count` initialised connections from `source`, report, hold."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(INIT)
        socks.append(s)
    for s in socks:
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                os.write(ready_fd, b"E")
                return
            buf += chunk
        if b'"result"' not in buf:
            os.write(ready_fd, b"E")
            return
    os.write(ready_fd, b"R")
    # Hold the sockets until the parent closes the pipe.
    os.read(0, 1)


def open_batch(port, count, per_process, next_source, held_open):
    """Fork clients for `count` connections; returns their pids after all are
    ready. `held_open` lists the hold-pipe write ends of earlier clients."""
    pids = []
    while count > 0:
        n = min(count, per_process)
        r, w = os.pipe()
        hold_r, hold_w = os.pipe()
        source = f"127.0.0.{next_source[0]}"
        next_source[0] += 1
        pid = os.fork()
        if pid == 0:
            # Only the parent may hold write ends of the hold pipes, or a
            # client would never see EOF and never exit.
            os.close(r)
            os.close(hold_w)
            for fd in held_open:
                os.close(fd)
            die_with_parent()
            os.dup2(hold_r, 0)
            try:
                client(port, n, source, w)
            finally:
                os._exit(0)
        os.close(w)
        os.close(hold_r)
        status = os.read(r, 1)
        os.close(r)
        if status != b"R":
            raise RuntimeError(f"client {source} failed to open {n} sessions")
        pids.append((pid, hold_w))
        held_open.append(hold_w)
        count -= n
    return pids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--warm", type=int, default=1_000)
    ap.add_argument("--per-process", type=int, default=9_000)
    ap.add_argument("--server", default="target/release/tessera")
    ap.add_argument("--core", default="0")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    total = args.total
    capped = False
    if total + 200 > hard:
        total = hard - 200
        capped = True
    per_process = min(args.per_process, hard - 100)

    port = free_port()
    server = subprocess.Popen(
        [args.server, "serve", "--cores", args.core, "--tcp", f"127.0.0.1:{port}",
         "--max-connections-per-shard", str(total + 100),
         "--max-sessions-per-shard", str(total + 100)],
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL, stderr=open("/tmp/idle_conns.server.log", "w"),
    )
    clients = []
    try:
        wait_listening(port)
        base = settled_rss_kib(server.pid, 0.5)
        source = [1]
        held_open = []
        clients += open_batch(port, args.warm, per_process, source, held_open)
        warm = settled_rss_kib(server.pid)
        t0 = time.time()
        clients += open_batch(port, total - args.warm, per_process, source, held_open)
        opened_s = time.time() - t0
        full = settled_rss_kib(server.pid)
        per_conn = (full - warm) * 1024 / (total - args.warm)
        result = {
            "connections": total,
            "capped_by_rlimit_nofile": capped,
            "rlimit_nofile_hard": hard,
            "rss_idle_kib": base,
            "rss_warm_kib": warm,
            "rss_full_kib": full,
            "rss_per_connection_bytes": round(per_conn),
            "open_seconds": round(opened_s, 2),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"connections          {total:,}" + (f" (capped: RLIMIT_NOFILE hard limit {hard})" if capped else ""))
            print(f"RSS, server started  {base:,} KiB")
            print(f"RSS, {args.warm:,} sessions  {warm:,} KiB")
            print(f"RSS, {total:,} sessions {full:,} KiB")
            print(f"RSS per connection   {per_conn:,.0f} bytes ({per_conn / 1024:.2f} KiB)")
    finally:
        for pid, hold in clients:
            os.close(hold)
        for pid, _ in clients:
            os.waitpid(pid, 0)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
