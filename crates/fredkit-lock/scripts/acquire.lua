-- fredkit-lock: take a lock and draw its fencing token, atomically.
--
-- KEYS[1]  the lock key      <prefix>:{resource}:lock   (value: holder token, PX ttl)
-- KEYS[2]  the fence counter <prefix>:{resource}:fence  (INCR; no TTL, see the crate docs)
-- ARGV[1]  the holder's random token (hex digits)
-- ARGV[2]  the TTL in milliseconds (> 0)
-- ARGV[3]  '0' a single try; '1' a waiting caller's first try; '2' a waiting
--          caller's retry.
--
-- Waiters are recorded on the lock itself: a waiting caller that finds the
-- lock held appends '+' to the holder's value (the TTL is kept), and the
-- holder's release then publishes a wake-up. A retry that wins takes the
-- lock already marked, since other waiters may still be asleep. An
-- uncontended lock is never marked, so its release publishes nothing.
--
-- Replays: fred sends a command again when its connection closed while it
-- was in flight, so this script may run twice for one try. A lock already
-- held with the caller's own token is that same grant: its fencing token is
-- the counter's current value (no grant can have happened since: that would
-- have needed the caller's key gone, and a token is never reused).
--
-- Returns an integer:
--   >= 1  granted; the value is the fencing token (strictly increasing per resource)
--   <= -1 held by someone else; -1 - value is the lock's remaining TTL in ms
local value = ARGV[1]
if ARGV[3] == '2' then value = value .. '+' end
if redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  return redis.call('INCRBY', KEYS[2], 0)
end
if ARGV[3] ~= '0' and held and string.sub(held, -1) ~= '+' then
  redis.call('APPEND', KEYS[1], '+')
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then pttl = 0 end
return -1 - pttl
