-- pause: pauses (ARGV[1] = 1) or resumes (0) a queue. Paused, workers
-- start no job; due delayed jobs and stalled jobs still move to wait.
--
-- KEYS[1] meta (hash), KEYS[2] marker (zset)
-- ARGV[1] 1 to pause, 0 to resume
--
-- returns 1. Idempotent.
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
else
  redis.call('HDEL', KEYS[1], 'paused')
  redis.call('ZADD', KEYS[2], '0', 'w')
end
return 1
