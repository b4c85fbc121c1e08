-- Add a member to an index and keep the index alive as long as its longest-lived member
-- (keep.lua). KEYS: the index. ARGV: the member, its score (an expiry, or 'inf').
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
keep(KEYS[1], ARGV[2])
