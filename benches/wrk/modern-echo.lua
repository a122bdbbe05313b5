-- wrk script: MCP 2026-07-28 stateless tools/call echo over Streamable HTTP.
-- Usage: wrk -t1 -c64 -d10s -s benches/wrk/modern-echo.lua http://127.0.0.1:8080/mcp
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "check.lua")
