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
-- counters only removes over-estimation.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local out = {1}
local st = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local quota = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', k, 's', 'c', 'p')
  local s = tonumber(h[1])
  local c = tonumber(h[2]) or 0
  local p = tonumber(h[3]) or 0
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
  if c > 0 then reset = s + 2 * win - now elseif p > 0 then reset = s + win - now end
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
      wait = (s + win + at) - now
    end
    wait = math.ceil(wait)
    local ttl = redis.call('PTTL', k)
    if ttl >= 0 and (ttl + 1) * 1000 < wait then wait = (ttl + 1) * 1000 end
    if wait < 1 then wait = 1 end
    out[j + 2] = wait
  end
  if reset > win then reset = win end
  out[j + 1] = math.ceil(reset)
end
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    local k = KEYS[i]
    local win = tonumber(ARGV[2 * i + 1])
    local s, c, p = st[i][1], st[i][2], st[i][3]
    redis.call('HSET', k, 's', s, 'c', c + cost, 'p', p)
    redis.call('PEXPIRE', k, math.ceil(win / 1000))
    local j = 3 * i - 1
    out[j] = out[j] - cost
    local reset = s + 2 * win - now
    if reset > win then reset = win end
    out[j + 1] = math.ceil(reset)
  end
end
return out
