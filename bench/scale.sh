#!/usr/bin/env bash
# Throughput against the number of server cores: for N = 1 .. (CPUs - 1),
# tessera serves on cores 0..N-1 (one shard each) and tessera-loadgen drives
# it from the remaining cores, so server and load never share a core. Prints
# msg/s in total and per server core, p99, and how busy the loadgen's cores
# were (above 90% the loadgen may be the bound, and the row says so). On a
# 2-CPU machine only N = 1 fits; a bigger host shows the curve.
#
# Usage: bench/scale.sh [--runs N] [--duration 5s] [--max-cores N] [--http]
#   --http   drive Streamable HTTP (modern era, 64 connections per server
#            core, pipeline 1) instead of NDJSON over TCP (16 connections per
#            server core, pipeline 64)
# Needs: a Rust toolchain, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DURATION=5s
HTTP=0
MAX=$(( $(nproc) - 1 ))
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --max-cores) MAX=$2; shift 2 ;;
    --http) HTTP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
CPUS=$(nproc)
if [ "$MAX" -lt 1 ] || [ "$MAX" -ge "$CPUS" ]; then
  echo "--max-cores must be 1 .. $((CPUS - 1)) (one CPU at least stays for the loadgen)" >&2
  exit 2
fi

cargo build --release -q -p tessera-mcp -p tessera-loadgen --bins
T=target/release
# shellcheck source=bench/lib.sh
. bench/lib.sh

echo "machine: $CPUS CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr)"
echo "$([ "$HTTP" = 1 ] && echo 'HTTP modern, 64 connections x 1' || echo 'TCP NDJSON, 16 connections x 64') per server core; $RUNS runs of $DURATION, medians"
for n in $(seq 1 "$MAX"); do
  server_cores="0-$((n - 1))"
  load_cores="$n-$((CPUS - 1))"
  for i in $(seq 1 "$RUNS"); do
    port=$(free_port)
    if [ "$HTTP" = 1 ]; then
      listen="--http 127.0.0.1:$port"
      load=(http --era modern --connections $((64 * n)) --pipeline 1)
    else
      listen="--tcp 127.0.0.1:$port"
      load=(tcp --connections $((16 * n)) --pipeline 64)
    fi
    # shellcheck disable=SC2086
    $T/tessera serve --cores "$server_cores" $listen >"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port"
    if ! $T/tessera-loadgen "${load[@]}" --addr "127.0.0.1:$port" --cores "$load_cores" \
        --duration "$DURATION" --warmup 1s --json --quiet >"$OUT/$n.$i.json" 2>"$OUT/$n.$i.err"; then
      echo "N=$n run $i failed:" >&2; cat "$OUT/$n.$i.err" >&2; exit 1
    fi
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  done
done

python3 - "$OUT" "$MAX" <<'PY'
import json, statistics, sys
out, top = sys.argv[1], int(sys.argv[2])
print(f"{'N':>3} {'msg/s':>12} {'per core':>11} {'vs N=1':>7} {'p99 us':>9} {'loadgen':>8}")
base = None
for n in range(1, top + 1):
    runs = []
    i = 1
    while True:
        try:
            runs.append(json.load(open(f"{out}/{n}.{i}.json")))
        except FileNotFoundError:
            break
        i += 1
    rate = statistics.median(r["throughput_msg_per_s"] for r in runs)
    p99 = statistics.median(r["latency_us"]["p99"] for r in runs)
    busy = statistics.median(max(t["busy"] for t in r["loadgen_cpu"]["threads"]) for r in runs)
    base = base or rate / n
    note = "  (loadgen may be the bound)" if busy > 0.9 else ""
    print(f"{n:>3} {rate:12,.0f} {rate / n:11,.0f} {rate / n / base:7.2f} {p99:9.1f} {busy * 100:7.0f}%{note}")
PY
