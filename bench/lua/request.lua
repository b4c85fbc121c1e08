-- One fixed request, sent again and again: BENCH_METHOD, BENCH_BODY, BENCH_HEADERS.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.body = os.getenv("BENCH_BODY")
report.headers("BENCH_HEADERS")

setup = report.setup
response = report.response

function done(summary, latency, requests)
  report.done(summary, latency, requests)
end
