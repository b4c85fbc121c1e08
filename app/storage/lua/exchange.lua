-- The exchange (see Backend.exchange) as one script on one server: take a record,
-- then put records and delete others, index upkeep included. ARGV[1] is the plan:
-- {"take": [rkey, base, key], "puts": [[rkey, json, pxat|'', member, score, [ikeys], base,
-- log|'', log score|'']], "discards": [[rkey, base, key]], "probe": rkey|''}; it answers
-- false (nothing taken) or {the taken record, 1 if the probe's key exists at the end}
-- (0 without a probe). A put with a log key is an
-- append (the audit entry) and adds its member to that log too, as put.lua. ARGV[2] is
-- now (seconds). Redis does not roll a failed script back, so every argument is checked
-- before the first write, and what ends goes before what is written.
local plan = cjson.decode(ARGV[1])
for _, put in ipairs(plan.puts) do
  if put[3] ~= '' and not tonumber(put[3]) then return redis.error_reply('bad expiry') end
  if put[5] ~= 'inf' and not tonumber(put[5]) then return redis.error_reply('bad score') end
  if put[8] ~= '' and not tonumber(put[9]) then return redis.error_reply('bad log score') end
end
local function unindex(raw, base, member)
  local record = cjson.decode(raw)
  for _, field in ipairs({'user_id', 'client_id', 'grant_id'}) do
    local value = record[field]
    if value ~= nil and value ~= cjson.null then
      redis.call('ZREM', base .. ':' .. field .. ':{' .. tostring(value) .. '}', member)
    end
  end
  return record
end
local raw = redis.call('GETDEL', plan.take[1])
if not raw then return false end
local taken = unindex(raw, plan.take[2], plan.take[3])
if taken.expires_at ~= nil and taken.expires_at ~= cjson.null
  and taken.expires_at <= tonumber(ARGV[2]) then return false end
-- The discards (the old access token, old tombstones) before the puts: should a write
-- fail part-way (a key of the wrong type), what was to end has ended.
for _, gone in ipairs(plan.discards) do
  local old = redis.call('GETDEL', gone[1])
  if old then unindex(old, gone[2], gone[3]) end
end
for _, put in ipairs(plan.puts) do
  local old
  if put[3] ~= '' then old = redis.call('SET', put[1], put[2], 'PXAT', put[3], 'GET')
  else old = redis.call('SET', put[1], put[2], 'GET') end
  if old then unindex(old, put[7], put[4]) end
  for _, ikey in ipairs(put[6]) do
    redis.call('ZADD', ikey, put[5], put[4])
    keep(ikey, put[5])
  end
  if put[8] ~= '' then redis.call('ZADD', put[8], put[9], put[4]) end
end
local found = 0
if plan.probe ~= nil and plan.probe ~= '' then found = redis.call('EXISTS', plan.probe) end
return {raw, found}
