-- fredkit-collections TtlMap merge, step 1 of 3 (on the source's slot):
-- freeze the source map and record which merge it belongs to.
--
-- KEYS[1]  the source map  <prefix>:{from}:map
-- ARGV[1]  the target map's id (to)
-- ARGV[2]  a fresh merge id (used only when the source is not yet marked)
-- ARGV[3]  TTL in ms (> 0)
--
-- The mark is the field '~merging' = '<merge id> <to>'. While it is there,
-- every write to the source fails ('MERGING …'), so the snapshot returned
-- here stays the source's content until step 3 deletes it.
--
-- Returns: {} when the source does not exist (nothing to merge);
--          else {merge id, field1, value1, field2, value2, …} with the
--          source's 'n:'/'v:'/'t:' fields (the id is the stored one on a retry).
-- Errors: 'CORRUPT <key> …' when the source is not a hash;
--         'MERGING <key> …' when it is already being merged into another map.
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t == 'none' then return {} end
if t ~= 'hash' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a hash; delete it (nothing was written)')
end
local id = ARGV[2]
local mark = redis.call('HGET', key, '~merging')
if mark then
  local sp = string.find(mark, ' ', 1, true)
  if not sp then
    return redis.error_reply('CORRUPT ' .. key .. " field '~merging' holds " ..
      string.format('%q', string.sub(mark, 1, 40)) .. ', not a merge mark; remove that field')
  end
  local to = string.sub(mark, sp + 1)
  if to ~= ARGV[1] then
    return redis.error_reply('MERGING ' .. key .. ' is being merged into map ' ..
      string.format('%q', to) .. '; call merge_into with that target to finish first')
  end
  id = string.sub(mark, 1, sp - 1)
else
  redis.call('HSET', key, '~merging', id .. ' ' .. ARGV[1])
end
redis.call('PEXPIRE', key, ARGV[3])
local out = {id}
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local p = string.sub(all[i], 1, 2)
  if p == 'n:' or p == 'v:' or p == 't:' then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
