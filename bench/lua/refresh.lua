-- POST /token with grant_type=refresh_token, each pre-issued token used exactly once.
-- BENCH_TOKENS names a file of tokens, one a line; wrk thread i of n takes lines
-- i, i+n, i+2n, ... so no two threads share a token. A thread that runs out sends
-- "exhausted" (a 400, counted as an error) and counts it in "exhausted".
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

report.headers("BENCH_HEADERS")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

local threads = {}

function setup(thread)
  report.setup(thread)
  threads[#threads + 1] = thread
end

response = report.response

local tokens = {}
local pos = 0
exhausted = 0

function init(args)
  local tid = tonumber(wrk.thread:get("tid"))
  local n = tonumber(os.getenv("BENCH_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if i % n == tid and #line > 0 then tokens[#tokens + 1] = line end
    i = i + 1
  end
end

function request()
  pos = pos + 1
  local token = tokens[pos]
  if token == nil then
    exhausted = exhausted + 1
    token = "exhausted"
  end
  return wrk.format("POST", "/token", nil, "grant_type=refresh_token&refresh_token=" .. token)
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (tonumber(thread:get("exhausted")) or 0) end
  report.done(summary, latency, requests, { exhausted = total })
end
