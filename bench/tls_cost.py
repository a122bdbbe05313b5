#!/usr/bin/env python3
"""The cost of TLS (--tls-cert), measured against the same server without it
in the same run.

1. Keep-alive throughput and latency: wrk -t1 -c64 with
   benches/wrk/modern-echo.lua (which checks every answer) against HTTPS and
   against plain HTTP, rounds alternating; medians of req/s and p99.
2. Full handshakes per core: wrk -c32 with `Connection: close`, so every
   request comes on a new connection, over HTTPS and over HTTP. The
   server's CPU time (utime + stime from /proc/PID/stat) per connection,
   HTTPS minus HTTP, is what one handshake costs a core; 1 / that is the
   handshakes one core can do. (One client core cannot saturate the server
   with handshakes: the client's side costs more, so the rate wrk reaches
   is the client's bound, and the server's busy share is shown.)
3. Memory per idle TLS connection: RSS growth per connection that did its
   handshake, initialize and notifications/initialized and stays open, with
   the same for plain connections.

The server runs on SERVER_CORE, wrk and the clients on LOAD_CORE. The
certificate is a self-signed ECDSA P-256 one made with openssl. When nginx is
installed, one pinned nginx process answering a fixed 200
(bench/nginx_static.sh, over HTTP and HTTPS with the same pair) is measured
the same way in the same run: the real-world limit for 1 and 2.

Usage: bench/tls_cost.py [--runs 3] [--duration 5] [--seconds 5] [--idle 3000]
                         [--server target/release/tessera]
Env:   SERVER_CORE (0), LOAD_CORE (1)
Needs: wrk, openssl (the CLI, for the certificate)
"""

import argparse
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, settled_rss_kib, wait_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = int(os.environ.get("LOAD_CORE", "1"))
INIT = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"idle","version":"1"}}}\n'
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
)


def make_cert(dir):
    cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def start_nginx(tls, port):
    """One pinned nginx on SERVER_CORE (HTTPS when `tls`); its process."""
    args = ["bash", os.path.join(ROOT, "bench/nginx_static.sh"), str(port), SERVER_CORE]
    if tls:
        args += list(tls)
    everywhere = set(range(os.cpu_count()))
    wrapper = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: os.sched_setaffinity(0, everywhere))
    wait_listening(port)
    pid = int(subprocess.run(["pgrep", "-P", str(wrapper.pid), "nginx"], capture_output=True,
                             text=True, check=True).stdout.split()[0])
    return wrapper, pid


def start(server, tls, http_port=None, tcp_port=None):
    args = [server, "serve", "--cores", SERVER_CORE, "--max-connections-per-shard", "100000"]
    if http_port:
        args += ["--http", f"127.0.0.1:{http_port}"]
    if tcp_port:
        args += ["--tcp", f"127.0.0.1:{tcp_port}"]
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    # The script itself runs on LOAD_CORE; the server may use every core
    # (it pins itself with --cores).
    everywhere = set(range(os.cpu_count()))
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, everywhere))
    wait_listening(http_port or tcp_port)
    return p


def stop(p):
    p.terminate()
    p.wait(timeout=30)


def wrk(url, seconds):
    script = os.path.join(ROOT, "benches/wrk/modern-echo.lua")
    base = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", "-c64", "-s", script]
    subprocess.run(base + ["-d1s", url], check=True, capture_output=True)  # warm-up
    out = subprocess.run(base + [f"-d{seconds}s", "--latency", url], check=True,
                         capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    if "errors" in out.lower() and "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, float(p99.group(1)) * scale


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def new_connections(server, tls, seconds, nginx=False):
    """wrk -c32 with `Connection: close`: every request on a new connection
    (a full TLS handshake each over HTTPS). Returns (server CPU per
    connection in us, connections/s, server core busy share)."""
    port = free_port()
    if nginx:
        p, pid = start_nginx(tls, port)
    else:
        p = start(server, tls, http_port=port)
        pid = p.pid
    scheme = "https" if tls else "http"
    script = os.path.join(ROOT, "benches/wrk/modern-echo.lua")
    base = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", "-c32", "-H", "Connection: close",
            "-s", script]
    url = f"{scheme}://127.0.0.1:{port}/mcp"
    try:
        subprocess.run(base + ["-d1s", url], check=True, capture_output=True)
        before = cpu_s(pid)
        out = subprocess.run(base + [f"-d{seconds}s", url], check=True, capture_output=True,
                             text=True).stdout
        busy = cpu_s(pid) - before
        n = int(re.search(r"(\d+) requests in", out).group(1))
        return busy / n * 1e6, n / seconds, busy / seconds
    finally:
        stop(p)


def idle_rss(server, tls, total):
    port = free_port()
    p = start(server, tls, tcp_port=port)
    held = []
    try:
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(tls[0])

        def open_one():
            s = socket.create_connection(("127.0.0.1", port))
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(INIT)
            got = b""
            while b"\n" not in got:
                got += s.recv(4096)
            held.append(s)

        warm = total // 5
        for _ in range(warm):
            open_one()
        base = settled_rss_kib(p.pid)
        for _ in range(total - warm):
            open_one()
        grown = settled_rss_kib(p.pid)
        return (grown - base) * 1024 / (total - warm)
    finally:
        for s in held:
            s.close()
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=3000)
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/tessera"))
    a = ap.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    with tempfile.TemporaryDirectory() as d:
        tls = make_cert(d)
        have_nginx = shutil.which("nginx") is not None
        names = ["http", "https"] + (["nginx http", "nginx https"] if have_nginx else [])
        rows = {n: [] for n in names}
        for _ in range(a.runs):
            for name in names:
                scheme = name.split()[-1]
                port = free_port()
                with_tls = tls if scheme == "https" else None
                if name.startswith("nginx"):
                    p, _ = start_nginx(with_tls, port)
                else:
                    p = start(a.server, with_tls, http_port=port)
                try:
                    rows[name].append(wrk(f"{scheme}://127.0.0.1:{port}/mcp", a.duration))
                finally:
                    stop(p)
        print("keep-alive, wrk -t1 -c64, modern echo (medians of %d runs)" % a.runs)
        for name, r in rows.items():
            print("  %-11s  %9.0f req/s   p99 %6.2f ms   runs: %s" % (
                name, statistics.median(x[0] for x in r), statistics.median(x[1] for x in r),
                ", ".join("%.0f" % x[0] for x in r)))
        hs = {n: [] for n in names}
        for _ in range(a.runs):
            for name in names:
                with_tls = tls if name.endswith("https") else None
                hs[name].append(new_connections(a.server, with_tls, a.seconds,
                                                nginx=name.startswith("nginx")))
        print("a new connection per request, wrk -t1 -c32 (medians of %d runs)" % a.runs)
        for name, r in hs.items():
            print("  %-11s  %7.0f conn/s   server CPU %6.1f us per connection   server core %3.0f%% busy"
                  % (name, statistics.median(x[1] for x in r), statistics.median(x[0] for x in r),
                     100 * statistics.median(x[2] for x in r)))
        extra = statistics.median(x[0] for x in hs["https"]) - statistics.median(
            x[0] for x in hs["http"])
        print("  a TLS handshake costs tessera %.0f us of CPU: %.0f handshakes/s per core"
              % (extra, 1e6 / extra))
        if have_nginx:
            ng = statistics.median(x[0] for x in hs["nginx https"]) - statistics.median(
                x[0] for x in hs["nginx http"])
            print("  and nginx %.0f us: %.0f handshakes/s per core" % (ng, 1e6 / ng))
        mem = {n: [idle_rss(a.server, tls if n == "tls" else None, a.idle) for _ in range(a.runs)]
               for n in ["plain", "tls"]}
        print("idle connections after initialize (%d each, medians of %d runs)" % (a.idle, a.runs))
        for n, v in mem.items():
            print("  %-5s  %7.0f B per connection   runs: %s" % (
                n, statistics.median(v), ", ".join("%.0f" % x for x in v)))
        print("  TLS adds %.0f B per idle connection"
              % (statistics.median(mem["tls"]) - statistics.median(mem["plain"])))


if __name__ == "__main__":
    main()
