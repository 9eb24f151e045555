-- fredkit-lock: release a lock if the caller still holds it; wake waiters.
--
-- KEYS[1]  the lock key <prefix>:{resource}:lock
-- ARGV[1]  the holder's token
--
-- The value is the token, or the token followed by '+' when waiters were
-- recorded (see acquire.lua); only then is a wake-up published, on the
-- manager's channel '<prefix>:wake' (derived from the key: the prefix is
-- everything before ':{', which a prefix cannot contain), with KEYS[1] as
-- the message.
--
-- A key of another type is not held with this token either (acquire.lua
-- reports it as corrupt).
--
-- Returns an integer:
--   0  the lock was not held with this token (expired, or someone else's now): nothing changed
--   1  released; nobody was waiting (no PUBLISH)
--   2  released and a wake-up was published
local held = redis.pcall('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if held == ARGV[1] .. '+' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':wake', KEYS[1])
  return 2
end
return 0
