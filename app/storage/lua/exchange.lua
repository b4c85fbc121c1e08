-- The exchange (see Backend.exchange) as one script on one server: take a record,
-- then put records and delete others, index upkeep included. The plan is ARGV, flat (no
-- JSON to decode: a plan's records travel as they are):
--   now (seconds), probe rkey|'', take rkey, take base, take member,
--   the number of discards, then each: rkey, base, member,
--   the number of puts, then each: rkey, json, pxat|'', member, score, base, log|'',
--   log score|'', the number of index keys, then those keys.
-- It answers false (nothing taken) or {the taken record, 1 if the probe's key exists at
-- the end} (0 without a probe). A put with a log key is an append (the audit entry) and
-- adds its member to that log too, as put.lua. Redis does not roll a failed script back,
-- so every argument is checked before the first write, and what ends goes before what
-- is written.
-- A count: a whole number, not below zero (else nil).
local function count_of(value)
  local n = tonumber(value)
  if n and n >= 0 and n % 1 == 0 then return n end
end
-- A score as ZADD takes it: a number (not NaN), or 'inf'.
local function score_of(value)
  if value == 'inf' then return true end
  local n = tonumber(value)
  return n ~= nil and n == n
end
local now = tonumber(ARGV[1])
local probe = ARGV[2]
local discards = count_of(ARGV[6])
if not now or now ~= now or not discards then return redis.error_reply('bad plan') end
-- Where each put starts in ARGV (its fields are read from there: no table a put).
local at = 7 + 3 * discards
local puts = {}
local put_count = count_of(ARGV[at])
if not put_count then return redis.error_reply('bad plan') end
for i = 1, put_count do
  local count = count_of(ARGV[at + 9])
  if not count then return redis.error_reply('bad plan') end
  puts[i] = at + 1
  at = at + 9 + count
end
if at ~= #ARGV then return redis.error_reply('bad plan') end
for _, s in ipairs(puts) do
  if ARGV[s + 2] ~= '' and not ARGV[s + 2]:match('^%d+$') then
    return redis.error_reply('bad expiry')
  end
  if not score_of(ARGV[s + 4]) then return redis.error_reply('bad score') end
  if ARGV[s + 6] ~= '' and not score_of(ARGV[s + 7]) then
    return redis.error_reply('bad log score')
  end
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
local raw = redis.call('GETDEL', ARGV[3])
if not raw then return false end
local taken = unindex(raw, ARGV[4], ARGV[5])
if taken.expires_at ~= nil and taken.expires_at ~= cjson.null
  and taken.expires_at <= now then return false end
-- The discards (the old access token, old tombstones) before the puts: should a write
-- fail part-way (a key of the wrong type), what was to end has ended.
for d = 7, 6 + 3 * discards, 3 do
  local old = redis.call('GETDEL', ARGV[d])
  if old then unindex(old, ARGV[d + 1], ARGV[d + 2]) end
end
for _, s in ipairs(puts) do
  local old
  if ARGV[s + 2] ~= '' then old = redis.call('SET', ARGV[s], ARGV[s + 1], 'PXAT', ARGV[s + 2], 'GET')
  else old = redis.call('SET', ARGV[s], ARGV[s + 1], 'GET') end
  local member, score = ARGV[s + 3], ARGV[s + 4]
  if old then unindex(old, ARGV[s + 5], member) end
  for i = s + 9, s + 8 + tonumber(ARGV[s + 8]) do
    index_add(ARGV[i], score, member)
  end
  if ARGV[s + 6] ~= '' then redis.call('ZADD', ARGV[s + 6], ARGV[s + 7], member) end
end
local found = 0
if probe ~= '' then found = redis.call('EXISTS', probe) end
return {raw, found}
