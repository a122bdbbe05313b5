#!/usr/bin/env python3
"""Opens one MCP 2025-11-25 session on a Streamable HTTP endpoint
(initialize, then notifications/initialized) and prints its Mcp-Session-Id,
for load tools that cannot do the handshake themselves (wrk).

Usage: bench/legacy_session.py http://127.0.0.1:PORT/mcp
"""
import http.client
import json
import sys
import urllib.parse

HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}


def post(conn, path, body, headers):
    conn.request("POST", path, json.dumps(body), headers)
    r = conn.getresponse()
    r.read()
    if r.status not in (200, 202):
        sys.exit(f"{body['method']}: HTTP {r.status}")
    return r


def main():
    url = urllib.parse.urlsplit(sys.argv[1])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    r = post(conn, url.path, {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "0"}},
    }, HEADERS)
    session = r.getheader("Mcp-Session-Id")
    if not session:
        sys.exit("initialize answered without an Mcp-Session-Id")
    headers = dict(HEADERS, **{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    post(conn, url.path, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    print(session)


if __name__ == "__main__":
    main()
