-- fredkit-lock: the storage-side fencing check. Writes a value only if the
-- writer's fencing token is not older than the newest token this value has seen.
--
-- KEYS[1]  the protected value       <prefix>:{name}:value
-- KEYS[2]  the newest token seen     <prefix>:{name}:seen  (not ':fence', the
--          lock's counter: a store may share a lock manager's prefix)
-- ARGV[1]  the writer's fencing token (a decimal integer < 2^53)
-- ARGV[2]  the value
-- ARGV[3]  TTL of both keys in ms, or 0 for none
--
-- Returns an integer:
--   0   written; the token is now the newest seen
--   > 0 rejected: a newer token was already seen; the value is that token
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[1])
if token < seen then
  return seen
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[1], ARGV[2])
end
return 0
