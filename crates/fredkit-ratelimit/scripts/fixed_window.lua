-- Fixed window: a counter per limit that expires when its window ends. The
-- window starts with the first request after the previous one ended, and
-- Redis's own expiry (the server clock) ends it. Checks N limits of one
-- identity at once and consumes from all or none.
--
-- KEYS[i]     limit i's counter (integer string) with a TTL
-- ARGV[1]     cost (integer >= 0; 0 reports the state and writes nothing)
-- ARGV[2i]    limit i's quota per window
-- ARGV[2i+1]  limit i's window in milliseconds (>= 1)
--
-- Returns {allowed (1 or 0), then for each limit i:
--          remaining, reset_after_us, retry_after_us (0 when not blocking)}
-- A denied request writes nothing (except giving a counter that somehow
-- lost its TTL one again). A counter that is not a whole number >= 0 (so
-- INCRBY could fail on it, or it would grant extra) counts as 0 and is
-- overwritten by the next admitted request.
-- Redis expires a key once the clock is strictly past its expiry
-- millisecond, so a counter whose PTTL is p is gone after p + 1 ms: that is
-- the reset reported. A new counter gets PX window - 1, so it is gone
-- exactly `window` ms after the start of the current millisecond (a 1 ms
-- window: 2 ms, as Redis has no PX 0; tests/ratelimit/model.rs).
local cost = tonumber(ARGV[1])
local out = {1}
local used = {}
for i = 1, #KEYS do
  local quota = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local u = tonumber(redis.call('GET', KEYS[i]))
  if not (u and u >= 0 and u < 9007199254740992 and u == math.floor(u)) then u = 0 end
  local reset = 0
  if u > 0 then
    local p = redis.call('PTTL', KEYS[i])
    if p < 0 then
      redis.call('PEXPIRE', KEYS[i], win)
      p = win
    end
    reset = (p + 1) * 1000
  end
  used[i] = u
  local j = 3 * i - 1
  out[j] = quota - u
  out[j + 1] = reset
  out[j + 2] = 0
  if cost > 0 and u + cost > quota then
    out[1] = 0
    out[j + 2] = reset
  end
end
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    local j = 3 * i - 1
    if used[i] == 0 then
      local win = tonumber(ARGV[2 * i + 1])
      local px = win - 1
      if px < 1 then px = 1 end
      redis.call('SET', KEYS[i], cost, 'PX', px)
      out[j + 1] = (px + 1) * 1000
    else
      redis.call('INCRBY', KEYS[i], cost)
    end
    out[j] = out[j] - cost
  end
end
return out
