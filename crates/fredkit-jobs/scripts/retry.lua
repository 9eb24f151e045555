-- retry: brings a dead job back to wait with its attempts reset (its error
-- history is kept).
--
-- KEYS[1] wait, KEYS[2] dead, KEYS[3] marker (zsets), KEYS[4] meta (hash),
-- KEYS[5] the job's hash
-- ARGV[1] member
--
-- returns 1 brought back; 0 not dead (unknown, or already brought back).
-- Idempotent: a second run answers 0.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('TYPE', KEYS[5]).ok ~= 'hash' then return 0 end
local prio = tonumber(redis.call('HGET', KEYS[5], 'prio')) or 0
if prio < 0 or prio > 65535 then prio = 0 end
local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1) % 68719476736
redis.call('ZADD', KEYS[1], string.format('%d', (65535 - prio) * 68719476736 + seq), ARGV[1])
redis.call('HSET', KEYS[5], 'st', 'waiting', 'att', '0', 'tok', '')
redis.call('HDEL', KEYS[5], 'ft')
redis.call('ZADD', KEYS[3], '0', 'w')
return 1
