-- An index's live members and their records, in one step (one server only: the
-- index and the records are not declared, which Redis Cluster would refuse).
-- KEYS: the index. ARGV: now (seconds, as the scores), the table's key base, the most
-- records to read here. Members that expired are dropped from the index first.
-- Answers {members, records}, a record false where none is stored under its member
-- any more; records false when there are more members than that (the caller reads
-- them with MGET: a script must not hold the server for a huge index).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #members > tonumber(ARGV[3]) then return {members, false} end
local records = {}
local CHUNK = 1000  -- MGET's arguments go through unpack, whose stack is bounded
for first = 1, #members, CHUNK do
  local rkeys = {}
  for i = first, math.min(first + CHUNK - 1, #members) do
    rkeys[#rkeys + 1] = ARGV[2] .. ':{' .. members[i] .. '}'
  end
  for _, raw in ipairs(redis.call('MGET', unpack(rkeys))) do
    records[#records + 1] = raw
  end
end
return {members, records}
