-- Login throttling: records one failed attempt, atomically.
--
-- KEYS[1]  failure counter of the identity (integer string, TTL = window)
-- KEYS[2]  lockout marker of the identity (TTL = lockout)
-- ARGV[1]  failures that trigger a lockout (integer >= 1)
-- ARGV[2]  failure window in milliseconds
-- ARGV[3]  lockout in milliseconds
--
-- Returns {locked (1 or 0), failures, ttl_ms}
--   locked: ttl_ms is the lockout left; failures is ARGV[1]. While locked,
--           failures are not counted and do not extend the lockout.
--   not locked: failures counted in the current window; ttl_ms is the
--           window left.
-- The failure that reaches ARGV[1] sets the marker and deletes the counter.
local lock = redis.call('PTTL', KEYS[2])
if lock == -1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  lock = tonumber(ARGV[3])
end
if lock >= 0 then
  return {1, tonumber(ARGV[1]), lock}
end
-- A counter INCR cannot count (not an integer, or at the i64 limit) is
-- garbage: it starts again at 1 with a fresh window.
local n = redis.pcall('INCR', KEYS[1])
if type(n) == 'table' and string.find(tostring(n.err), 'WRONGTYPE', 1, true) then
  return n
end
if type(n) ~= 'number' then
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[2])
  n = 1
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], n, 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return {1, n, tonumber(ARGV[3])}
end
return {0, n, ttl}
