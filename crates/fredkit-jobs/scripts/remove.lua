-- remove: deletes one job in any state. A worker running it is told when
-- it renews its lease or finishes (its result is dropped).
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] retry, KEYS[4] active,
-- KEYS[5] completed, KEYS[6] dead (zsets), KEYS[7] the job's hash
-- ARGV[1] member
--
-- returns 1 deleted; 0 there was no such job. Idempotent.
for i = 1, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return redis.call('DEL', KEYS[7])
