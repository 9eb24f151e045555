-- fredkit-collections BloomFilter: add or check a batch of items, each as K
-- bit positions computed by the client (double hashing of xxh3-128), on a
-- plain string with SETBIT/GETBIT (no module needed).
--
-- KEYS[1]  the filter  <prefix>:{name}:bloom  (a string: a 32-byte header
--          naming the sizing, then the M-bit array from bit 256 on)
-- ARGV[1]  the operation: 'add' | 'check'
-- ARGV[2]  the header (32 bytes, 'FKBLOOM1 <M> <K>' padded): a filter built
--          with other sizing, or anything else under the key, is refused
-- ARGV[3]  K, the positions per item
-- ARGV[4]  add: TTL in ms set when the filter is created (0: none)
-- ARGV[5], ARGV[6], …  K positions per item, each in [0, M)
--
-- Returns: a string of one character per item: add: '1' when the item was
--          new (some bit was 0), '0' when it was (probably) there already;
--          check: '1' when (probably) present, '0' when surely absent.
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a string or
-- its header is not this filter's.
local key = KEYS[1]
local op = ARGV[1]
local header = ARGV[2]
local k = tonumber(ARGV[3])
local base = 256
local t = redis.call('TYPE', key)['ok']
if t == 'none' then
  if op == 'check' then
    return string.rep('0', math.floor((#ARGV - 4) / k))
  end
  redis.call('SETRANGE', key, 0, header)
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', key, ARGV[4]) end
elseif t ~= 'string' then
  return redis.error_reply('CORRUPT ' .. key .. ' is a ' .. t ..
    ', not a Bloom filter string; delete it (nothing was written)')
else
  local found = redis.call('GETRANGE', key, 0, #header - 1)
  if found ~= header then
    return redis.error_reply('CORRUPT ' .. key .. ' starts with ' ..
      string.format('%q', string.sub(found, 1, 32)) .. ', not this filter\'s header ' ..
      string.format('%q', header) .. ' (other sizing, or not a Bloom filter); ' ..
      'delete it to rebuild (nothing was written)')
  end
end
local out = {}
for i = 5, #ARGV - k + 1, k do
  local hit = 1
  if op == 'add' then
    for j = i, i + k - 1 do
      if redis.call('SETBIT', key, base + tonumber(ARGV[j]), 1) == 0 then hit = 0 end
    end
    out[#out + 1] = (hit == 1) and '0' or '1'
  else
    for j = i, i + k - 1 do
      if redis.call('GETBIT', key, base + tonumber(ARGV[j])) == 0 then
        hit = 0
        break
      end
    end
    out[#out + 1] = (hit == 1) and '1' or '0'
  end
end
return table.concat(out)
