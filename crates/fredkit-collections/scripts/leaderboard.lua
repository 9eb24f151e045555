-- fredkit-collections Leaderboard: one operation on a board, a sorted set.
-- Scores are stored signed so that ascending order is always best first:
-- internal = sign * score (sign -1 when a higher score is better), so ties
-- are listed in byte order of the member names whatever the board's order.
--
-- KEYS[1]  the board's base key  <prefix>:{board}:lb
--          An all-time board is KEYS[1] itself. A periodic board is
--          KEYS[1] .. ':' .. <period index>, built here because the period
--          comes from the server's clock (TIME); it shares KEYS[1]'s hash tag,
--          so it is in the same slot.
-- ARGV[1]  the operation: 'best' | 'latest' | 'incr' (submit), 'rank',
--          'around', 'top', 'size', 'remove'
-- ARGV[2]  period length in ms (0: an all-time board)
-- ARGV[3]  period offset in ms (periods start at multiples of the length
--          minus the offset since the Unix epoch: weeks on Mondays)
-- ARGV[4]  all-time board: TTL in ms set by every submit (0: none);
--          periodic board: how long a period's key is kept after it ends
-- ARGV[5]  sign: '1' (lower score is better) or '-1' (higher is better)
-- ARGV[6]  the member (submit, rank, around, remove) or N (top)
-- ARGV[7]  the score (submit, already signed) or N (around)
-- ARGV[8]  '1' to read the previous period instead of the current (top)
--
-- Returns: submit: the member's internal score after it, as a string;
--          rank: {} when absent, else {rank, internal score};
--          around, top: {rank of the first, position of the first (0-based),
--          m1, s1, m2, s2, …} ({} when the member is absent or the board
--          empty), in ascending internal order; rank = 1 + the number of
--          members with a strictly better score;
--          size: the number of members; remove: 1 when removed, 0 when absent.
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a sorted set.
local op = ARGV[1]
local period = tonumber(ARGV[2])
local key = KEYS[1]
local expire_at = nil
if period > 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local offset = tonumber(ARGV[3])
  local idx = math.floor((now + offset) / period)
  if ARGV[8] == '1' then idx = idx - 1 end
  key = key .. ':' .. string.format('%d', idx)
  expire_at = (idx + 1) * period - offset + tonumber(ARGV[4])
end
local function corrupt()
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. redis.call('TYPE', key)['ok'] ..
    ', not a sorted set; delete it (nothing was written)')
end

-- Submits: the write itself refuses a key that is not a sorted set
-- (WRONGTYPE), which saves a TYPE on the hot path.
if op == 'best' or op == 'latest' or op == 'incr' then
  local r
  if op == 'best' then
    r = redis.pcall('ZADD', key, 'LT', ARGV[7], ARGV[6])
  elseif op == 'latest' then
    r = redis.pcall('ZADD', key, ARGV[7], ARGV[6])
  else
    r = redis.pcall('ZINCRBY', key, ARGV[7], ARGV[6])
  end
  if type(r) == 'table' and r['err'] then
    if string.find(r['err'], 'WRONGTYPE', 1, true) then return corrupt() end
    return r
  end
  if expire_at then
    redis.call('PEXPIREAT', key, string.format('%d', expire_at))
  elseif ARGV[4] ~= '0' then
    redis.call('PEXPIRE', key, ARGV[4])
  end
  if op == 'incr' then return r end
  return redis.call('ZSCORE', key, ARGV[6])
end

local t = redis.call('TYPE', key)['ok']
if t ~= 'zset' and t ~= 'none' then return corrupt() end

-- Members from ascending position `from` to `to` with the rank of the first.
local function window(from, to)
  local items = redis.call('ZRANGE', key, from, to, 'WITHSCORES')
  if #items == 0 then return {} end
  local better = redis.call('ZCOUNT', key, '-inf', '(' .. items[2])
  local out = {better + 1, from}
  for i = 1, #items do out[#out + 1] = items[i] end
  return out
end

if op == 'rank' then
  local s = redis.call('ZSCORE', key, ARGV[6])
  if not s then return {} end
  return {redis.call('ZCOUNT', key, '-inf', '(' .. s) + 1, s}
elseif op == 'around' then
  local pos = redis.call('ZRANK', key, ARGV[6])
  if not pos then return {} end
  local n = tonumber(ARGV[7])
  local from = pos - n
  if from < 0 then from = 0 end
  return window(from, pos + n)
elseif op == 'top' then
  return window(0, tonumber(ARGV[6]) - 1)
elseif op == 'size' then
  return redis.call('ZCARD', key)
elseif op == 'remove' then
  return redis.call('ZREM', key, ARGV[6])
end
return redis.error_reply('unknown Leaderboard operation ' .. tostring(op))
