-- Add a member to an index and keep the index alive as long as its longest-lived member.
-- KEYS: the index. ARGV: the member, its score (an expiry, or 'inf').
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if top == 'inf' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(top) * 1000)) end
