-- claim: one worker's fetch. Moves due delayed and retrying jobs to wait,
-- returns jobs whose lease expired (stalled) to wait (or dead after their
-- last attempt), then, unless the queue is paused, starts up to ARGV[2]
-- waiting jobs (highest priority first, FIFO within a priority) under a
-- lease of ARGV[3] ms held with a token per attempt.
--
-- KEYS[1] wait, KEYS[2] delayed, KEYS[3] retry, KEYS[4] active, KEYS[5] meta,
-- KEYS[6] marker, KEYS[7] dead (all zsets but meta, a hash)
-- ARGV[1] job key prefix (member appended), ARGV[2] jobs to start,
-- ARGV[3] lease ms, ARGV[4] worker id, ARGV[5] jobs to promote / recover per call
--
-- returns {now ms, wake in ms (-1: nothing scheduled, or jobs started), stalled recovered,
--          stalled dead, dropped members, then 13 fields per started job:
--          member, id, payload, max attempts, due, timeout ms, backoff kind,
--          backoff delay, backoff cap, jitter, created, attempt, token}
-- Idempotent enough to be resent: a second run starts other jobs (or none);
-- a job started by a lost first run is recovered when its lease expires.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function I(x) return string.format('%d', x) end
local pre = ARGV[1]
local lim = tonumber(ARGV[5])

local function is_job(jk)
  return redis.call('TYPE', jk).ok == 'hash'
end
local function push(m, jk)
  local prio = tonumber(redis.call('HGET', jk, 'prio')) or 0
  if prio < 0 or prio > 65535 then prio = 0 end
  local seq = redis.call('HINCRBY', KEYS[5], 'seq', 1) % 68719476736
  redis.call('ZADD', KEYS[1], I((65535 - prio) * 68719476736 + seq), m)
  redis.call('HSET', jk, 'st', 'waiting')
end

local dropped = 0
-- Due delayed jobs and due retries.
for _, z in ipairs({KEYS[2], KEYS[3]}) do
  local due = redis.call('ZRANGEBYSCORE', z, '-inf', I(now), 'LIMIT', 0, lim)
  for _, m in ipairs(due) do
    redis.call('ZREM', z, m)
    local jk = pre .. m
    if is_job(jk) then push(m, jk) else dropped = dropped + 1 end
  end
end

-- Stalled jobs: the lease expired, the worker died or stalled.
local recovered, dead = 0, 0
local stalled = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', I(now), 'LIMIT', 0, lim)
for _, m in ipairs(stalled) do
  redis.call('ZREM', KEYS[4], m)
  local jk = pre .. m
  if is_job(jk) then
    redis.call('HINCRBY', KEYS[5], 'stalled', 1)
    local f = redis.call('HMGET', jk, 'att', 'max', 'ne', 'stl')
    local ne = (tonumber(f[3]) or 0) + 1
    redis.call('HSET', jk, 'ne', I(ne), 'e' .. ne,
      'stalled: the lease expired before the attempt finished (its worker died or stalled)',
      'et' .. ne, I(now), 'tok', '', 'stl', I((tonumber(f[4]) or 0) + 1))
    if (tonumber(f[1]) or 0) >= (tonumber(f[2]) or 1) then
      redis.call('HSET', jk, 'st', 'dead', 'ft', I(now))
      redis.call('ZADD', KEYS[7], I(now), m)
      dead = dead + 1
    else
      push(m, jk)
      recovered = recovered + 1
    end
  else
    dropped = dropped + 1
  end
end

local out = {now, -1, recovered, dead, 0}
local n = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[5], 'paused') == 0 and n > 0 then
  local lease = tonumber(ARGV[3])
  local popped = redis.call('ZPOPMIN', KEYS[1], n)
  for i = 1, #popped, 2 do
    local m = popped[i]
    local jk = pre .. m
    if is_job(jk) then
      local f = redis.call('HMGET', jk, 'id', 'data', 'max', 'due', 'to', 'bk', 'bd', 'bm', 'bj',
        'ct', 'att', 'ns')
      local att = (tonumber(f[11]) or 0) + 1
      local ns = (tonumber(f[12]) or 0) + 1
      local tok = ARGV[4] .. '/' .. att
      redis.call('HSET', jk, 'st', 'active', 'tok', tok, 'wk', ARGV[4], 'ts', I(now),
        'att', I(att), 'ns', I(ns), 's' .. ns, I(now))
      redis.call('ZADD', KEYS[4], I(now + lease), m)
      table.insert(out, m)
      for j = 1, 10 do table.insert(out, f[j] or '') end
      table.insert(out, att)
      table.insert(out, tok)
    else
      dropped = dropped + 1
    end
  end
  -- More waiting: wake another blocked worker (a chain, not a herd).
  if redis.call('ZCARD', KEYS[1]) > 0 then redis.call('ZADD', KEYS[6], '0', 'w') end
end
out[5] = dropped

-- When nothing started (the worker will block): when the next scheduled
-- thing happens, a due time or a lease expiry.
if #out == 5 then
  local next = -1
  for _, z in ipairs({KEYS[2], KEYS[3], KEYS[4]}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local s = tonumber(first[2])
      if next < 0 or s < next then next = s end
    end
  end
  if next >= 0 then
    out[2] = math.max(0, next - now)
  end
end
return out
