-- fredkit-collections Feed with a per-item age limit: every item is stored
-- as '<server time in ms>:<encoded item>'; items older than the limit (by
-- the server's clock) are trimmed from the tail (the oldest end) by every
-- call and never returned.
--
-- KEYS[1]  the feed   <prefix>:{name}:feed  (a list, newest first)
-- ARGV[1]  the operation: 'push' | 'latest' | 'len'
-- ARGV[2]  the age limit in ms (> 0)
-- ARGV[3]  push: the encoded item; latest: N (>= 1)
-- ARGV[4]  push: the cap (>= 1)
-- ARGV[5]  push: TTL in ms (> 0)
--
-- An item without a '<digits>:' prefix (written without an age limit, or
-- garbage) counts as expired: skipped, and trimmed once it is the oldest.
--
-- Returns: push, len: the feed's length after the call;
--          latest: the newest N live items' encoded bytes, newest first.
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a list.
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TYPE', key)['ok']
if t ~= 'list' and t ~= 'none' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a list; delete it (nothing was written)')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cutoff = now - tonumber(ARGV[2])

local function live(item)
  local ts = string.match(item, '^(%d+):')
  return ts ~= nil and tonumber(ts) > cutoff
end
-- Pushes come in server-time order, so expired items sit at the tail.
while true do
  local last = redis.call('LINDEX', key, -1)
  if not last or live(last) then break end
  redis.call('RPOP', key)
end

if op == 'push' then
  redis.call('LPUSH', key, string.format('%d', now) .. ':' .. ARGV[3])
  redis.call('LTRIM', key, 0, tonumber(ARGV[4]) - 1)
  redis.call('PEXPIRE', key, ARGV[5])
  return redis.call('LLEN', key)
elseif op == 'len' then
  return redis.call('LLEN', key)
elseif op == 'latest' then
  local want = tonumber(ARGV[3])
  local out = {}
  local items = redis.call('LRANGE', key, 0, want - 1)
  for i = 1, #items do
    local item = items[i]
    if live(item) then
      local sep = string.find(item, ':', 1, true)
      out[#out + 1] = string.sub(item, sep + 1)
    end
  end
  return out
end
return redis.error_reply('unknown Feed operation ' .. tostring(op))
