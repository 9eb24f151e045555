-- fredkit-lock: count the unexpired permits of a semaphore (read-only).
--
-- KEYS[1]  the permits <prefix>:{name}:permits
--
-- Returns the number of permits whose expiry (server ms) is after now, or
-- {'corrupt', key, problem, fix} when the key is not a sorted set.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.pcall('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if type(n) == 'table' then
  return {'corrupt', KEYS[1], 'is a ' .. redis.call('TYPE', KEYS[1])['ok'] .. ', not a sorted set of permits',
    'Delete it: it is not a semaphore fredkit-lock wrote.'}
end
return n
