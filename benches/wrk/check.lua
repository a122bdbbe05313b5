-- Shared by the wrk scripts in this folder: every response must be a 200
-- whose body holds the echo tool's text; wrong ones are counted and done()
-- prints the total. wrk runs done() in another Lua state, so the per-thread
-- counts are collected through setup().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

bad = 0

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"text":"hello"', 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("bad")
  end
  io.write(string.format("wrong responses: %d\n", total))
end
