-- drain: deletes up to ARGV[2] jobs that have not started: waiting,
-- delayed and awaiting a retry (active, completed and dead jobs stay).
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] retry (zsets)
-- ARGV[1] job key prefix, ARGV[2] most jobs to delete in this call
--
-- returns how many were deleted (call again until 0). Idempotent.
local left = tonumber(ARGV[2])
local n = 0
for i = 1, 3 do
  if left > 0 then
    local ms = redis.call('ZRANGE', KEYS[i], 0, left - 1)
    for _, m in ipairs(ms) do
      redis.call('ZREM', KEYS[i], m)
      redis.call('DEL', ARGV[1] .. m)
      n = n + 1
      left = left - 1
    end
  end
end
return n
