-- Delete a record only if it still belongs to the grant; return it.
-- KEYS: the record. ARGV: the grant id. One key, so a Redis Cluster runs it too.
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local grant = cjson.decode(raw)['grant_id']
if type(grant) ~= 'string' and type(grant) ~= 'number' then return false end
if tostring(grant) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return raw
