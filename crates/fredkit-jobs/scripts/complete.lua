-- complete: records a successful attempt, if the job is still active under
-- this attempt's token, and applies the job's retention of completed jobs.
--
-- KEYS[1] active, KEYS[2] completed (zsets), KEYS[3] the job's hash
-- ARGV[1] member, ARGV[2] token, ARGV[3] result (encoded), ARGV[4] job key prefix
--
-- returns 1 completed; 2 already completed under this token (this is a
-- resent run); 0 not completed: the lease was lost (the job stalled and
-- was recovered, or it is no longer active); -1 the job is gone.
-- Idempotent.
if redis.call('TYPE', KEYS[3]).ok ~= 'hash' then return -1 end
local f = redis.call('HMGET', KEYS[3], 'st', 'tok', 'rc', 'ra')
if f[2] ~= ARGV[2] then return 0 end
if f[1] == 'completed' then return 2 end
if f[1] ~= 'active' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function I(x) return string.format('%d', x) end
redis.call('ZREM', KEYS[1], ARGV[1])
local rc = tonumber(f[3]) or -1
local ra = tonumber(f[4]) or -1
if rc == 0 or ra == 0 then
  redis.call('DEL', KEYS[3])
  return 1
end
redis.call('HSET', KEYS[3], 'st', 'completed', 'ft', I(now), 'res', ARGV[3])
redis.call('ZADD', KEYS[2], I(now), ARGV[1])
-- Retention, at most 100 removals per call.
if ra > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', I(now - ra), 'LIMIT', 0, 100)
  for _, m in ipairs(old) do
    redis.call('DEL', ARGV[4] .. m)
    redis.call('ZREM', KEYS[2], m)
  end
end
if rc > 0 then
  local over = redis.call('ZCARD', KEYS[2]) - rc
  if over > 0 then
    local old = redis.call('ZRANGE', KEYS[2], 0, math.min(over, 100) - 1)
    for _, m in ipairs(old) do
      redis.call('DEL', ARGV[4] .. m)
      redis.call('ZREM', KEYS[2], m)
    end
  end
end
return 1
