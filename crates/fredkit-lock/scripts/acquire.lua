-- fredkit-lock: take a lock and draw its fencing token, atomically.
--
-- KEYS[1]  the lock key      <prefix>:{resource}:lock   (value: holder token, PX ttl)
-- KEYS[2]  the fence counter <prefix>:{resource}:fence  (INCR; no TTL, see the crate docs)
-- KEYS[3]  the waiter flag   <prefix>:{resource}:wait   (PX: longest remaining wait)
-- ARGV[1]  the holder's random token
-- ARGV[2]  the TTL in milliseconds (> 0)
-- ARGV[3]  0 for a single try; otherwise how long, in ms, this caller keeps
--          waiting: a failed try then raises the waiter flag for that long so
--          that the holder's release publishes a wake-up.
--
-- Returns an integer:
--   >= 1  granted; the value is the fencing token (strictly increasing per resource)
--   <= -1 held by someone else; -1 - value is the lock's remaining TTL in ms
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then pttl = 0 end
local wait = tonumber(ARGV[3])
if wait > 0 and redis.call('PTTL', KEYS[3]) < wait then
  redis.call('SET', KEYS[3], '1', 'PX', wait)
end
return -1 - pttl
