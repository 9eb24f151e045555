-- fredkit-session: end every session of a user at once, O(1).
--
-- KEYS[1]  the tag's cut-offs  <prefix>:{tag}:cut  (a hash: user -> ms)
-- KEYS[2]  the user's index    <prefix>:{tag}:idx:<user>
-- ARGV[1]  the user
-- ARGV[2]  absolute lifetime in ms (> 0): no session outlives it, so neither
--          must the cut-off
--
-- Sessions of the user created at or before the returned time are dead:
-- Sessions::load and save.lua refuse them (and remove them when they see them).
-- Returns: the cut-off, server time in ms (a decimal string). Cut-offs only
-- move forward.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if old and old > now then now = old end
local nowstr = string.format('%d', now)
redis.call('HSET', KEYS[1], ARGV[1], nowstr)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('UNLINK', KEYS[2])
return nowstr
