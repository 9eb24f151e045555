-- fredkit-lock: the storage-side fencing check. Writes a value only if the
-- writer's fencing token is not older than the newest token this value has seen.
--
-- KEYS[1]  the protected value       <prefix>:{name}:value
-- KEYS[2]  the newest token seen     <prefix>:{name}:seen  (not ':fence', the
--          lock's counter: a store may share a lock manager's prefix)
-- ARGV[1]  the writer's fencing token (a decimal integer, 1 ..= 2^53)
-- ARGV[2]  the value
-- ARGV[3]  TTL of both keys in ms, or 0 for none
--
-- Validate, then write: the marker is read and checked before either key is
-- written.
--
-- Returns:
--   0     written; the token is now the newest seen
--   > 0   rejected: a newer token was already seen; the value is that token
--   {'corrupt', key, problem, fix}  the marker is not a token this script
--         wrote (wrong type, not a number); nothing was written
local seen = 0
local raw = redis.pcall('GET', KEYS[2])
local problem
if type(raw) == 'table' then
  problem = 'is a ' .. redis.call('TYPE', KEYS[2])['ok'] .. ', not a string'
elseif raw then
  if #raw <= 16 and string.match(raw, '^%d+$') and tonumber(raw) <= 9007199254740992 then
    seen = tonumber(raw)
  else
    problem = 'holds ' .. string.format('%q', string.sub(raw, 1, 24)) ..
      ', not a fencing token (decimal digits, at most 2^53)'
  end
end
if problem then
  return {'corrupt', KEYS[2], problem,
    'Set it to the newest fencing token written to this value, or delete it (then the next write is accepted whatever its token).'}
end
local token = tonumber(ARGV[1])
if token < seen then
  return seen
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[1], ARGV[2])
end
return 0
