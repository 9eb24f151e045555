-- counts: the number of jobs in each state, the stalled-job count and
-- whether the queue is paused, at one instant.
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] retry, KEYS[4] active,
-- KEYS[5] completed, KEYS[6] dead (zsets), KEYS[7] meta (hash)
--
-- returns {waiting, delayed, failed (awaiting a retry), active, completed,
--          dead, stalled recoveries ever, paused 0/1}. Read only.
local out = {}
for i = 1, 6 do out[i] = redis.call('ZCARD', KEYS[i]) end
out[7] = tonumber(redis.call('HGET', KEYS[7], 'stalled')) or 0
out[8] = redis.call('HEXISTS', KEYS[7], 'paused')
return out
