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
--   >= 1  granted; the value is the fencing token (strictly increasing per
--         resource; the first one is the server's time in microseconds)
--   <= -1 held by someone else; -1 - value is the lock's remaining TTL in ms
local value = ARGV[1]
if ARGV[3] == '2' then value = value .. '+' end
if redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then
    -- The counter did not exist: the first grant ever, or the counter was
    -- lost (a restart without persistence, an eviction, a deleted key).
    -- Start from the server's clock in microseconds: more than every token
    -- handed out before the loss (each was at most its counter's start plus
    -- one per grant, and a grant takes far more than a microsecond), as long
    -- as the server's clock did not go back. Below 2^53 until the year 2255.
    local t = redis.call('TIME')
    local seed = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
    redis.call('SET', KEYS[2], seed)
    return tonumber(seed)
  end
  return n
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
