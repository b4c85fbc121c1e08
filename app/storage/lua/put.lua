-- A whole put on one server: SET the record (returning the one it replaced), then add
-- it to each index (as index.lua does) and, for the audit table, to the log. KEYS: the
-- record, the index keys, then the log key if ARGV[5] is set. ARGV: the JSON, PXAT ms
-- or '', the member, its index score, the log score or ''. (One server only.)
local old
if ARGV[2] ~= '' then old = redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'GET')
else old = redis.call('SET', KEYS[1], ARGV[1], 'GET') end
local last = #KEYS
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[last], ARGV[5], ARGV[3])
  last = last - 1
end
for i = 2, last do
  index_add(KEYS[i], ARGV[4], ARGV[3])
end
return old
