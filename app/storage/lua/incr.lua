-- A counter record: raise its count in place, keeping its expiry, or create it.
-- KEYS: the record. ARGV: the amount, the new record's JSON, its PXAT ms or ''.
-- One key, so a Redis Cluster runs it too.
local raw = redis.call('GET', KEYS[1])
if raw then
  local record = cjson.decode(raw)
  record.count = (tonumber(record.count) or 0) + tonumber(ARGV[1])
  redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
  return record.count
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
else redis.call('SET', KEYS[1], ARGV[2]) end
return tonumber(ARGV[1])
