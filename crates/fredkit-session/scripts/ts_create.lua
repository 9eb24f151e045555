-- fredkit-session TowerSessionStore: create a record unless its id is taken.
--
-- KEYS[1]  the record  <prefix>:{ts.<id>}:r  (a hash: '~e' expiry, Unix ns;
--          '.<key>' the JSON of each data entry)
-- ARGV[1]  expiry, Unix ms (PEXPIREAT)
-- ARGV[2]  expiry, Unix ns (decimal string, kept exactly)
-- ARGV[3…] (field, value) pairs
--
-- Returns: 1 created, 0 the id is taken (nothing written).
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, '~e', ARGV[2])
for j = 3, #ARGV, 2 do
  redis.call('HSET', key, ARGV[j], ARGV[j + 1])
end
redis.call('PEXPIREAT', key, ARGV[1])
return 1
