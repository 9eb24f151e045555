-- fredkit-lock: give a semaphore permit back; wake waiters.
--
-- KEYS[1]  the permits     <prefix>:{name}:permits
-- KEYS[2]  the waiter flag <prefix>:{name}:wait
-- ARGV[1]  the permit's token
-- ARGV[2]  the manager's wake-up channel
--
-- Returns 0 when the permit was not held (expired), 1 when released, 2 when
-- released and a wake-up was published (the message is KEYS[2]). A key of
-- another type holds no permit: 0 (sem_acquire.lua reports it as corrupt).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.pcall('ZSCORE', KEYS[1], ARGV[1])
if type(expiry) ~= 'string' then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(expiry) <= now then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], KEYS[2])
  return 2
end
return 1
