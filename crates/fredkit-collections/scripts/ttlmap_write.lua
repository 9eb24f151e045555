-- fredkit-collections TtlMap: one write to a map hash, then its TTL refreshed.
--
-- KEYS[1]  the map   <prefix>:{id}:map  (a hash; fields 'n:<f>' hold decimal
--          quantities, 'v:<f>' codec bytes, 't:<f>' the server time in ms of
--          the field's last add/set (only kept for the 'keep newer' merge
--          rule), '~…' merge bookkeeping)
-- ARGV[1]  the operation: 'add' | 'set' | 'remove' | 'remove_if_zero'
-- ARGV[2]  the user field name f (without its 'n:'/'v:' namespace)
-- ARGV[3]  add: the amount (decimal i64); set: the encoded value
-- ARGV[4]  TTL in ms (> 0)
-- ARGV[5]  '1' to record the write time 't:<f>' on add/set, '0' not to
--
-- Returns: add: the new quantity as a decimal string (exact for every i64);
--          set: 1; remove / remove_if_zero: 1 when a field was removed, else 0.
-- Errors (nothing written):
--   'CORRUPT <key> …'  the key is not a hash, or the quantity is not an integer
--   'MERGING <key> …'  the map is being merged into another (see merge_begin.lua)
--   an overflow of the quantity (HINCRBY's own error)
local key = KEYS[1]
local op = ARGV[1]
local f = ARGV[2]
local ttl = ARGV[4]

-- Reading the merge mark also checks the type: HGET fails on anything
-- but a hash (or no key).
local merging = redis.pcall('HGET', key, '~merging')
if type(merging) == 'table' and merging['err'] then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. redis.call('TYPE', key)['ok'] ..
    ', not a hash; delete it (nothing was written)')
end
if merging then
  local sp = string.find(merging, ' ', 1, true) or 0
  return redis.error_reply('MERGING ' .. key .. ' is being merged into map ' ..
    string.format('%q', string.sub(merging, sp + 1)) ..
    '; call merge_into with the same two maps again to finish (nothing was written)')
end

local function stamp()
  if ARGV[5] == '1' then
    local time = redis.call('TIME')
    redis.call('HSET', key, 't:' .. f,
      string.format('%d', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)))
  end
end

local function quantity(field)
  local raw = redis.call('HGET', key, field)
  if not raw then return nil end
  if #raw > 20 or not string.match(raw, '^%-?%d+$') then
    return false
  end
  return raw
end

local function corrupt_quantity(field)
  return redis.error_reply('CORRUPT ' .. key .. ' field ' .. string.format('%q', field) ..
    ' holds ' .. string.format('%q', string.sub(redis.call('HGET', key, field), 1, 24)) ..
    ', not a decimal integer; remove the field or delete the key (nothing was written)')
end

if op == 'add' then
  local field = 'n:' .. f
  -- HINCRBY itself refuses a field that is not a decimal i64, and an
  -- overflow, writing nothing.
  local r = redis.pcall('HINCRBY', key, field, ARGV[3])
  if type(r) == 'table' and r['err'] then
    if string.find(r['err'], 'not an integer', 1, true) then
      return corrupt_quantity(field)
    end
    return redis.error_reply('quantity ' .. string.format('%q', f) .. ' of ' .. key ..
      ': ' .. r['err'] .. ' (nothing was written)')
  end
  stamp()
  redis.call('PEXPIRE', key, ttl)
  -- Re-read as a string: Lua numbers are doubles, exact only to 2^53.
  return redis.call('HGET', key, field)
elseif op == 'set' then
  redis.call('HSET', key, 'v:' .. f, ARGV[3])
  stamp()
  redis.call('PEXPIRE', key, ttl)
  return 1
elseif op == 'remove' then
  local n = redis.call('HDEL', key, 'n:' .. f, 'v:' .. f)
  redis.call('HDEL', key, 't:' .. f)
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
  if n > 0 then return 1 end
  return 0
elseif op == 'remove_if_zero' then
  local field = 'n:' .. f
  local q = quantity(field)
  if q == false then return corrupt_quantity(field) end
  local removed = 0
  if q ~= nil and tonumber(q) <= 0 then
    redis.call('HDEL', key, field, 'v:' .. f, 't:' .. f)
    removed = 1
  end
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
  return removed
end
return redis.error_reply('unknown TtlMap operation ' .. tostring(op))
