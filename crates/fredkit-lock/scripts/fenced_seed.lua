-- fredkit-lock: seed a fenced value or counter that was never written.
--
-- KEYS[1]  the value  <prefix>:{name}:value (FencedStore) or :count (FencedCounter)
-- KEYS[2]  the newest token seen <prefix>:{name}:seen
-- ARGV[1]  the initial value (bytes; decimal digits for a counter)
-- ARGV[2]  TTL of the value in ms, or 0 for none
--
-- Writes only when neither key exists: a value a fenced write has made (or
-- that a seed made before) is never replaced, and no token marker is
-- written, so the next fenced write is accepted whatever its token.
--
-- Returns 1 when seeded, 0 when the value (or its marker) already existed.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
