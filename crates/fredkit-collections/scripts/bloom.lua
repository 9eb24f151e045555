-- fredkit-collections BloomFilter: add or check a batch of items on a plain
-- string with SETBIT/GETBIT (no module needed).
--
-- KEYS[1]  the filter  <prefix>:{name}:bloom  (a string: a 32-byte header
--          naming the sizing, then the M-bit array from bit 256 on)
-- ARGV[1]  the operation: 'add' | 'check'
-- ARGV[2]  the header (32 bytes, 'FKBLOOM1 <M> <K>' padded): a filter built
--          with other sizing, or anything else under the key, is refused
-- ARGV[3]  M, the bits (< 2^32)
-- ARGV[4]  K, the positions per item
-- ARGV[5]  add: TTL in ms set when the filter is created (0: none)
-- ARGV[6]  the items, 8 bytes each: two little-endian u32, h1 in [0, M) and
--          h2 in [1, M), from the client's xxh3-128 of the item; the item's
--          positions are (h1 + j * h2) mod M for j = 0 .. K-1 (double
--          hashing; exact in Lua's doubles as every term is < 2^38)
--
-- Returns: a string of one character per item: add: '1' when the item was
--          new (some bit was 0), '0' when it was (probably) there already;
--          check: '1' when (probably) present, '0' when surely absent.
-- Errors (nothing written): 'CORRUPT <key> …' when the key is not a string or
-- its header is not this filter's.
local key = KEYS[1]
local op = ARGV[1]
local header = ARGV[2]
local m = tonumber(ARGV[3])
local k = tonumber(ARGV[4])
local data = ARGV[6]
local count = math.floor(#data / 8)
local base = 256
local t = redis.call('TYPE', key)['ok']
if t == 'none' then
  if op == 'check' then
    return string.rep('0', count)
  end
  redis.call('SETRANGE', key, 0, header)
  if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', key, ARGV[5]) end
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
for i = 0, count - 1 do
  local h1, h2 = struct.unpack('<I4I4', data, i * 8 + 1)
  local hit = 1
  if op == 'add' then
    for j = 0, k - 1 do
      if redis.call('SETBIT', key, base + (h1 + j * h2) % m, 1) == 0 then hit = 0 end
    end
    out[#out + 1] = (hit == 1) and '0' or '1'
  else
    for j = 0, k - 1 do
      if redis.call('GETBIT', key, base + (h1 + j * h2) % m) == 0 then
        hit = 0
        break
      end
    end
    out[#out + 1] = (hit == 1) and '1' or '0'
  end
end
return table.concat(out)
