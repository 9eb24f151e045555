-- GCRA (generic cell rate algorithm, a token bucket kept as one timestamp):
-- checks N limits of one identity at once and consumes from all or none.
--
-- KEYS[i]     limit i's theoretical arrival time (TAT): an integer string of
--             server-clock microseconds; absent means idle (full burst).
-- ARGV[1]     cost (integer >= 0; 0 reports the state and writes nothing)
-- ARGV[2i]    limit i's emission interval in microseconds (period / rate)
-- ARGV[2i+1]  limit i's burst (integer >= 1): the most cost admitted at once
--
-- Returns with one key: an integer (see the one-limit branch below);
--         with several: {allowed (1 or 0), then for each limit i:
--         remaining, reset_after_us, retry_after_us (0 when not blocking)}
-- A denied request writes nothing; every written key expires when its TAT
-- is reached (after at most burst * emission interval).
-- Repair: a request that writes nothing (denied, or cost 0) checks the TTL
-- of a key it found; a key without one (PERSIST, or written by something
-- else) is capped at the most an admitted request can leave in it
-- (now + burst * emission interval) and given the TTL it would have had, so
-- it can never deny for ever. A value that is not a number (or is NaN)
-- counts as idle and is overwritten by the next admitted request.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])

-- The TAT stored in key k, at least now; nil when absent.
local function read(k)
  local raw = redis.call('GET', k)
  if not raw then return nil end
  local tat = tonumber(raw)
  if tat == nil or tat ~= tat or tat < now then tat = now end
  return tat
end

-- Gives key k (found holding tat) a TTL if it has none; returns the TAT it
-- holds afterwards.
local function repair(k, tat, tol)
  if redis.call('PTTL', k) ~= -1 then return tat end
  if tat > now + tol then tat = now + tol end
  if tat > now then
    redis.call('SET', k, tat, 'PX', math.ceil((tat - now) / 1000))
  else
    redis.call('DEL', k)
  end
  return tat
end
if #KEYS == 1 then
  -- One limit, the common case: three redis.call, no tables, and a single
  -- integer reply (the caller derives the rest from its own arguments):
  --   d >= 0   allowed; d = TAT - now after the request, in µs
  --   d < 0    denied;  -d - 1 = TAT - now, in µs (nothing written)
  local ei = tonumber(ARGV[2])
  local tol = ei * tonumber(ARGV[3])
  local found = read(KEYS[1])
  local tat = found or now
  if cost > 0 and tat + ei * cost - tol <= now then
    local n = tat + ei * cost
    redis.call('SET', KEYS[1], n, 'PX', math.ceil((n - now) / 1000))
    return n - now
  end
  if found then tat = repair(KEYS[1], tat, tol) end
  if cost > 0 then return now - tat - 1 end
  return tat - now
end
local out = {1}
local tats = {}
local found = {}
local allowed = true
for i = 1, #KEYS do
  local ei = tonumber(ARGV[2 * i])
  local tol = ei * tonumber(ARGV[2 * i + 1])
  found[i] = read(KEYS[i])
  tats[i] = found[i] or now
  if cost > 0 and tats[i] + ei * cost - tol > now then allowed = false end
end
for i = 1, #KEYS do
  local ei = tonumber(ARGV[2 * i])
  local tol = ei * tonumber(ARGV[2 * i + 1])
  -- Capping a key without a TTL lowers its TAT to now + tol at most, which
  -- still denies any cost > 0: the decision above stands.
  if found[i] and not (allowed and cost > 0) then
    tats[i] = repair(KEYS[i], tats[i], tol)
  end
  local tat = tats[i]
  local j = 3 * i - 1
  local wait = tat + ei * cost - tol - now
  out[j] = math.floor((tol - tat + now) / ei)
  out[j + 1] = tat - now
  out[j + 2] = 0
  if cost > 0 and wait > 0 then
    out[1] = 0
    out[j + 2] = wait
  end
end
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    local ei = tonumber(ARGV[2 * i])
    local n = tats[i] + ei * cost
    local j = 3 * i - 1
    redis.call('SET', KEYS[i], n, 'PX', math.ceil((n - now) / 1000))
    out[j] = math.floor((ei * tonumber(ARGV[2 * i + 1]) - n + now) / ei)
    out[j + 1] = n - now
  end
end
return out
