-- Prepended to the scripts that add index members (index, put, exchange):
-- index_add(ikey, score, member) adds the member and keeps the index alive at least as
-- long as its longest-lived member. An index a member outlives gets that member's expiry
-- plus a minute of slack, so the next members of a busy index (each expiring a moment
-- after the last) find it long enough and cost one PTTL, not a ZRANGE and a PEXPIREAT
-- each. The PTTL comes before the ZADD: an index that was not there (-2) holds only this
-- member, so its expiry is this member's, without a ZRANGE to find the longest-lived
-- one. The comparison is on the server's clock (TIME, once a script) with a second to
-- spare, so the millisecond between PTTL and TIME never lets an index end before a
-- member; scores are expiries in seconds, or 'inf'.
local SLACK_MS = 60000
local MARGIN_MS = 1000
local server_now_ms
local function index_add(ikey, score, member)
  if score == 'inf' then
    redis.call('ZADD', ikey, score, member)
    redis.call('PERSIST', ikey)
    return
  end
  local at = math.ceil(tonumber(score) * 1000)
  local ttl = redis.call('PTTL', ikey)
  redis.call('ZADD', ikey, score, member)
  if ttl == -1 then
    -- No expiry: one holding (or that held) a member that never expires.
    local top = redis.call('ZRANGE', ikey, -1, -1, 'WITHSCORES')[2]
    if top == 'inf' then return end
    at = math.max(at, math.ceil(tonumber(top) * 1000))
  elseif ttl >= 0 then
    if not server_now_ms then
      local now = redis.call('TIME')
      server_now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    end
    if server_now_ms + ttl >= at + MARGIN_MS then return end
  end
  redis.call('PEXPIREAT', ikey, at + SLACK_MS)
end
