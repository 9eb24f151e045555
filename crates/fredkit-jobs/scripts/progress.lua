-- progress: stores a running attempt's progress report.
--
-- KEYS[1] the job's hash
-- ARGV[1] token, ARGV[2] progress (encoded)
--
-- returns 1 stored; 0 not: the job is no longer active under this token.
-- Idempotent.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local f = redis.call('HMGET', KEYS[1], 'st', 'tok')
if f[1] ~= 'active' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'prog', ARGV[2])
return 1
