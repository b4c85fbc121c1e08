-- A request with a fresh DPoP proof each time (RFC 9449: the server refuses a replayed
-- jti). BENCH_PROOFS names a file of proofs made in advance (bench/dpop.py), one a line;
-- wrk thread i of n takes lines i, i+n, i+2n, ... so each proof is sent exactly once.
-- BENCH_METHOD and BENCH_HEADERS (the "Authorization: DPoP <token>") as in request.lua.
-- A thread that runs out sends "exhausted" as its proof (a 401, counted as an error)
-- and counts it in "exhausted".
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

local method = os.getenv("BENCH_METHOD") or "GET"
report.headers("BENCH_HEADERS")

local threads = {}

function setup(thread)
  report.setup(thread)
  threads[#threads + 1] = thread
end

response = report.response

local proofs = {}
local pos = 0
exhausted = 0

function init(args)
  local tid = tonumber(wrk.thread:get("tid"))
  local n = tonumber(os.getenv("BENCH_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("BENCH_PROOFS")) do
    if i % n == tid and #line > 0 then proofs[#proofs + 1] = line end
    i = i + 1
  end
end

function request()
  pos = pos + 1
  local proof = proofs[pos]
  if proof == nil then
    exhausted = exhausted + 1
    proof = "exhausted"
  end
  wrk.headers["DPoP"] = proof
  return wrk.format(method, nil, nil, nil)
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (tonumber(thread:get("exhausted")) or 0) end
  report.done(summary, latency, requests, { exhausted = total })
end
