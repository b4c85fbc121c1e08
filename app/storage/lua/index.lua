-- Add a member to an index and keep the index alive as long as its longest-lived member
-- (keep.lua). KEYS: the index. ARGV: the member, its score (an expiry, or 'inf').
index_add(KEYS[1], ARGV[2], ARGV[1])
