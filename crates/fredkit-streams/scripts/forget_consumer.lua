-- forget_consumer: remove a consumer from its group, but only when nothing
-- is pending for it (XGROUP DELCONSUMER would drop its pending entries).
--
-- KEYS[1]  the stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
--
-- Returns: 1 when removed, 0 when it still owns pending entries.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
