-- fill_acquire: try to take the cross-process fill lock of one cache entry and
-- read the entry in the same round trip (the "double-check after acquiring").
--
-- KEYS[1]  the entry's data key        (same hash tag as KEYS[2])
-- KEYS[2]  the entry's fill-lock key
-- ARGV[1]  this filler's random token
-- ARGV[2]  lock time-to-live in milliseconds
--
-- Returns {acquired, data, lock_ms}:
--   acquired  1 when the lock is this filler's: taken now (SET NX PX), or
--             already holding ARGV[1] (this call run again: fred resends a
--             command whose reply was lost, and the first run took the
--             lock); 0 when another filler holds it
--   data      the data key's current bytes, or false when absent
--   lock_ms   the lock's remaining time to live in milliseconds (PTTL): ARGV[2]
--             when acquired; another filler's remaining lock time otherwise
--             (an eager refresh that lost the race backs off that long at
--             most); -1 / -2 as PTTL answers them
-- A non-string value under KEYS[1] (a foreign writer) is returned as false
-- by pcall and reported as absent; the caller's decode path handles garbage.
local acquired = 0
local lock_ms = tonumber(ARGV[2])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  acquired = 1
elseif redis.call('GET', KEYS[2]) == ARGV[1] then
  acquired = 1
else
  lock_ms = redis.call('PTTL', KEYS[2])
end
local ok, data = pcall(redis.call, 'GET', KEYS[1])
if not ok then
  data = false
end
return {acquired, data, lock_ms}
