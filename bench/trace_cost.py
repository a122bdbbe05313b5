#!/usr/bin/env python3
"""What tracing (--otlp-endpoint) costs on the request path.

Runs tessera-loadgen against a release server pinned to core 0 (loadgen on
core 1) for each variant: a baseline binary (--base, e.g. a build from
before tracing existed), this build with tracing off, and this build
exporting to a real OTLP receiver (tests/interop/otlp_receiver.py, on
core 1 as well) at --trace-sample-ratio 0, 0.01 and 1. Workloads: TCP
tools/call echo 16x64 and HTTP modern 64x1. Reports median throughput and
p99 of --runs, and the server's trace_dropped counter at the end.

    bench/trace_cost.py --runs 3 [--bin target/release] [--base DIR]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, "target", "interop-venv", "bin", "python")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_listening  # noqa: E402


def one_run(server_bin, loadgen_bin, workload, otlp_ratio):
    tcp, http, admin = free_port(), free_port(), free_port()
    receiver = None
    args = ["--cores", "0", "--tcp", f"127.0.0.1:{tcp}", "--http", f"127.0.0.1:{http}",
            "--admin", f"127.0.0.1:{admin}"]
    if otlp_ratio is not None:
        receiver = subprocess.Popen(["taskset", "-c", "1", PY,
                                     os.path.join(ROOT, "tests/interop/otlp_receiver.py")],
                                    stdout=subprocess.PIPE, text=True)
        port = json.loads(receiver.stdout.readline())["port"]
        # Drain its output so it never blocks on a full pipe.
        drain = subprocess.Popen(["cat"], stdin=receiver.stdout, stdout=subprocess.DEVNULL)
        args += ["--otlp-endpoint", f"http://127.0.0.1:{port}",
                 "--trace-sample-ratio", str(otlp_ratio)]
    server = subprocess.Popen([server_bin, "serve", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(tcp)
        wait_listening(http)
        if workload == "tcp":
            lg = ["tcp", "--addr", f"127.0.0.1:{tcp}", "--connections", "16", "--pipeline", "64"]
        else:
            lg = ["http", "--era", "modern", "--addr", f"127.0.0.1:{http}",
                  "--connections", "64", "--pipeline", "1"]
        out = subprocess.run([loadgen_bin, *lg, "--duration", "3s", "--warmup", "1s",
                              "--cores", "1", "--json"],
                             capture_output=True, text=True, timeout=60)
        summary = json.loads(out.stdout)
        dropped = 0
        try:
            with socket.create_connection(("127.0.0.1", admin), timeout=2) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                text = b""
                while chunk := s.recv(65536):
                    text += chunk
            for line in text.decode().splitlines():
                if line.startswith("tessera_trace_dropped"):
                    dropped = float(line.split()[-1])
        except OSError:
            pass
        return summary["throughput_msg_per_s"], summary["latency_us"]["p99"], dropped
    finally:
        server.terminate()
        server.wait(timeout=30)
        if receiver is not None:
            receiver.kill()
            receiver.wait()
            drain.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--base", help="a directory with a baseline tessera binary")
    a = ap.parse_args()
    loadgen = os.path.join(a.bin, "tessera-loadgen")
    variants = []
    if a.base:
        variants.append(("baseline build", os.path.join(a.base, "tessera"), None))
    this = os.path.join(a.bin, "tessera")
    variants += [("tracing off", this, None), ("OTLP, ratio 0", this, 0.0),
                 ("OTLP, ratio 0.01", this, 0.01), ("OTLP, ratio 1", this, 1.0)]
    print(f"{'workload':10} {'variant':18} {'msg/s':>12} {'p99 us':>9} {'dropped':>9}")
    for workload in ("tcp", "http"):
        for name, binary, ratio in variants:
            runs = [one_run(binary, loadgen, workload, ratio) for _ in range(a.runs)]
            print(f"{workload:10} {name:18} "
                  f"{statistics.median(r[0] for r in runs):>12,.0f} "
                  f"{statistics.median(r[1] for r in runs):>9.0f} "
                  f"{statistics.median(r[2] for r in runs):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
