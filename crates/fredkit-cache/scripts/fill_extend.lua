-- fill_extend: renew the fill lock of a filler whose factory is still running
-- (compare-and-PEXPIRE), so the lock cannot expire under a live filler and
-- let another process run the factory too.
--
-- KEYS[1]  the entry's fill-lock key
-- ARGV[1]  the filler's lock token
-- ARGV[2]  new time-to-live in milliseconds
--
-- Returns 1 when the lock was ours and is renewed, 0 otherwise (it expired
-- and may belong to another filler now: never touch someone else's lock).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
