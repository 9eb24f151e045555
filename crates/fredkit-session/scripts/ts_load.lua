-- fredkit-session TowerSessionStore: load a record.
--
-- KEYS[1]  the record (see ts_create.lua)
--
-- Returns: the record's (field, value) pairs (empty: no record);
--          -1 garbage under the key (not a hash, or no '~e'): removed.
local key = KEYS[1]
local all = redis.pcall('HGETALL', key)
if type(all) == 'table' and all['err'] then
  redis.call('UNLINK', key)
  return -1
end
if #all == 0 then return all end
for i = 1, #all, 2 do
  if all[i] == '~e' then return all end
end
redis.call('UNLINK', key)
return -1
