-- fredkit-lock: count the unexpired permits of a semaphore (read-only).
--
-- KEYS[1]  the permits <prefix>:{name}:permits
--
-- Returns the number of permits whose expiry (server ms) is after now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
