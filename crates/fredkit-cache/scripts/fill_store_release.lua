-- fill_store_release: store a freshly computed cache entry and release the
-- fill lock if (and only if) this filler still owns it, in one round trip.
--
-- KEYS[1]  the entry's data key        (same hash tag as KEYS[2])
-- KEYS[2]  the entry's fill-lock key
-- ARGV[1]  the encoded entry (fredkit-cache envelope)
-- ARGV[2]  physical time-to-live in milliseconds (logical TTL + max stale)
-- ARGV[3]  the filler's lock token
--
-- Returns 1 when the lock was released, 0 when it was no longer ours (it
-- expired and maybe another filler took it: that filler's lock is left alone).
-- The entry is written either way: it is a valid, newer value.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
