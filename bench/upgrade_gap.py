#!/usr/bin/env python3
"""How long clients wait while tessera upgrades itself (`serve --upgrade`).

For each scenario it runs tessera-loadgen (`--reconnect --json`) twice
against a release server pinned to one core, the loadgen on another:
once without an upgrade (before) and once with a binary upgrade started
halfway through (during). It reports p99 and the longest wait (p100: the
loadgen's max latency, which counts a resent request from its first send)
of both runs, the p99 of the one-second tick the upgrade fell in, and that
nothing was missing, refused or reset. Medians over --runs.

    bench/upgrade_gap.py --runs 3 [--bin target/release]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port  # noqa: E402


def start(bin_dir, args, log):
    return subprocess.Popen(
        [os.path.join(bin_dir, "tessera"), "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def wait_for(path, needle, timeout_s=20):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with open(path) as f:
            if needle in f.read():
                return True
        time.sleep(0.02)
    return False


def one_run(bin_dir, scenario, upgrade, workdir):
    tcp, http = free_port(), free_port()
    sock = os.path.join(workdir, "upgrade.sock")
    data = os.path.join(workdir, "data")
    shutil.rmtree(data, ignore_errors=True)
    args = ["--cores", "0", "--tcp", f"127.0.0.1:{tcp}", "--http", f"127.0.0.1:{http}",
            "--upgrade-socket", sock]
    if scenario["store"]:
        args += ["--data-dir", data]
    old_log_path = os.path.join(workdir, "old.log")
    with open(old_log_path, "w") as old_log:
        old = start(bin_dir, args, old_log)
    if not wait_for(old_log_path, "listening on http://"):
        old.kill()
        sys.exit("the server did not start:\n" + open(old_log_path).read())
    addr = f"127.0.0.1:{tcp}" if scenario["wire"][0] == "tcp" else f"127.0.0.1:{http}"
    lg = subprocess.Popen(
        [os.path.join(bin_dir, "tessera-loadgen"), *scenario["wire"], "--addr", addr,
         *scenario["load"], "--duration", "6s", "--warmup", "1s", "--cores", "1",
         "--reconnect", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    new = None
    if upgrade:
        time.sleep(4.0)  # 1 s warm-up, then 3 s of steady load
        new_log_path = os.path.join(workdir, "new.log")
        with open(new_log_path, "w") as new_log:
            new = start(bin_dir, args + ["--upgrade"], new_log)
    out, err = lg.communicate(timeout=60)
    for p in (old, new):
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(timeout=20)
    summary = json.loads(out)
    # The worst one-second tick's p99 (the one the upgrade fell in).
    ticks = [float(m) for m in re.findall(r"p99[= ]+([0-9.]+)", err)]
    summary["worst_tick_p99_us"] = max(ticks) if ticks else None
    return summary


SCENARIOS = [
    {"name": "TCP 16x64, --data-dir", "wire": ["tcp"], "store": True,
     "load": ["--connections", "16", "--pipeline", "64"]},
    {"name": "TCP 16x64, no store", "wire": ["tcp"], "store": False,
     "load": ["--connections", "16", "--pipeline", "64"]},
    {"name": "HTTP legacy 64x1, --data-dir", "wire": ["http", "--era", "legacy"], "store": True,
     "load": ["--connections", "64", "--pipeline", "1"]},
    {"name": "HTTP modern 64x1, no store", "wire": ["http", "--era", "modern"], "store": False,
     "load": ["--connections", "64", "--pipeline", "1"]},
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default="target/release")
    a = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tessera-upgrade-gap-")
    med = statistics.median
    print(f"{'scenario':32} {'before p99':>11} {'before max':>11} {'during p99':>11} "
          f"{'tick p99':>10} {'during max':>11} {'reconn':>7} {'lost':>5}")
    try:
        for sc in SCENARIOS:
            before = [one_run(a.bin, sc, False, workdir) for _ in range(a.runs)]
            during = [one_run(a.bin, sc, True, workdir) for _ in range(a.runs)]
            lost = sum(s["missing"] + s["wrong"] + s["refused"] + s["resets"] for s in before + during)
            print(f"{sc['name']:32} "
                  f"{med(s['latency_us']['p99'] for s in before):>9.0f}us "
                  f"{med(s['latency_us']['max'] for s in before):>9.0f}us "
                  f"{med(s['latency_us']['p99'] for s in during):>9.0f}us "
                  f"{med(s['worst_tick_p99_us'] for s in during):>8.0f}us "
                  f"{med(s['latency_us']['max'] for s in during):>9.0f}us "
                  f"{med(s['reconnects'] for s in during):>7.0f} {lost:>5}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
