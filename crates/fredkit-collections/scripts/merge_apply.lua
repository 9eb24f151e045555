-- fredkit-collections TtlMap merge, step 2 of 3 (on the target's slot):
-- add the source's snapshot to the target, once per merge id.
--
-- KEYS[1]  the target map  <prefix>:{to}:map
-- ARGV[1]  the merge id (from step 1)
-- ARGV[2]  TTL in ms (> 0)
-- ARGV[3]  the merge rule:
--          'sum':   'n:<f>' quantities are summed into the target; 'v:<f>'
--                   values are written only where the target has none (the
--                   target's own value wins); 't:<f>' times are ignored
--          'newer': per user field f, the entry (quantity and value) whose
--                   last add/set ('t:<f>', server ms; missing = 0) is later
--                   wins whole; on a tie, or when neither has a time, the
--                   target's; a field only the source has is copied
-- ARGV[4], ARGV[5], …  the snapshot: field, value pairs ('n:', 'v:', 't:')
--
-- The applied merge id is remembered in the target as the field '~m:<id>'
-- (it lives and expires with the target), so a retried step 2 adds nothing.
--
-- Returns: 1 when applied now, 0 when this merge id was applied before.
-- Errors (nothing written): 'CORRUPT <key> …' when the target is not a hash or
-- a quantity (target's or snapshot's) is not an integer, or a sum overflows;
-- 'MERGING <key> …' when the target is itself being merged into another map.
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
if t ~= 'hash' and t ~= 'none' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a hash; delete it (nothing was written)')
end
local rule = ARGV[3]
local first = 4
local applied = '~m:' .. ARGV[1]
if redis.call('HEXISTS', key, applied) == 1 then
  redis.call('PEXPIRE', key, ARGV[2])
  return 0
end
local mark = redis.call('HGET', key, '~merging')
if mark then
  local sp = string.find(mark, ' ', 1, true) or 0
  return redis.error_reply('MERGING ' .. key .. ' is being merged into map ' ..
    string.format('%q', string.sub(mark, sp + 1)) ..
    '; finish that merge first, then call merge_into again (nothing was written)')
end

local function int(s)
  return s and #s <= 20 and string.match(s, '^%-?%d+$')
end
local limit = 9223372036854775807
-- Validate everything before the first write.
for i = first, #ARGV, 2 do
  local f = ARGV[i]
  if string.sub(f, 1, 2) == 'n:' then
    if not int(ARGV[i + 1]) then
      return redis.error_reply('CORRUPT source snapshot field ' .. string.format('%q', f) ..
        ' for ' .. key .. ' is not a decimal integer (nothing was written)')
    end
    local cur = redis.call('HGET', key, f)
    if rule == 'newer' then cur = nil end
    if cur and not int(cur) then
      return redis.error_reply('CORRUPT ' .. key .. ' field ' .. string.format('%q', f) ..
        ' holds ' .. string.format('%q', string.sub(cur, 1, 24)) ..
        ', not a decimal integer; remove the field (nothing was written)')
    end
    local sum = (tonumber(cur) or 0) + tonumber(ARGV[i + 1])
    if sum >= limit or sum <= -limit then
      return redis.error_reply('quantity ' .. string.format('%q', f) .. ' of ' .. key ..
        ' would overflow a 64-bit integer (nothing was written)')
    end
  end
end
if rule == 'newer' then
  -- Group the snapshot by user field: src[f] = {n = …, v = …, t = …}.
  local src, order = {}, {}
  for i = first, #ARGV, 2 do
    local p, f = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 3)
    if not src[f] then
      src[f] = {}
      order[#order + 1] = f
    end
    src[f][p] = ARGV[i + 1]
  end
  for _, f in ipairs(order) do
    local e = src[f]
    if e.n or e.v then
      local has = redis.call('HEXISTS', key, 'n:' .. f) == 1 or
        redis.call('HEXISTS', key, 'v:' .. f) == 1
      local mine = tonumber(redis.call('HGET', key, 't:' .. f) or '0') or 0
      local theirs = tonumber(e.t or '0') or 0
      if not has or theirs > mine then
        redis.call('HDEL', key, 'n:' .. f, 'v:' .. f, 't:' .. f)
        if e.n then redis.call('HSET', key, 'n:' .. f, e.n) end
        if e.v then redis.call('HSET', key, 'v:' .. f, e.v) end
        if e.t then redis.call('HSET', key, 't:' .. f, e.t) end
      end
    end
  end
else
  for i = first, #ARGV, 2 do
    local f = ARGV[i]
    local p = string.sub(f, 1, 2)
    if p == 'n:' then
      redis.call('HINCRBY', key, f, ARGV[i + 1])
    elseif p == 'v:' then
      redis.call('HSETNX', key, f, ARGV[i + 1])
    end
  end
end
redis.call('HSET', key, applied, '1')
redis.call('PEXPIRE', key, ARGV[2])
return 1
