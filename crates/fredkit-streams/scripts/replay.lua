-- replay: move the oldest dead letters back to the stream, atomically per
-- entry: XADD the original fields (payload and headers, without the dlq.*
-- fields) plus dlq.replayed_from = the original entry id and
-- dlq.replay_group = the group that dead-lettered it, then XDEL the dead
-- letter. Every consumer group reads the replayed entry; workers of the other
-- groups (which handled the original already) acknowledge it without
-- handling it. Dead letters whose original entry was missing (dlq.missing,
-- no payload) cannot be replayed and stay where they are.
--
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the stream (same hash tag as KEYS[1])
-- ARGV[1]  how many dead letters to look at, oldest first
-- ARGV[2]  stream MAXLEN, approximate (0 = do not trim)
--
-- Returns: { replayed, skipped, { new_id, ... } }
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
local replayed = 0
local skipped = 0
local ids = {}
for _, e in ipairs(entries) do
  local fields = e[2]
  local args = { KEYS[2] }
  if tonumber(ARGV[2]) > 0 then
    table.insert(args, 'MAXLEN')
    table.insert(args, '~')
    table.insert(args, ARGV[2])
  end
  table.insert(args, '*')
  local original = nil
  local group = nil
  local has_payload = false
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'dlq.id' then
      original = fields[i + 1]
    elseif name == 'dlq.group' then
      group = fields[i + 1]
    elseif string.sub(name, 1, 4) ~= 'dlq.' then
      if name == 'payload' then
        has_payload = true
      end
      -- Dead letters carry at most ~7800 values (see dead_letter.lua); the
      -- bound keeps unpack below Lua's limit whatever wrote the entry.
      if name == 'payload' or #args < 7800 then
        table.insert(args, name)
        table.insert(args, fields[i + 1])
      end
    end
  end
  if has_payload then
    table.insert(args, 'dlq.replayed_from')
    table.insert(args, original or e[1])
    if group then
      table.insert(args, 'dlq.replay_group')
      table.insert(args, group)
    end
    table.insert(ids, redis.call('XADD', unpack(args)))
    redis.call('XDEL', KEYS[1], e[1])
    replayed = replayed + 1
  else
    skipped = skipped + 1
  end
end
return { replayed, skipped, ids }
