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
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
if #KEYS == 1 then
  -- One limit, the common case: three redis.call, no tables, and a single
  -- integer reply (the caller derives the rest from its own arguments):
  --   d >= 0   allowed; d = TAT - now after the request, in µs
  --   d < 0    denied;  -d - 1 = TAT - now, in µs (nothing written)
  local ei = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1])) or now
  if tat < now then tat = now end
  local n = tat + ei * cost
  if cost > 0 and n - ei * tonumber(ARGV[3]) > now then
    return now - tat - 1
  end
  if cost > 0 then
    redis.call('SET', KEYS[1], n, 'PX', math.ceil((n - now) / 1000))
  end
  return n - now
end
local out = {1}
local tats = {}
for i = 1, #KEYS do
  local ei = tonumber(ARGV[2 * i])
  local tol = ei * tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
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
