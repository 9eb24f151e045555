-- dead_letter: move ONE pending entry of a consumer group to the dead-letter
-- stream and acknowledge it, atomically, if and only if it is still pending
-- for the given consumer (so two workers can never dead-letter it twice, and
-- an entry another worker has reclaimed meanwhile is left alone).
--
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream (same hash tag as KEYS[1])
-- ARGV[1]  consumer group
-- ARGV[2]  consumer that must own the entry
-- ARGV[3]  entry id
-- ARGV[4]  last error (text)
-- ARGV[5]  dead-letter stream MAXLEN, approximate (0 = never trim)
--
-- The dead letter holds the entry's original fields (payload and headers)
-- followed by dlq.id, dlq.group, dlq.consumer, dlq.deliveries (the server's
-- delivery count), dlq.error, dlq.at (server time, ms) and, when the entry
-- had been trimmed from the stream meanwhile, dlq.missing = 1. An entry with
-- thousands of fields keeps its payload and as many headers as one command
-- can carry; dlq.dropped_fields counts the headers left out.
--
-- Returns: { 1, trimmed } when dead-lettered and acknowledged, where trimmed
-- counts the oldest dead letters the MAXLEN bound removed to make room;
-- { 2, 0 } when it was not pending any more because this consumer had
-- already dead-lettered it: one of the newest 64 dead letters is this
-- entry's, from this group and consumer (the script ran twice: fred sent it
-- again on a new connection after the first run's reply was lost);
-- { 0, 0 } when the entry was no longer pending for that consumer otherwise
-- (nothing written either way).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then
  for _, e in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 64)) do
    local f = e[2]
    local id, group, consumer = nil, nil, nil
    for i = 1, #f, 2 do
      if f[i] == 'dlq.id' then
        id = f[i + 1]
      elseif f[i] == 'dlq.group' then
        group = f[i + 1]
      elseif f[i] == 'dlq.consumer' then
        consumer = f[i + 1]
      end
    end
    if id == ARGV[3] and group == ARGV[1] and consumer == ARGV[2] then
      return { 2, 0 }
    end
  end
  return { 0, 0 }
end
local deliveries = p[1][4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local args = { KEYS[2], '*' }
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
local missing = true
-- At most this many arguments go to one redis.call (Lua's unpack fails near
-- 8000): the payload always, headers while there is room, the rest counted
-- in dlq.dropped_fields.
local LIMIT = 7800
local dropped = 0
if #entry == 1 and entry[1][2] then
  missing = false
  local fields = entry[1][2]
  local payload_at = nil
  for i = 1, #fields, 2 do
    if fields[i] == 'payload' then
      payload_at = i
      table.insert(args, fields[i])
      table.insert(args, fields[i + 1])
      break
    end
  end
  for i = 1, #fields, 2 do
    if i ~= payload_at and string.sub(fields[i], 1, 4) ~= 'dlq.' then
      if #args < LIMIT then
        table.insert(args, fields[i])
        table.insert(args, fields[i + 1])
      else
        dropped = dropped + 1
      end
    end
  end
end
for _, v in ipairs({ 'dlq.id', ARGV[3], 'dlq.group', ARGV[1], 'dlq.consumer', ARGV[2],
  'dlq.deliveries', tostring(deliveries), 'dlq.error', ARGV[4], 'dlq.at', tostring(now) }) do
  table.insert(args, v)
end
if missing then
  table.insert(args, 'dlq.missing')
  table.insert(args, '1')
end
if dropped > 0 then
  table.insert(args, 'dlq.dropped_fields')
  table.insert(args, tostring(dropped))
end
redis.call('XADD', unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
-- Trimmed separately: XTRIM says how many old dead letters the bound removed.
local trimmed = 0
if tonumber(ARGV[5]) > 0 then
  trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[5])
end
return { 1, trimmed }
