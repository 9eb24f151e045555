-- fredkit-lock: release a lock if the caller still holds it; wake waiters.
--
-- KEYS[1]  the lock key    <prefix>:{resource}:lock
-- KEYS[2]  the waiter flag <prefix>:{resource}:wait
-- ARGV[1]  the holder's token
-- ARGV[2]  the manager's wake-up channel
--
-- Returns an integer:
--   0  the lock was not held with this token (expired, or someone else's now): nothing changed
--   1  released; nobody was waiting (no PUBLISH)
--   2  released and a wake-up was published (the message is KEYS[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], KEYS[2])
  return 2
end
return 1
