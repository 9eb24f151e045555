-- Sliding log: exact. One sorted-set member per unit of cost, scored by the
-- server time (microseconds) it was admitted at; a member counts for one
-- window after that. Checks N limits of one identity at once and consumes
-- from all or none.
--
-- KEYS[i]     limit i's sorted set
-- ARGV[1]     cost (integer >= 0; 0 reports the state and adds nothing)
-- ARGV[2i]    limit i's quota per window
-- ARGV[2i+1]  limit i's window in microseconds
--
-- Returns {allowed (1 or 0), then for each limit i:
--          remaining, reset_after_us, retry_after_us (0 when not blocking)}
--
-- Members are "<time>.<n>" where n runs on from the number of members the
-- set holds. Time is clamped to the newest member's score, so it never goes
-- backwards for a key; at one time the count only grows (the trim at that
-- time removes the same members every time), so every member is unique,
-- even for many requests in one microsecond and for cost > 1.
-- A denied request only trims members that have left the window (and
-- gives a set found without a TTL one window, so it cannot deny for ever).
-- Waits count from the server's now, also when the clock went back behind
-- the newest member (a failover to a server whose clock is behind): a
-- member scored m stops counting once now >= m + window.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local out = {1}
local counts = {}
local times = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local quota = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local tn = now
  local newest = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  local last = tonumber(newest[2])
  if last and last > tn then tn = last end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', tn - win)
  local c = redis.call('ZCARD', k)
  counts[i] = c
  times[i] = tn
  local j = 3 * i - 1
  out[j] = quota - c
  out[j + 1] = 0
  if c > 0 then out[j + 1] = last + win - now end
  out[j + 2] = 0
  if cost > 0 and c + cost > quota then
    out[1] = 0
    local r = c + cost - quota - 1
    local m = redis.call('ZRANGE', k, r, r, 'WITHSCORES')
    out[j + 2] = tonumber(m[2]) + win - now
  end
end
if not (out[1] == 1 and cost > 0) then
  -- Nothing written: a set found without a TTL gets one window; waits and
  -- resets are bounded by the set's expiry (members scored in the far
  -- future, written by something else, go with it).
  for i = 1, #KEYS do
    local k = KEYS[i]
    if counts[i] > 0 then
      local p = redis.call('PTTL', k)
      if p == -1 then
        local px = math.ceil(tonumber(ARGV[2 * i + 1]) / 1000)
        redis.call('PEXPIRE', k, px)
        p = px
      end
      if p >= 0 then
        local gone = (p + 1) * 1000
        local j = 3 * i - 1
        if out[j + 1] > gone then out[j + 1] = gone end
        if out[j + 2] > gone then out[j + 2] = gone end
      end
    end
  end
end
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    local k = KEYS[i]
    local win = tonumber(ARGV[2 * i + 1])
    local tn = times[i]
    local c = counts[i]
    local n = 1
    while n <= cost do
      local args = {}
      local upto = math.min(cost, n + 499)
      for m = n, upto do
        args[#args + 1] = tn
        args[#args + 1] = string.format('%d.%d', tn, c + m)
      end
      redis.call('ZADD', k, unpack(args))
      n = upto + 1
    end
    redis.call('PEXPIRE', k, math.ceil(win / 1000))
    local j = 3 * i - 1
    out[j] = out[j] - cost
    out[j + 1] = tn + win - now
  end
end
return out
