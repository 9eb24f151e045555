-- enqueue: adds one job unless a job with its id exists (idempotent by id).
-- Also used for recurring ticks: a tick not newer than the last one
-- enqueued for its schedule is skipped, even when that job is gone.
--
-- KEYS[1] wait (zset), KEYS[2] delayed (zset), KEYS[3] meta (hash),
-- KEYS[4] marker (zset), KEYS[5] the job's hash
-- ARGV[1] member (the id as a key part), ARGV[2] id, ARGV[3] payload,
-- ARGV[4] priority 0..65535 (higher first), ARGV[5] delay ms (0: none),
-- ARGV[6] run-at epoch ms (-1: none), ARGV[7] max attempts,
-- ARGV[8] backoff kind ('f' fixed, 'e' exponential), ARGV[9] backoff delay ms,
-- ARGV[10] backoff cap ms, ARGV[11] jitter (0/1), ARGV[12] attempt timeout ms (0: none),
-- ARGV[13] keep completed: count (-1: no limit), ARGV[14] keep completed: age ms (-1: no limit),
-- ARGV[15] keep dead: count, ARGV[16] keep dead: age ms,
-- ARGV[17] recurring schedule name ('' when not recurring), ARGV[18] its tick (epoch ms),
-- ARGV[19] this call's token (random per call)
--
-- returns {1, state}: added ('waiting' or 'delayed');
--         {0, state}: a job with this id exists (its state), added by another call;
--         {2, ''}: a recurring tick already enqueued (or an older one): skipped.
-- Idempotent: run twice (a resent command), the second run changes nothing
-- and answers as the first did (the call token recognises the job it added).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function I(x) return string.format('%d', x) end

if redis.call('EXISTS', KEYS[5]) == 1 then
  local f = redis.call('HMGET', KEYS[5], 'st', 'etok')
  if f[2] == ARGV[19] then return {1, f[1] or ''} end
  if ARGV[17] ~= '' then return {2, ''} end
  return {0, f[1] or ''}
end
if ARGV[17] ~= '' then
  local field = 'r:' .. ARGV[17]
  local last = tonumber(redis.call('HGET', KEYS[3], field)) or -1
  if last >= tonumber(ARGV[18]) then return {2, ''} end
  redis.call('HSET', KEYS[3], field, ARGV[18])
end

local due = now
local runat = tonumber(ARGV[6])
local delay = tonumber(ARGV[5])
if runat >= 0 then due = runat elseif delay > 0 then due = now + delay end
local prio = tonumber(ARGV[4])
local st
if due > now then
  st = 'delayed'
  redis.call('ZADD', KEYS[2], I(due), ARGV[1])
else
  st = 'waiting'
  local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1) % 68719476736
  redis.call('ZADD', KEYS[1], I((65535 - prio) * 68719476736 + seq), ARGV[1])
end
redis.call('HSET', KEYS[5], 'id', ARGV[2], 'data', ARGV[3], 'prio', ARGV[4], 'max', ARGV[7],
  'bk', ARGV[8], 'bd', ARGV[9], 'bm', ARGV[10], 'bj', ARGV[11], 'to', ARGV[12],
  'rc', ARGV[13], 'ra', ARGV[14], 'dc', ARGV[15], 'da', ARGV[16],
  'etok', ARGV[19], 'st', st, 'ct', I(now), 'due', I(due), 'att', '0', 'ne', '0', 'ns', '0')
-- Wake one blocked worker: it claims the job, or learns the new due time.
redis.call('ZADD', KEYS[4], '0', 'w')
return {1, st}
