-- Take a record and drop its index entries in one atomic step (one server only: the
-- index keys are not declared, which Redis Cluster would refuse).
-- KEYS: the record. ARGV: the table's key base, the member.
local raw = redis.call('GETDEL', KEYS[1])
if not raw then return false end
local record = cjson.decode(raw)
for _, field in ipairs({'user_id', 'client_id', 'grant_id'}) do
  local value = record[field]
  if value ~= nil and value ~= cjson.null then
    redis.call('ZREM', ARGV[1] .. ':' .. field .. ':{' .. tostring(value) .. '}', ARGV[2])
  end
end
return raw
