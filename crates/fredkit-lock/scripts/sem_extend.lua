-- fredkit-lock: extend a semaphore permit if it is still held.
--
-- KEYS[1]  the permits <prefix>:{name}:permits
-- ARGV[1]  the permit's token
-- ARGV[2]  the new TTL in ms (> 0)
--
-- Checks, then writes: nothing is written unless the permit is held. A key of
-- another type holds no permit (sem_acquire.lua reports it as corrupt).
-- Returns 1 when extended, 0 when the permit had expired or is unknown.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.pcall('ZSCORE', KEYS[1], ARGV[1])
if type(expiry) ~= 'string' or tonumber(expiry) <= now then
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
