-- fredkit-lock: take a lock and draw its fencing token, atomically and
-- all-or-nothing.
--
-- KEYS[1]  the lock key      <prefix>:{resource}:lock   (value: holder token, PX ttl)
-- KEYS[2]  the fence counter <prefix>:{resource}:fence  (the last token granted; no TTL,
--          see the crate docs)
-- ARGV[1]  the holder's random token (hex digits)
-- ARGV[2]  the TTL in milliseconds (> 0)
-- ARGV[3]  '0' a single try; '1' a waiting caller's first try; '2' a waiting
--          caller's retry.
--
-- All or nothing: a free lock is taken and a held one read in the same call
-- (SET NX PX GET, Redis >= 7.0: one call instead of GET then SET); the
-- counter is checked next, and a corrupt counter deletes the lock this run
-- just took before it reports, so a try that fails leaves nothing behind
-- (scripts run atomically: nobody sees the lock in between). The writes
-- after the first cannot fail (a script that has written is exempt from OOM
-- refusals). An uncontended grant is 4 calls: SET, GET, TIME, SET.
--
-- Fencing token = max(counter + 1, server time in microseconds), stored back
-- as the counter. The counter alone makes tokens strictly increase on one
-- server; the clock makes them increase across a lost or lagging counter (a
-- restart without persistence, an eviction, a deleted key, a failover to a
-- replica that missed the last grants): such a grant takes place later in
-- real time than every grant it could have lost, so its clock reading is
-- above their tokens, as long as the servers' clocks agree to within that
-- time (see the crate docs). Tokens stay below 2^53 until the year 2255.
--
-- Waiters are recorded on the lock itself: a waiting caller that finds the
-- lock held appends '+' to the holder's value (the TTL is kept), and the
-- holder's release then publishes a wake-up. A retry that wins takes the
-- lock already marked, since other waiters may still be asleep. An
-- uncontended lock is never marked, so its release publishes nothing.
--
-- Replays: fred sends a command again when its connection closed while it
-- was in flight, so this script may run twice for one try. A lock already
-- held with the caller's own token is that same grant: its fencing token is
-- the counter's current value (no grant can have happened since: that would
-- have needed the caller's key gone). A counter lost in between draws a new
-- token (the first one never reached the caller); a counter found corrupt
-- deletes the caller's own lock (wakes its waiters) so it blocks nobody.
--
-- Returns:
--   an integer >= 1   granted; the value is the fencing token
--   an integer <= -1  held by someone else; -1 - value is the lock's remaining TTL in ms
--   {'corrupt', key, problem, fix}  a key holds what this script never writes
--                     (wrong type, not a number, a lock without expiry);
--                     nothing was written
local function corrupt(key, problem, fix)
  return {'corrupt', key, problem, fix}
end

local function kind(key)
  return 'a ' .. redis.call('TYPE', key)['ok'] .. ', not a string'
end

-- One call takes a free lock and reads a held one: SET NX GET (Redis >= 7.0)
-- answers the value it found (and sets nothing) or nil (it set ours).
local value = ARGV[1]
if ARGV[3] == '2' then value = value .. '+' end
local held = redis.pcall('SET', KEYS[1], value, 'NX', 'PX', ARGV[2], 'GET')
if type(held) == 'table' then
  if held['err'] and string.find(held['err'], 'WRONGTYPE', 1, true) then
    return corrupt(KEYS[1], 'is ' .. kind(KEYS[1]),
      'Delete it: it is not a lock fredkit-lock wrote, and no lock on this resource can be taken while it is there.')
  end
  -- Anything else (OOM refusal, ...): nothing was written; report it.
  return redis.error_reply(held['err'] or 'SET failed')
end
local took = not held
local mine = held == ARGV[1] or held == ARGV[1] .. '+'

if held and not mine then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl < 0 then
    return corrupt(KEYS[1], 'has no expiry',
      'fredkit-lock always sets one; delete the key (or give it a TTL), or no lock on this resource can ever be taken.')
  end
  if ARGV[3] ~= '0' and string.sub(held, -1) ~= '+' then
    redis.call('APPEND', KEYS[1], '+')
  end
  return -1 - pttl
end

-- The counter: missing (0), or the last token as decimal digits below 2^53.
local last = 0
local raw = redis.pcall('GET', KEYS[2])
local problem
if type(raw) == 'table' then
  problem = 'is ' .. kind(KEYS[2])
elseif raw then
  if #raw <= 16 and string.match(raw, '^%d+$') and tonumber(raw) < 9007199254740992 then
    last = tonumber(raw)
  else
    problem = 'holds ' .. string.format('%q', string.sub(raw, 1, 24)) ..
      ', not a fencing counter (decimal digits below 2^53)'
  end
end
if problem then
  if took then
    -- Taken a moment ago by this very run: undo it (nothing is left).
    redis.call('DEL', KEYS[1])
  elseif mine then
    -- The caller's own grant from a run whose reply was lost: take it back.
    redis.call('DEL', KEYS[1])
    if held ~= ARGV[1] then
      redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':wake', KEYS[1])
    end
  end
  return corrupt(KEYS[2], problem,
    'Set it to the last fencing token handed out for this resource, or delete it (the next grant then draws its token from the server clock, above every earlier one).')
end

if mine and last > 0 then
  return last
end

local t = redis.call('TIME')
local token = math.max(last + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[2], string.format('%.0f', token))
return token
