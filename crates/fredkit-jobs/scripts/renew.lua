-- renew: extends the leases of a worker's running jobs.
--
-- KEYS[1] active (zset)
-- ARGV[1] job key prefix, ARGV[2] lease ms, then pairs: member, token
--
-- returns one integer per job: 1 renewed, 0 lost (no longer active under
-- this token: it stalled and was recovered, deleted, or finished).
-- Idempotent.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = string.format('%d', now + tonumber(ARGV[2]))
local out = {}
for i = 3, #ARGV, 2 do
  local m, tok = ARGV[i], ARGV[i + 1]
  local jk = ARGV[1] .. m
  local ok = 0
  if redis.call('TYPE', jk).ok == 'hash' and redis.call('HGET', jk, 'tok') == tok
     and redis.call('ZSCORE', KEYS[1], m) then
    redis.call('ZADD', KEYS[1], 'XX', until_ms, m)
    ok = 1
  end
  table.insert(out, ok)
end
return out
