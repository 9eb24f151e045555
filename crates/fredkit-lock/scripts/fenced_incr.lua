-- fredkit-lock: add to a fenced counter, atomically, if the writer's fencing
-- token is not older than the newest token the counter has seen.
--
-- KEYS[1]  the counter            <prefix>:{name}:count (a decimal integer)
-- KEYS[2]  the newest token seen  <prefix>:{name}:seen
-- ARGV[1]  the writer's fencing token (a decimal integer, 1 ..= 2^53)
-- ARGV[2]  the amount to add (a decimal integer, may be negative)
-- ARGV[3]  TTL of both keys in ms, or 0 for none
--
-- Validate, then write: both keys are read and checked before either is
-- written; INCRBY, the first write, refuses an overflow without writing.
--
-- Returns:
--   {1, value}  added; value is the new count as a decimal string (exact
--               for every i64, which a Lua number is not)
--   {0, newest} rejected: a newer token was already seen; nothing written
--   {'corrupt', key, problem, fix}  a key holds what this crate never
--               writes; nothing was written
--   an error reply when the sum would overflow a signed 64-bit integer
local function corrupt(key, problem, fix)
  return {'corrupt', key, problem, fix}
end

local seen = 0
local raw = redis.pcall('GET', KEYS[2])
if type(raw) == 'table' then
  return corrupt(KEYS[2], 'is a ' .. redis.call('TYPE', KEYS[2])['ok'] .. ', not a string',
    'Set it to the newest fencing token written to this counter, or delete it.')
elseif raw then
  if #raw <= 16 and string.match(raw, '^%d+$') and tonumber(raw) <= 9007199254740992 then
    seen = tonumber(raw)
  else
    return corrupt(KEYS[2], 'holds ' .. string.format('%q', string.sub(raw, 1, 24)) ..
      ', not a fencing token (decimal digits, at most 2^53)',
      'Set it to the newest fencing token written to this counter, or delete it.')
  end
end

local count = redis.pcall('GET', KEYS[1])
if type(count) == 'table' then
  return corrupt(KEYS[1], 'is a ' .. redis.call('TYPE', KEYS[1])['ok'] .. ', not a string',
    'Delete it, or set the right count with a fenced write (FencedCounter::set).')
elseif count and not (#count <= 20 and string.match(count, '^%-?%d+$')) then
  return corrupt(KEYS[1], 'holds ' .. string.format('%q', string.sub(count, 1, 24)) ..
    ', not a counter (a decimal integer)',
    'Delete it, or set the right count with a fenced write (FencedCounter::set).')
end

if tonumber(ARGV[1]) < seen then
  return {0, seen}
end
local added = redis.pcall('INCRBY', KEYS[1], ARGV[2])
if type(added) == 'table' then
  return redis.error_reply('fenced counter ' .. KEYS[1] .. ': ' .. tostring(added['err']) ..
    '; nothing was written')
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('PERSIST', KEYS[1])
end
return {1, redis.call('GET', KEYS[1])}
