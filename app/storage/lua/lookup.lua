-- A record and the record another table holds under one of its fields, in one step
-- (one server only: the second key is not declared, which Redis Cluster would refuse).
-- ARGV: the record's Redis key, the field, the other table's key base. Answers
-- {record|false, other record|false, 1 if the other was looked up}: only a string
-- field is (a number's text could differ from the caller's; it looks that one up itself).
local raw = redis.call('GET', ARGV[1])
if not raw then return {false, false, 0} end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' then return {raw, false, 0} end
local value = record[ARGV[2]]
if type(value) ~= 'string' then return {raw, false, 0} end
return {raw, redis.call('GET', ARGV[3] .. ':{' .. value .. '}'), 1}
