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
  out = out .. M.error_report()
  io.write("BENCH_JSON " .. out .. "}\n")
end

-- Per thread: how many answers of each non-2xx status, and the first such body.
statuses = {}
first_error = ""

function M.response(status, headers, body)
  if status >= 300 then
    statuses[status] = (statuses[status] or 0) + 1
    if first_error == "" and body then first_error = tostring(status) .. " " .. body:sub(1, 160) end
  end
end

local threads = {}
local next_id = 0

function M.setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function M.error_report()
  local counts, sample = {}, ""
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + n
    end
    local first = thread:get("first_error")
    if sample == "" and first and first ~= "" then sample = first end
  end
  local parts = {}
  for status, n in pairs(counts) do parts[#parts + 1] = string.format('"%d":%d', status, n) end
  return ',"statuses":{' .. table.concat(parts, ",") .. '},"first_error":' .. json_string(sample)
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
