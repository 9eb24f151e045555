-- fredkit-lock: reset a lock's TTL if the caller still holds it.
--
-- KEYS[1]  the lock key <prefix>:{resource}:lock
-- ARGV[1]  the holder's token
-- ARGV[2]  the new TTL in milliseconds (> 0)
--
-- The value is the token, or the token followed by '+' (waiters recorded).
-- A key of another type is not held with this token either (acquire.lua
-- reports it as corrupt). Checks, then writes: nothing is written unless the
-- caller holds the lock.
-- Returns 1 when extended, 0 when the lock is not held with this token.
local held = redis.pcall('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
