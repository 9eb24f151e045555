-- Login throttling: reads an identity's state without changing it.
--
-- KEYS[1]  failure counter of the identity
-- KEYS[2]  lockout marker of the identity
--
-- Returns {locked (1 or 0), failures, ttl_ms}
--   locked: ttl_ms is the lockout left (-1: the marker has no TTL; the next
--           recorded failure gives it one).
--   not locked: failures counted in the current window, ttl_ms the window
--           left (0 when there are none).
local lock = redis.call('PTTL', KEYS[2])
if lock ~= -2 then
  return {1, tonumber(redis.call('GET', KEYS[2])) or 0, lock}
end
local n = tonumber(redis.call('GET', KEYS[1])) or 0
local ttl = 0
if n > 0 then ttl = redis.call('PTTL', KEYS[1]) end
return {0, n, ttl}
