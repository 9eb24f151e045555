-- fill_release: compare-and-delete of the fill lock (the factory failed or the
-- double-check found a fresh entry, so nothing is stored).
--
-- KEYS[1]  the entry's fill-lock key
-- ARGV[1]  the filler's lock token
--
-- Returns 1 when the lock was ours and is deleted, 0 otherwise (it expired and
-- may belong to another filler now: never delete someone else's lock).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
