-- Shared by the bench's wrk scripts: print one JSON line the bench parses.
local M = {}

local points = {}
for p = 1, 90 do points[#points + 1] = p end
for p = 90.5, 99, 0.5 do points[#points + 1] = p end
for p = 99.1, 99.91, 0.1 do points[#points + 1] = p end
points[#points + 1] = 99.95
points[#points + 1] = 99.99

function M.done(summary, latency, requests, extra)
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max)
  if os.getenv("BENCH_QUANTILES") then
    local q = {}
    for i, p in ipairs(points) do
      q[i] = string.format("[%s,%d]", p, latency:percentile(p))
    end
    out = out .. ',"quantiles":[' .. table.concat(q, ",") .. "]"
  end
  for k, v in pairs(extra or {}) do
    out = out .. string.format(',"%s":%d', k, v)
  end
  io.write("BENCH_JSON " .. out .. "}\n")
end

-- "Name: value" lines from an environment variable, into wrk.headers.
function M.headers(var)
  local raw = os.getenv(var)
  if raw then
    for line in raw:gmatch("[^\n]+") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
    end
  end
end

return M
