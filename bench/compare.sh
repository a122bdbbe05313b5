#!/usr/bin/env bash
# Side-by-side throughput and latency, in one run on this machine: the bare
# baselines (examples/bare.rs, the physical limit of the runtime), tessera
# over TCP and HTTP in both eras, and rmcp (the official Rust SDK,
# bench/peers/rmcp-echo) serving the same echo tool. Every server is pinned
# to SERVER_CORE, the loadgen to LOAD_CORE; every case runs RUNS times and
# the table shows medians.
#
# HTTP is measured twice: with tessera-loadgen (both eras) and, when wrk is
# installed, with wrk (benches/wrk/{modern,legacy}-echo.lua, which check every
# response), so the table shows that the loadgen is not the bound (its HTTP
# rate against the same server must be >= 0.95 x wrk's, and every loadgen
# row shows how busy the loadgen's own core was). When nginx is installed,
# one pinned nginx process answering a fixed 200 (bench/nginx_static.sh) is
# the real-world HTTP limit. The run ends with the issue-18 targets, each
# with PASS or FAIL, then bench/idle_conns.py measures RSS per idle connection
# and bench/session_mem.py per legacy session and per listen stream.
#
# Usage: bench/compare.sh [--runs N] [--duration 5s] [--no-rmcp] [--no-fanout] [--no-idle]
#                         [--ab OTHER-TESSERA-BINARY]
# --ab runs every tessera case against a second build too (an A/B of a
# change: build the old commit elsewhere and pass its target/release/tessera);
# its rows are suffixed @B and its runs alternate with this build's.
# Env:   SERVER_CORE (0), LOAD_CORE (1)
# Needs: a Rust toolchain, python3; wrk and nginx (optional, Debian packages
#        `wrk`, `nginx-light`);
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

# shellcheck source=bench/lib.sh
. bench/lib.sh

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

# wrk_once NAME RUN ERA SERVER-COMMAND-WITH-@PORT@: wrk -c64 against /mcp in
# ERA (modern: benches/wrk/modern-echo.lua; legacy: one session opened by
# bench/legacy_session.py and benches/wrk/legacy-echo.lua); a 1 s unmeasured
# run first (wrk has no warm-up of its own).
wrk_once() {
  local name=$1 i=$2 era=$3 server=$4
  local port; port=$(free_port)
  # shellcheck disable=SC2086
  ${server//@PORT@/$port} >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$port"
  local url="http://127.0.0.1:$port/mcp" args=()
  if [ "$era" = legacy ]; then args=(-- "$(python3 bench/legacy_session.py "$url")"); fi
  taskset -c "$LC" wrk -t1 -c64 -d1s -s "benches/wrk/$era-echo.lua" "$url" "${args[@]}" >/dev/null
  taskset -c "$LC" wrk -t1 -c64 -d"$DURATION" --latency -s "benches/wrk/$era-echo.lua" "$url" "${args[@]}" >"$OUT/$name.$i.wrk"
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

# run_wrk_case NAME ERA SERVER-COMMAND-WITH-@PORT@ [B-SERVER-COMMAND]: with a
# second command, its runs (case NAME@B) alternate with the first's.
run_wrk_case() {
  local name=$1 era=$2 server=$3 other=${4:-}
  for i in $(seq 1 "$RUNS"); do
    wrk_once "$name" "$i" "$era" "$server"
    if [ -n "$other" ]; then wrk_once "$name@B" "$i" "$era" "$other"; fi
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
# The same with a spinning loadgen: a parked client costs the server a
# wake-up per response batch (an IPI; on a VM a vCPU kick), which a client
# saturated by the bare echo never needs; spinning takes that cost off both.
run_case bare-ndjson-16x64-spin "$BARE ndjson 127.0.0.1:@PORT@ $SC" "tcp --addr @ADDR@ --connections 16 --pipeline 64 --spin-before-park 200 $CLOSED"
tessera_case tessera-tcp-16x64-spin "--tcp 127.0.0.1:@PORT@" "tcp --addr @ADDR@ --connections 16 --pipeline 64 --spin-before-park 200 $CLOSED"
run_case bare-ndjson-1x1 "$BARE ndjson 127.0.0.1:@PORT@ $SC" "tcp --addr @ADDR@ --connections 1 --pipeline 1 $CLOSED"
tessera_case tessera-tcp-1x1 "--tcp 127.0.0.1:@PORT@" "tcp --addr @ADDR@ --connections 1 --pipeline 1 $CLOSED"
run_case bare-http-64 "$BARE http 127.0.0.1:@PORT@ $SC" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
tessera_case tessera-http-modern-64 "--http 127.0.0.1:@PORT@" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
tessera_case tessera-http-legacy-64 "--http 127.0.0.1:@PORT@" "http --era legacy --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
if [ "$RMCP" = 1 ]; then
  run_case rmcp-http-modern-64 "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@" "http --era modern --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
  run_case rmcp-http-legacy-64 "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@ --sessions" "http --era legacy --addr @ADDR@ --connections 64 --pipeline 1 $CLOSED"
fi
if command -v wrk >/dev/null; then
  run_wrk_case bare-http-64-wrk modern "$BARE http 127.0.0.1:@PORT@ $SC"
  run_wrk_case tessera-http-modern-64-wrk modern "$TESSERA --http 127.0.0.1:@PORT@" \
    "${AB:+$AB serve --cores $SC --http 127.0.0.1:@PORT@}"
  run_wrk_case tessera-http-legacy-64-wrk legacy "$TESSERA --http 127.0.0.1:@PORT@"
  if command -v nginx >/dev/null; then
    run_wrk_case nginx-static-64-wrk modern "bench/nginx_static.sh @PORT@ $SC"
  else
    echo "(nginx not installed: no nginx case; apt-get install nginx-light)" >&2
  fi
  if [ "$RMCP" = 1 ]; then
    run_wrk_case rmcp-http-modern-64-wrk modern "taskset -c $SC $RMCP_BIN 127.0.0.1:@PORT@"
  fi
else
  echo "(wrk not installed: no wrk cases; apt-get install wrk)" >&2
fi
if [ "$FANOUT" = 1 ]; then
  # 10,000 subscribers to every one of 20 resources, 100 updates/s:
  # 1,000,000 notifications/s offered
  tessera_case tessera-fanout-10k "--tcp 127.0.0.1:@PORT@" "fanout --addr @ADDR@ --subscribers 10000 --keys 20 --updates-per-sec 100 --duration $DURATION --warmup 1s"
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
    rates = [r.get("throughput_msg_per_s", r.get("notifications_per_s", 0)) for r in runs]
    busy = [max((t["busy"] for t in r.get("loadgen_cpu", {}).get("threads", [])), default=None) for r in runs]
    busy = [b for b in busy if b is not None]
    res[c] = {
        "rate": statistics.median(rates),
        "p50": statistics.median(r["latency_us"]["p50"] for r in runs),
        "p99": statistics.median(r["latency_us"]["p99"] for r in runs),
        "busy": statistics.median(busy) if busy else None,
        "runs": [round(x) for x in rates],
    }
print(f"{'case':30} {'msg/s (median)':>15} {'p50 us':>9} {'p99 us':>9} {'loadgen':>8}   runs")
for c, r in res.items():
    busy = f"{r['busy'] * 100:7.0f}%" if r["busy"] is not None else f"{'wrk':>8}" if c.endswith("-wrk") else f"{'':8}"
    print(f"{c:30} {r['rate']:15,.0f} {r['p50']:9.1f} {r['p99']:9.1f} {busy}   {r['runs']}")
print("(loadgen: the loadgen thread's median busy fraction; above 90% it may be the bound)")
print()

def ratio(a, b, key="rate"):
    if a in res and b in res and res[b][key] > 0:
        return res[a][key] / res[b][key]
    return None

# (what, value, comparison, target): the issue-18 targets, each PASS/FAIL.
checks = []
def check(what, value, op, target):
    checks.append((what, value, op, target))

check("loadgen / wrk: HTTP modern 64, same server", ratio("tessera-http-modern-64", "tessera-http-modern-64-wrk"), ">=", 0.95)
check("loadgen / wrk: HTTP legacy 64, same server", ratio("tessera-http-legacy-64", "tessera-http-legacy-64-wrk"), ">=", 0.95)
lg, wk = ratio("bare-http-64", "tessera-http-modern-64"), ratio("bare-http-64-wrk", "tessera-http-modern-64-wrk")
check("bare/tessera HTTP ratio, loadgen vs wrk (|x-1|)", abs(lg / wk - 1) if lg and wk else None, "<=", 0.05)
if "tessera-fanout-10k" in res:
    check("fan-out 10K subscribers: notifications/s", res["tessera-fanout-10k"]["rate"], ">=", 1e6)
    check("fan-out 10K subscribers: delivery p99 (us)", res["tessera-fanout-10k"]["p99"], "<=", 5000)
check("tessera TCP 16x64 / bare NDJSON", ratio("tessera-tcp-16x64", "bare-ndjson-16x64"), ">=", 0.80)
check("tessera TCP 1x1 p50 / bare", ratio("tessera-tcp-1x1", "bare-ndjson-1x1", "p50"), "<=", 1.05)
check("tessera TCP 1x1 p99 / bare", ratio("tessera-tcp-1x1", "bare-ndjson-1x1", "p99"), "<=", 1.2)
check("tessera HTTP modern 64 / nginx static (wrk)", ratio("tessera-http-modern-64-wrk", "nginx-static-64-wrk"), ">=", 0.75)
check("tessera HTTP legacy / modern (loadgen)", ratio("tessera-http-legacy-64", "tessera-http-modern-64"), ">=", 0.90)
check("tessera HTTP legacy / modern (wrk)", ratio("tessera-http-legacy-64-wrk", "tessera-http-modern-64-wrk"), ">=", 0.90)
print(f"{'target':52} {'value':>9} {'target':>9}  verdict")
for what, value, op, target in checks:
    if value is None:
        print(f"{what:52} {'n/a':>9} {op}{target:>7g}  SKIP (case not run)")
        continue
    ok = value >= target if op == ">=" else value <= target
    shown = f"{value:9,.0f}" if target >= 100 else f"{value:9.2f}"
    print(f"{what:52} {shown} {op}{target:>7g}  {'PASS' if ok else 'FAIL'}")
print()
for c in [c for c in res if c.endswith("@B")]:
    print(f"{'A/B: ' + c[:-2] + ' this build / B':52} {ratio(c[:-2], c):9.2f}")
for a, b, what in [
    ("tessera-tcp-16x64-spin", "bare-ndjson-16x64-spin", "tessera TCP 16x64 / bare, spinning loadgen"),
    ("tessera-http-modern-64", "bare-http-64", "tessera HTTP modern 64 / bare HTTP (loadgen)"),
    ("tessera-http-modern-64-wrk", "bare-http-64-wrk", "tessera HTTP modern 64 / bare HTTP (wrk)"),
    ("tessera-http-modern-64", "rmcp-http-modern-64", "tessera HTTP modern 64 / rmcp HTTP modern 64"),
    ("tessera-http-legacy-64", "rmcp-http-legacy-64", "tessera HTTP legacy 64 / rmcp HTTP legacy 64"),
    ("tessera-http-modern-64-wrk", "rmcp-http-modern-64-wrk", "wrk: tessera HTTP modern 64 / rmcp"),
]:
    r = ratio(a, b)
    if r is not None:
        print(f"{what:52} {r:9.2f}")
PY

if [ "$IDLE" = 1 ]; then
  echo
  echo "idle connections (bench/idle_conns.py):"
  python3 bench/idle_conns.py --server "$T/tessera" --core "$SC"
  echo
  echo "sessions and listen streams (bench/session_mem.py):"
  python3 bench/session_mem.py --server "$T/tessera" --core "$SC" | tee "$OUT/mem.txt"
  tail -1 "$OUT/mem.txt" | python3 -c '
import json, sys
m = json.load(sys.stdin)
for what, v in [("memory per legacy session (bytes)", m["bytes_per_session"]),
                ("memory per modern listen stream (bytes)", m["bytes_per_listen_stream"])]:
    verdict = "PASS" if v <= 4096 else "FAIL"
    print(f"{what:52} {v:9,.0f} <=   4096  {verdict}")
'
fi
