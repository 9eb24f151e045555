-- Sliding window counter: approximate, two counters per limit. The count in
-- the current window plus the previous window's count weighted by the share
-- of the previous window still inside the sliding window. Windows start with
-- the first request of an idle key and follow on from there. Checks N limits
-- of one identity at once and consumes from all or none.
--
-- KEYS[i]     limit i's hash: s = start of the current window (server
--             microseconds), c = count in the current window, p = count in
--             the previous window
-- ARGV[1]     cost (integer >= 0; 0 reports the state and writes nothing)
-- ARGV[2i]    limit i's quota per window
-- ARGV[2i+1]  limit i's window in microseconds
--
-- Returns {allowed (1 or 0), then for each limit i:
--          remaining, reset_after_us, retry_after_us (0 when not blocking)}
-- The hash expires one window after the last admitted request: by then no
-- admitted request is inside the sliding window any more, so forgetting the
-- counters only removes over-estimation. reset_after and retry_after take
-- that expiry into account (rounded up to the next millisecond boundary of
-- the key's PTTL, so they are never short).
-- Repair: a request that writes nothing (denied, or cost 0) gives a hash it
-- found without a TTL one window; fields that are not numbers (or NaN,
-- infinite, negative counts) count as absent.
-- Waits are computed relative to now: absolute server times in microseconds
-- (~1.8e15) hold only quarter microseconds in a double, which would lose the
-- rounding up of a fractional wait.

-- How long until key k is gone (µs, rounded up to its next millisecond
-- boundary), nil if it does not expire. Memoised: PTTL at most once per key.
local gones = {}
local repair_index = {}
for i = 1, #KEYS do repair_index[KEYS[i]] = i end
local function expiry(k)
  if gones[k] == nil then
    local ttl = redis.call('PTTL', k)
    if ttl >= 0 then gones[k] = (ttl + 1) * 1000 else gones[k] = false end
    if ttl == -1 then
      -- Found without a TTL: give it the one a write would have.
      local win = tonumber(ARGV[2 * repair_index[k] + 1])
      local px = math.ceil(win / 1000)
      redis.call('PEXPIRE', k, px)
      gones[k] = (px + 1) * 1000
    end
  end
  return gones[k] or nil
end
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local out = {1}
local st = {}
local present = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local quota = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', k, 's', 'c', 'p')
  present[i] = h[1] or h[2] or h[3]
  local s = tonumber(h[1])
  local c = tonumber(h[2]) or 0
  local p = tonumber(h[3]) or 0
  if not (c >= 0 and c < math.huge) then c = 0 end
  if not (p >= 0 and p < math.huge) then p = 0 end
  if s and not (s > -math.huge and s < math.huge) then s = nil end
  if not s then
    s = now
    c = 0
    p = 0
  elseif now >= s + win then
    local n = math.floor((now - s) / win)
    if n == 1 then p = c else p = 0 end
    c = 0
    s = s + n * win
  end
  local e = now - s
  if e < 0 then e = 0 end
  st[i] = {s, c, p}
  local est = p * (win - e) / win + c
  local j = 3 * i - 1
  out[j] = math.floor(quota - est)
  local reset = 0
  if c > 0 then reset = (s - now) + 2 * win elseif p > 0 then reset = (s - now) + win end
  out[j + 2] = 0
  if cost > 0 and est + cost > quota then
    out[1] = 0
    local wait
    if c + cost <= quota and p > 0 and (p * (win - e) / win) > 0 then
      -- later in this window, when the previous window's weight has shrunk
      local at = win * (1 - (quota - c - cost) / p)
      wait = at - e
    else
      -- in the next window, where this window's count becomes the previous
      local at = 0
      if c > 0 and c + cost > quota then at = win * (1 - (quota - cost) / c) end
      wait = (s - now) + win + at
    end
    wait = math.ceil(wait)
    local gone = expiry(k)
    if gone and gone < wait then wait = gone end
    if wait < 1 then wait = 1 end
    out[j + 2] = wait
  end
  out[j + 1] = reset
end
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    local k = KEYS[i]
    local win = tonumber(ARGV[2 * i + 1])
    local s, c, p = st[i][1], st[i][2], st[i][3]
    local px = math.ceil(win / 1000)
    redis.call('HSET', k, 's', s, 'c', c + cost, 'p', p)
    redis.call('PEXPIRE', k, px)
    local j = 3 * i - 1
    out[j] = out[j] - cost
    local reset = (s - now) + 2 * win
    if (px + 1) * 1000 < reset then reset = (px + 1) * 1000 end
    out[j + 1] = reset
  end
else
  -- Nothing written: the reset is also bounded by the key's expiry.
  for i = 1, #KEYS do
    local j = 3 * i - 1
    if present[i] then
      local gone = expiry(KEYS[i])
      if gone and gone < out[j + 1] then out[j + 1] = gone end
    end
  end
end
return out
