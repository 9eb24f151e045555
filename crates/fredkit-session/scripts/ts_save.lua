-- fredkit-session TowerSessionStore: save a record by writing only what
-- differs from the stored one; an absent record is not created.
--
-- KEYS[1]  the record (see ts_create.lua)
-- ARGV[1]  expiry, Unix ms (PEXPIREAT)
-- ARGV[2]  expiry, Unix ns (decimal string)
-- ARGV[3…] the record's complete (field, value) pairs
--
-- Returns: the number of fields written or deleted (0: nothing changed,
--          nothing written); -1 no such record (nothing written);
--          -2 garbage under the key (removed).
local key = KEYS[1]
local cur = redis.pcall('HGETALL', key)
if type(cur) == 'table' and cur['err'] then
  redis.call('UNLINK', key)
  return -2
end
if #cur == 0 then return -1 end
local old = {}
for i = 1, #cur, 2 do old[cur[i]] = cur[i + 1] end
local new = {}
local n = 0
for j = 3, #ARGV, 2 do
  local f, v = ARGV[j], ARGV[j + 1]
  new[f] = true
  if old[f] ~= v then
    redis.call('HSET', key, f, v)
    n = n + 1
  end
end
for f, _ in pairs(old) do
  if string.sub(f, 1, 1) == '.' and not new[f] then
    redis.call('HDEL', key, f)
    n = n + 1
  end
end
if old['~e'] ~= ARGV[2] then
  redis.call('HSET', key, '~e', ARGV[2])
  redis.call('PEXPIREAT', key, ARGV[1])
  n = n + 1
end
return n
