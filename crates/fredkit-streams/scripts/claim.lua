-- claim: take over entries of a consumer group that have been pending longer
-- than min-idle (whoever owned them: a crashed consumer, or a failed
-- delivery waiting for its retry), in one step with their delivery counts.
-- Entries delivered more than max-deliveries times without an outcome (their
-- consumers kept crashing or losing the connection) are dead-lettered and
-- acknowledged here instead of being handed out again.
--
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream (same hash tag as KEYS[1])
-- ARGV[1]  consumer group
-- ARGV[2]  claiming consumer
-- ARGV[3]  min idle time, ms
-- ARGV[4]  XAUTOCLAIM start cursor ("0-0" to start over)
-- ARGV[5]  COUNT (max entries to claim)
-- ARGV[6]  max deliveries
-- ARGV[7]  dead-letter stream MAXLEN, approximate (0 = never trim)
-- ARGV[8]  at the start of a pass (cursor 0-0): remove the group's other
--          consumers that own nothing and have been idle longer than this
--          many ms (left behind by crashed workers; a live worker reads
--          every few seconds, and XREADGROUP recreates a removed consumer
--          anyway). 0 = never.
--
-- Returns: { next_cursor, { {id, {field, value, ...}, deliveries}, ... },
--            deleted, dead_lettered, dead_letter_failures, last_error,
--            dead_letters_trimmed, consumers_removed }
-- where dead_letter_failures counts entries due for the dead-letter stream
-- that it refused (they stay pending, claimed by this consumer, and are not
-- returned), last_error is the last refusal ('' when none) and
-- dead_letters_trimmed counts old dead letters the MAXLEN bound removed.
-- where deleted counts entries that were still pending but had been removed
-- from the stream (trimmed or XDEL'd): XAUTOCLAIM drops them from the PEL
-- (Redis 7 lists them in its third reply element; 6.2 returns them with nil
-- fields and this script acknowledges them).
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local deleted = 0
if r[3] then
  deleted = #r[3]
end
local max = tonumber(ARGV[6])
local out = {}
local dead = 0
local failed = 0
local last_error = ''
local now = nil
for _, e in ipairs(r[2]) do
  local id = e[1]
  local fields = e[2]
  if not fields then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    deleted = deleted + 1
  else
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
    local n = 0
    if #p == 1 then
      n = tonumber(p[1][4])
    end
    if n > max then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local args = { KEYS[2], '*' }
      -- The payload always, headers while one command can carry them (Lua's
      -- unpack fails near 8000 values), the rest counted.
      local dropped = 0
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
          if #args < 7800 then
            table.insert(args, fields[i])
            table.insert(args, fields[i + 1])
          else
            dropped = dropped + 1
          end
        end
      end
      if dropped > 0 then
        table.insert(args, 'dlq.dropped_fields')
        table.insert(args, tostring(dropped))
      end
      for _, v in ipairs({ 'dlq.id', id, 'dlq.group', ARGV[1], 'dlq.consumer', ARGV[2],
        'dlq.deliveries', tostring(n),
        'dlq.error', 'delivered ' .. tostring(n) .. ' times without an outcome (max ' .. ARGV[6] ..
          '): the consumers handling it crashed, were aborted or lost their connection',
        'dlq.at', tostring(now) }) do
        table.insert(args, v)
      end
      -- pcall: a dead-letter stream that refuses the entry (wrong type, OOM)
      -- must not fail the whole claim, whose XAUTOCLAIM has already taken
      -- the other entries (they would be lost to this pass and, idle again
      -- together, fail with it on every later pass). The entry stays pending.
      local added = redis.pcall('XADD', unpack(args))
      if type(added) == 'table' and added.err then
        failed = failed + 1
        last_error = added.err
      else
        redis.call('XACK', KEYS[1], ARGV[1], id)
        dead = dead + 1
      end
    else
      table.insert(out, { id, fields, n })
    end
  end
end
-- Consumers left behind: only those owning nothing (XGROUP DELCONSUMER would
-- drop their pending entries otherwise); entries XAUTOCLAIM just took from
-- a dead consumer count as no longer owned by it.
local removed = 0
if ARGV[4] == '0-0' and tonumber(ARGV[8]) > 0 then
  local threshold = tonumber(ARGV[8])
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local name, pending, idle = nil, nil, nil
    for i = 1, #c, 2 do
      if c[i] == 'name' then
        name = c[i + 1]
      elseif c[i] == 'pending' then
        pending = c[i + 1]
      elseif c[i] == 'idle' then
        idle = c[i + 1]
      end
    end
    if name and name ~= ARGV[2] and pending == 0 and idle and idle > threshold then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      removed = removed + 1
    end
  end
end
-- Trimmed separately: XTRIM says how many old dead letters the bound removed.
local trimmed = 0
if dead > 0 and tonumber(ARGV[7]) > 0 then
  trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[7])
end
return { r[1], out, deleted, dead, failed, last_error, trimmed, removed }
