-- clean: deletes up to ARGV[3] finished jobs (completed or dead) that
-- finished at least ARGV[2] ms ago (server clock).
--
-- KEYS[1] completed or dead (zset scored by finish time)
-- ARGV[1] job key prefix, ARGV[2] age ms, ARGV[3] most jobs to delete
--
-- returns how many were deleted (call again until 0). Idempotent.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',
  string.format('%d', now - tonumber(ARGV[2])), 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('DEL', ARGV[1] .. m)
end
return #old
