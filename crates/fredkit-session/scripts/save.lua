-- fredkit-session: write the changed fields of a live session, atomically.
--
-- KEYS[1]  the session   <prefix>:{tag}:s:<handle>  (a hash: '~c' created ms
--          (server clock), '~u' user, '~d' device, '.<name>' values,
--          '#<name>' counters)
-- KEYS[2]  the tag's cut-offs  <prefix>:{tag}:cut  (a hash: user -> ms)
-- ARGV[1]  idle TTL in ms (> 0)
-- ARGV[2]  absolute lifetime in ms (> 0)
-- ARGV[3]  m, the number of fields to delete; then m field names
-- then     n, the number of fields to set; then n (field, value) pairs
-- then     k, the number of counters to add to; then k (field, decimal i64) pairs
-- (applied in this order: deletes, sets, counters)
--
-- Only an existing, live, unrevoked session is written: a session that is
-- gone (deleted, expired, past its absolute lifetime, revoked) is never
-- brought back.
-- Returns: {1, c1, c2, ...}  saved; ci = the new value of the i-th counter
--                            (a decimal string, exact for every i64)
--          {0}   the session is gone (nothing written)
--          {-1}  garbage under the key: removed (nothing written)
-- Errors: 'CORRUPT <key> ...' a counter field holds no decimal integer
--         (nothing written); HINCRBY's overflow error (the deletes, the sets
--         and the counters before it were applied).
local key = KEYS[1]
local created = redis.pcall('HGET', key, '~c')
if type(created) == 'table' and created['err'] then
  redis.call('UNLINK', key)
  return {-1}
end
if not created then return {0} end
created = tonumber(created)
if not created then
  redis.call('UNLINK', key)
  return {-1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - created >= tonumber(ARGV[2]) then
  redis.call('UNLINK', key)
  return {0}
end
local user = redis.call('HGET', key, '~u')
if user then
  local cut = tonumber(redis.call('HGET', KEYS[2], user))
  if cut and created <= cut then
    redis.call('UNLINK', key)
    return {0}
  end
end

local i = 3
local ndel = tonumber(ARGV[i]); i = i + 1
local dels = i
i = i + ndel
local nset = tonumber(ARGV[i]); i = i + 1
local sets = i
i = i + 2 * nset
local nincr = tonumber(ARGV[i]); i = i + 1
local incrs = i

-- Check every counter before writing anything.
for j = 0, nincr - 1 do
  local f = ARGV[incrs + 2 * j]
  local raw = redis.call('HGET', key, f)
  if raw and (#raw > 20 or not string.match(raw, '^%-?%d+$')) then
    return redis.error_reply('CORRUPT ' .. key .. ' counter field ' .. string.format('%q', f) ..
      ' holds no decimal integer; remove the field (nothing was written)')
  end
end

for j = 0, ndel - 1 do
  redis.call('HDEL', key, ARGV[dels + j])
end
for j = 0, nset - 1 do
  redis.call('HSET', key, ARGV[sets + 2 * j], ARGV[sets + 2 * j + 1])
end
local out = {1}
for j = 0, nincr - 1 do
  local f = ARGV[incrs + 2 * j]
  redis.call('HINCRBY', key, f, ARGV[incrs + 2 * j + 1])
  -- Re-read as a string: Lua numbers are doubles, exact only to 2^53.
  out[#out + 1] = redis.call('HGET', key, f)
end
redis.call('PEXPIRE', key, ARGV[1])
return out
