-- fredkit-collections Feed: push one item and keep only the newest N, in one
-- step (a crash can never leave the list uncapped), then refresh its TTL.
--
-- KEYS[1]  the feed   <prefix>:{name}:feed  (a list, newest first)
-- ARGV[1]  the encoded item
-- ARGV[2]  the cap N (>= 1)
-- ARGV[3]  TTL in ms (> 0)
--
-- Returns: the feed's length after the push (<= N).
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a list.
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t ~= 'list' and t ~= 'none' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a list; delete it (nothing was written)')
end
redis.call('LPUSH', key, ARGV[1])
redis.call('LTRIM', key, 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', key, ARGV[3])
return redis.call('LLEN', key)
