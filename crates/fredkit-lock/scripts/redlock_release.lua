-- fredkit-lock Redlock: delete a lock on one node if it holds the caller's token.
--
-- KEYS[1]  the lock key <prefix>:{resource}:lock
-- ARGV[1]  the holder's token
--
-- Returns 1 when deleted, 0 otherwise (also for a key of another type).
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
