-- fredkit-lock: take one permit of a counting semaphore with expiring permits.
--
-- KEYS[1]  the permits   <prefix>:{name}:permits  (sorted set: token -> expiry, server ms)
-- KEYS[2]  the waiter flag <prefix>:{name}:wait
-- ARGV[1]  the permit's random token
-- ARGV[2]  the permit's TTL in ms (> 0)
-- ARGV[3]  the number of permits (> 0)
-- ARGV[4]  0 for a single try; otherwise how long, in ms, this caller keeps
--          waiting (raises the waiter flag, as acquire.lua does)
--
-- Validate, then write: the permits key is checked first; after that no
-- call can fail, so a try that fails leaves nothing behind.
-- Expired permits (crashed holders) are trimmed first, with the server's clock.
-- A replayed try (same token) is the same grant: ZADD only moves its expiry.
-- Returns:
--   an integer >= 1   granted; the value is the number of permits now held
--   an integer <= -1  all permits taken; -1 - value is the ms until the
--                     earliest one expires (at most a day)
--   {'corrupt', key, problem, fix}  the permits key is not a sorted set;
--                     nothing was written
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return {'corrupt', KEYS[1], 'is a ' .. kind .. ', not a sorted set of permits',
    'Delete it: it is not a semaphore fredkit-lock wrote, and no permit can be taken while it is there.'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local ttl = tonumber(ARGV[2])
if held < tonumber(ARGV[3]) then
  local added = redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return held + added
end
-- All taken: a replay (fred resends a command whose connection closed in
-- flight) of a try that already took a permit is that same grant.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return held
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local left = 0
if first[2] then left = math.max(0, tonumber(first[2]) - now) end
-- A score written by someone else may be huge (or inf): a day at most.
if not (left <= 86400000) then left = 86400000 end
local wait = tonumber(ARGV[4])
if wait > 0 and redis.call('PTTL', KEYS[2]) < wait then
  redis.call('SET', KEYS[2], '1', 'PX', wait)
end
return -1 - left
