-- fredkit-flags: the server's clock and the namespace version, and the
-- whole snapshot when the caller's version differs (one round trip for the
-- periodic check and for a full reload).
--
-- KEYS[1] the flags hash
-- KEYS[2] the namespace version counter
-- ARGV[1] the caller's version ('' = always return the snapshot)
--
-- Returns {seconds, microseconds, version ('0' = none yet), flat HGETALL or {}}.
local t = redis.call('TIME')
local version = redis.call('GET', KEYS[2]) or '0'
if ARGV[1] ~= '' and ARGV[1] == version then
  return {t[1], t[2], version, {}}
end
return {t[1], t[2], version, redis.call('HGETALL', KEYS[1])}
