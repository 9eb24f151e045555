-- unlink_garbage: delete an undecodable cache entry, but only if it is still
-- the garbage the caller read (a valid value written since must survive).
--
-- KEYS[1]  the entry's data key
-- ARGV[1]  the exact bytes the caller read (ignored when the key does not
--          hold a string: a foreign type under a cache key is always garbage)
--
-- Returns 1 when the key was deleted, 0 when it changed or is gone.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  return 0
end
if t ~= 'string' then
  return redis.call('UNLINK', KEYS[1])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('UNLINK', KEYS[1])
end
return 0
