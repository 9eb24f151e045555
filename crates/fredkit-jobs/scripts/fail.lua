-- fail: records a failed attempt, if the job is still active under this
-- attempt's token: the error joins the job's history; the job is retried
-- after ARGV[4] ms, or is dead after its last attempt (or at once when
-- ARGV[5] is 1: the payload cannot be decoded), and the job's retention of
-- dead jobs is applied.
--
-- KEYS[1] active, KEYS[2] retry, KEYS[3] dead, KEYS[4] marker (zsets),
-- KEYS[5] the job's hash
-- ARGV[1] member, ARGV[2] token, ARGV[3] error text, ARGV[4] retry delay ms,
-- ARGV[5] fatal (0/1), ARGV[6] job key prefix
--
-- returns 1 retry scheduled; 3 dead; 2 already recorded under this token
-- (a resent run); 0 lease lost; -1 the job is gone.
-- Idempotent.
if redis.call('TYPE', KEYS[5]).ok ~= 'hash' then return -1 end
local f = redis.call('HMGET', KEYS[5], 'st', 'tok', 'att', 'max', 'dc', 'da', 'ne')
if f[2] ~= ARGV[2] then return 0 end
if f[1] == 'failed' or f[1] == 'dead' then return 2 end
if f[1] ~= 'active' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function I(x) return string.format('%d', x) end
redis.call('ZREM', KEYS[1], ARGV[1])
local ne = (tonumber(f[7]) or 0) + 1
redis.call('HSET', KEYS[5], 'ne', I(ne), 'e' .. ne, ARGV[3], 'et' .. ne, I(now))
if ARGV[5] == '1' or (tonumber(f[3]) or 0) >= (tonumber(f[4]) or 1) then
  local dc = tonumber(f[5]) or -1
  local da = tonumber(f[6]) or -1
  if dc == 0 or da == 0 then
    redis.call('DEL', KEYS[5])
    return 3
  end
  redis.call('HSET', KEYS[5], 'st', 'dead', 'ft', I(now))
  redis.call('ZADD', KEYS[3], I(now), ARGV[1])
  if da > 0 then
    local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', I(now - da), 'LIMIT', 0, 100)
    for _, m in ipairs(old) do
      redis.call('DEL', ARGV[6] .. m)
      redis.call('ZREM', KEYS[3], m)
    end
  end
  if dc > 0 then
    local over = redis.call('ZCARD', KEYS[3]) - dc
    if over > 0 then
      local old = redis.call('ZRANGE', KEYS[3], 0, math.min(over, 100) - 1)
      for _, m in ipairs(old) do
        redis.call('DEL', ARGV[6] .. m)
        redis.call('ZREM', KEYS[3], m)
      end
    end
  end
  return 3
end
local due = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[5], 'st', 'failed', 'due', I(due))
redis.call('ZADD', KEYS[2], I(due), ARGV[1])
-- Wake one blocked worker so that it learns the retry's due time.
redis.call('ZADD', KEYS[4], '0', 'w')
return 1
