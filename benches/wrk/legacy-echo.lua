-- wrk script: MCP 2025-11-25 tools/call echo inside one initialized session
-- over Streamable HTTP. The session is made before the run (bench/compare.sh
-- does it with bench/legacy_session.py) and passed as the script argument.
-- Usage: wrk -t1 -c64 -d10s -s benches/wrk/legacy-echo.lua http://127.0.0.1:8080/mcp -- SESSION-ID
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "check.lua")

function init(args)
  if args[1] == nil then
    error("usage: ... -s legacy-echo.lua URL -- SESSION-ID")
  end
  wrk.headers["Mcp-Session-Id"] = args[1]
end
