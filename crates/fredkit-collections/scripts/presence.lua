-- fredkit-collections Presence: who is online, as one sorted set scored by
-- the server-clock time of each member's last heartbeat (ms). Every call
-- first drops the members whose last heartbeat is older than the window, so
-- no background sweeper is needed.
--
-- KEYS[1]  the room   <prefix>:{room}:online  (a sorted set)
-- ARGV[1]  the operation: 'beat' | 'leave' | 'online' | 'count' | 'is_online'
-- ARGV[2]  the window in ms (> 0)
-- ARGV[3]  the member (beat, leave, is_online)
--
-- Returns: beat, leave, count: the number of members online after the call;
--          online: the members online, most recent heartbeat first;
--          is_online: 1 or 0.
-- The key expires one window after the last heartbeat (every member has
-- lapsed by then). Trimming is the only write of 'online'/'count'/'is_online'.
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a sorted set.
local key = KEYS[1]
local op = ARGV[1]
local window = tonumber(ARGV[2])
local t = redis.call('TYPE', key)['ok']
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a sorted set; delete it (nothing was written)')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cutoff = now - window
-- Members seen at or before the cutoff have lapsed.
redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)

if op == 'beat' then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
  return redis.call('ZCARD', key)
elseif op == 'leave' then
  redis.call('ZREM', key, ARGV[3])
  return redis.call('ZCARD', key)
elseif op == 'count' then
  return redis.call('ZCARD', key)
elseif op == 'online' then
  return redis.call('ZREVRANGE', key, 0, -1)
elseif op == 'is_online' then
  if redis.call('ZSCORE', key, ARGV[3]) then return 1 end
  return 0
end
return redis.error_reply('unknown Presence operation ' .. tostring(op))
