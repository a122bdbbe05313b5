#!/usr/bin/env bash
# Side-by-side throughput and latency, in one run on this machine: the bare
# baselines (examples/bare.rs, the physical limit of the runtime), tessera
# over TCP and HTTP in both eras, and rmcp (the official Rust SDK,
# bench/peers/rmcp-echo) serving the same echo tool. Every server is pinned
# to SERVER_CORE, the loadgen to LOAD_CORE; every case runs RUNS times and
# the table shows medians.
#
# HTTP is measured twice: with tessera-loadgen (both eras) and, when wrk is
# installed, with wrk (modern era, benches/wrk/modern-echo.lua, which checks
# every response): the loadgen is itself a glommio/io_uring client, and on a
# VM its per-response wake-ups cost the server core more than wrk's epoll
# loop does, so wrk shows the server's HTTP ceiling and the loadgen what
# users of the bundled tool will see. Last, bench/idle_conns.py measures RSS
# per idle connection.
#
# Usage: bench/compare.sh [--runs N] [--duration 5s] [--no-rmcp] [--no-fanout] [--no-idle]
#                         [--ab OTHER-TESSERA-BINARY]
# --ab runs every tessera case against a second build too (an A/B of a
# change: build the old commit elsewhere and pass its target/release/tessera);
# its rows are suffixed @B and its runs alternate with this build's.
# Env:   SERVER_CORE (0), LOAD_CORE (1)
# Needs: a Rust toolchain, python3; wrk (optional, Debian package `wrk`);
#        RLIMIT_NOFILE > 10,100 for the fan-out case.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DURATION=5s
RMCP=1
FANOUT=1
IDLE=1
AB=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --no-rmcp) RMCP=0; shift ;;
    --no-fanout) FANOUT=0; shift ;;
    --no-idle) IDLE=0; shift ;;
    --ab) AB=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
SC=${SERVER_CORE:-0}
LC=${LOAD_CORE:-1}

cargo build --release -q -p tessera-mcp -p tessera-loadgen --bins --example bare
T=target/release
LOADGEN=$T/tessera-loadgen
if [ "$RMCP" = 1 ]; then
  (cd bench/peers/rmcp-echo && cargo build --release -q)
  RMCP_BIN=bench/peers/rmcp-echo/target/release/rmcp-echo
fi

OUT=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

# run_once NAME RUN SERVER-COMMAND-WITH-@PORT@ LOADGEN-ARGS-WITH-@ADDR@
run_once() {
  local name=$1 i=$2 server=$3 load=$4
  local port; port=$(free_port)
  # shellcheck disable=SC2086
  ${server//@PORT@/$port} >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$port"
  # shellcheck disable=SC2086
  if ! $LOADGEN ${load//@ADDR@/127.0.0.1:$port} --cores "$LC" --json --quiet >"$OUT/$name.$i.json" 2>"$OUT/$name.$i.err"; then
    echo "case $name run $i failed:" >&2; cat "$OUT/$name.$i.err" >&2; cat "$OUT/$name.$i.json" >&2
    exit 1
  fi
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
}

# case NAME SERVER-COMMAND-WITH-@PORT@ LOADGEN-ARGS-WITH-@ADDR@
run_case() {
  local name=$1 server=$2 load=$3
  for i in $(seq 1 "$RUNS"); do
    run_once "$name" "$i" "$server" "$load"
  done
  echo "$name" >>"$OUT/cases"
}

# tessera_case NAME TESSERA-ARGS-WITH-@PORT@ LOADGEN-ARGS-WITH-@ADDR@: with
# --ab OTHER, runs alternate between this build and OTHER (case NAME@B), so
# drift of the machine falls on both alike.
tessera_case() {
  local name=$1 args=$2 load=$3
  for i in $(seq 1 "$RUNS"); do
    run_once "$name" "$i" "$TESSERA $args" "$load"
    if [ -n "$AB" ]; then
      run_once "$name@B" "$i" "$AB serve --cores $SC $args" "$load"
    fi
  done
  echo "$name" >>"$OUT/cases"
  if [ -n "$AB" ]; then echo "$name@B" >>"$OUT/cases"; fi
}

# wrk_once NAME RUN SERVER-COMMAND-WITH-@PORT@: wrk -c64 against /mcp, modern
# era; a 1 s unmeasured run first (wrk has no warm-up of its own).
wrk_once() {
  local name=$1 i=$2 server=$3
  local port; port=$(free_port)
  # shellcheck disable=SC2086
  ${server//@PORT@/$port} >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$port"
  local url="http://127.0.0.1:$port/mcp"
  taskset -c "$LC" wrk -t1 -c64 -d1s -s benches/wrk/modern-echo.lua "$url" >/dev/null
  taskset -c "$LC" wrk -t1 -c64 -d"$DURATION" --latency -s benches/wrk/modern-echo.lua "$url" >"$OUT/$name.$i.wrk"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  python3 - "$OUT/$name.$i.wrk" >"$OUT/$name.$i.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def us(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", text, re.M))
wrong = int(re.search(r"wrong responses: (\d+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if wrong or errors:
    sys.exit(f"wrk saw {wrong} wrong responses and {errors.group(1) if errors else 0} HTTP errors:\n{text}")
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(json.dumps({"throughput_msg_per_s": rate, "latency_us": {"p50": us(pct["50"]), "p99": us(pct["99"])}}))
PY
}

# wrk_case NAME SERVER-COMMAND-WITH-@PORT@ [B-SERVER-COMMAND]: with a second
# command, its runs (case NAME@B) alternate with the first's.
run_wrk_case() {
  local name=$1 server=$2 other=${3:-}
  for i in $(seq 1 "$RUNS"); do
    wrk_once "$name" "$i" "$server"
    if [ -n "$other" ]; then wrk_once "$name@B" "$i" "$other"; fi
  done
  echo "$name" >>"$OUT/cases"
  if [ -n "$other" ]; then echo "$name@B" >>"$OUT/cases"; fi
}

TESSERA="$T/tessera serve --cores $SC"
BARE="$T/examples/bare"
CLOSED="--duration $DURATION --warmup 1s"

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr)"
echo "server on core $SC, loadgen on core $LC, $RUNS runs of $DURATION each, medians"
echo

run_case bare-ndjson-16x64 "$BARE ndjson 127.0.0.1:@PORT@ $SC" "tcp --addr @ADDR@ --connections 16 --pipeline 64 $CLOSED"
tessera_case tessera-tcp-16x64 "--tcp 127.0.0.1:@PORT@" "tcp --addr @ADDR@ --connections 16 --pipeline 64 $CLOSED"
run_case bare-ndjson-1x1 "$BARE ndjson 127.0.0.1:@PORT@ $SC" "tcp --addr @ADDR@ --connections 1 --pipeline 1 $CLOSED"
tessera_case tessera-tcp-1x1 "--tcp 127.0.0.1:@PORT@" "tcp --addr @ADDR@ --connections 1 --pipeline 1 $CLOSED"
run_case bare-http-64 "$BARE http 127.0.0.1:@PORT@ $SC" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
tessera_case tessera-http-modern-64 "--http 127.0.0.1:@PORT@" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
tessera_case tessera-http-legacy-64 "--http 127.0.0.1:@PORT@" "http --era legacy --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
if [ "$RMCP" = 1 ]; then
  run_case rmcp-http-modern-64 "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
  run_case rmcp-http-legacy-64 "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@" "http --era legacy --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
fi
if command -v wrk >/dev/null; then
  run_wrk_case bare-http-64-wrk "$BARE http 127.0.0.1:@PORT@ $SC"
  run_wrk_case tessera-http-modern-64-wrk "$TESSERA --http 127.0.0.1:@PORT@" \
    "${AB:+$AB serve --cores $SC --http 127.0.0.1:@PORT@}"
  if [ "$RMCP" = 1 ]; then
    run_wrk_case rmcp-http-modern-64-wrk "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@"
  fi
else
  echo "(wrk not installed: no wrk cases; apt-get install wrk)" >&2
fi
if [ "$FANOUT" = 1 ]; then
  # 10,000 subscribers x 20 resources, 200 updates/s: 2,000,000 notifications/s offered
  tessera_case tessera-fanout-10k "--tcp 127.0.0.1:@PORT@" "fanout --addr @ADDR@ --subscribers 10000 --keys 20 --updates-per-sec 200 --duration $DURATION --warmup 1s"
fi

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
cases = open(os.path.join(out, "cases")).read().split()
res = {}
for c in cases:
    runs = []
    i = 1
    while os.path.exists(os.path.join(out, f"{c}.{i}.json")):
        runs.append(json.load(open(os.path.join(out, f"{c}.{i}.json"))))
        i += 1
    rate = statistics.median(r.get("throughput_msg_per_s", r.get("notifications_per_s", 0)) for r in runs)
    p50 = statistics.median(r["latency_us"]["p50"] for r in runs)
    p99 = statistics.median(r["latency_us"]["p99"] for r in runs)
    res[c] = (rate, p50, p99, [round(r.get("throughput_msg_per_s", r.get("notifications_per_s", 0))) for r in runs])
print(f"{'case':28} {'msg/s (median)':>15} {'p50 us':>9} {'p99 us':>9}   runs")
for c, (rate, p50, p99, all_) in res.items():
    print(f"{c:28} {rate:15,.0f} {p50:9.1f} {p99:9.1f}   {all_}")
print()
def ratio(a, b, what):
    if a in res and b in res and res[b][0] > 0:
        print(f"{what:52} {res[a][0] / res[b][0]:6.2f}")
ratio("tessera-tcp-16x64", "bare-ndjson-16x64", "tessera TCP 16x64 / bare NDJSON limit")
for c in [c for c in res if c.endswith("@B")]:
    ratio(c[:-2], c, f"A/B: {c[:-2]} this build / B")
if "tessera-tcp-1x1" in res and "bare-ndjson-1x1" in res:
    print(f"{'tessera TCP 1x1 p50 / bare NDJSON 1x1 p50':52} {res['tessera-tcp-1x1'][1] / res['bare-ndjson-1x1'][1]:6.2f}")
ratio("tessera-http-modern-64", "bare-http-64", "tessera HTTP modern 64 / bare HTTP limit")
ratio("tessera-http-legacy-64", "bare-http-64", "tessera HTTP legacy 64 / bare HTTP limit")
ratio("tessera-http-modern-64", "rmcp-http-modern-64", "tessera HTTP modern 64 / rmcp HTTP modern 64")
ratio("tessera-http-legacy-64", "rmcp-http-legacy-64", "tessera HTTP legacy 64 / rmcp HTTP legacy 64")
ratio("tessera-http-modern-64-wrk", "bare-http-64-wrk", "wrk: tessera HTTP modern 64 / bare HTTP limit")
ratio("tessera-http-modern-64-wrk", "rmcp-http-modern-64-wrk", "wrk: tessera HTTP modern 64 / rmcp HTTP modern 64")
PY

if [ "$IDLE" = 1 ]; then
  echo
  echo "idle connections (bench/idle_conns.py):"
  python3 bench/idle_conns.py --server "$T/tessera" --core "$SC"
fi
