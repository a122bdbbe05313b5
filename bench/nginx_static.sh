#!/usr/bin/env bash
# The real-world HTTP limit for bench/compare.sh: one nginx process pinned to
# CORE answering every request to /mcp with 200 and the same JSON body
# tessera's echo tool returns (so wrk's response check passes and the bytes on
# the wire match). Keep-alive without a request limit, no access log. With
# CERT and KEY it serves HTTPS (TLS 1.3 and 1.2) with that pair.
# Usage: bench/nginx_static.sh PORT CORE [CERT KEY]   (runs in the foreground)
set -euo pipefail
PORT=$1 CORE=$2 CERT=${3:-} KEY=${4:-}
LISTEN="listen 127.0.0.1:$PORT;"
if [ -n "$CERT" ]; then
  LISTEN="listen 127.0.0.1:$PORT ssl; ssl_certificate $CERT; ssl_certificate_key $KEY; ssl_protocols TLSv1.2 TLSv1.3;"
fi
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
BODY='{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"tessera","title":"tessera MCP server","version":"0.1.0"}}}}'
cat >"$DIR/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $DIR/nginx.pid;
error_log $DIR/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  server {
    $LISTEN
    location /mcp {
      default_type application/json;
      return 200 '$BODY';
    }
  }
}
CONF
# Not exec: the trap removes the directory when nginx exits.
taskset -c "$CORE" nginx -p "$DIR" -c "$DIR/nginx.conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null; rm -rf "$DIR"' EXIT TERM INT
wait $NGINX
