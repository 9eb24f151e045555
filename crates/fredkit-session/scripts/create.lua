-- fredkit-session: create a session (never over an existing one) and index it.
--
-- KEYS[1]  the new session (see save.lua)
-- KEYS[2]  the user's index  <prefix>:{tag}:idx:<user>  (a sorted set:
--          session handle -> created ms); only read when ARGV[4] ~= ''
-- ARGV[1]  idle TTL in ms (> 0)
-- ARGV[2]  absolute lifetime in ms (> 0): the index's TTL
-- ARGV[3]  the most sessions the index keeps (> 0): older ones are trimmed
-- ARGV[4]  the user ('' for an anonymous session)
-- ARGV[5]  the device label ('' for none)
-- ARGV[6]  the session's handle (its member in the index)
-- ARGV[7]  n, the number of fields; then n (field, value) pairs
--
-- Returns: {1, created ms}  created
--          {0}              a session with this id exists (nothing written)
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowstr = string.format('%d', now)
redis.call('HSET', key, '~c', nowstr)
if ARGV[4] ~= '' then redis.call('HSET', key, '~u', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', key, '~d', ARGV[5]) end
local n = tonumber(ARGV[7])
for j = 0, n - 1 do
  redis.call('HSET', key, ARGV[8 + 2 * j], ARGV[9 + 2 * j])
end
redis.call('PEXPIRE', key, ARGV[1])
if ARGV[4] ~= '' then
  local idx = KEYS[2]
  redis.call('ZADD', idx, now, ARGV[6])
  redis.call('ZREMRANGEBYRANK', idx, 0, -(tonumber(ARGV[3]) + 1))
  redis.call('PEXPIRE', idx, ARGV[2])
end
return {1, nowstr}
