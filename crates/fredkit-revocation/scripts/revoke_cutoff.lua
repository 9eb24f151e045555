-- Moves a subject's or organisation's "not before" cut-off forward (never back).
-- Tokens of that subject/organisation with iat <= cut-off (Unix seconds) are revoked.
--
-- KEYS[1]  the cut-off key (prefix:sub:<sub> or prefix:org:<org>)
-- ARGV[1]  the cut-off in Unix seconds, or "now" for the server's current second
-- ARGV[2]  how long after the cut-off the record must live, in milliseconds:
--          the longest token lifetime (+ leeway); tokens issued at or before the
--          cut-off have all expired by cut-off + ARGV[2]
--
-- Returns {cut, status}:
--   cut     the cut-off now in force (the later of the stored and the given one)
--   status  0  nothing written: every token it could cover has already expired
--           1  the cut-off was raised (or created)
--           2  an equal or later cut-off was already in force (its expiry may
--              have been extended if ARGV[2] grew)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cut
if ARGV[1] == 'now' then
  cut = tonumber(t[1])
else
  cut = tonumber(ARGV[1])
end
local keep = tonumber(ARGV[2])
if cut == nil or keep == nil then
  return redis.error_reply('revoke_cutoff: ARGV[1] must be Unix seconds or "now", ARGV[2] milliseconds')
end
-- A value that is not a number is not a cut-off we wrote: replace it.
local current = tonumber(redis.call('GET', KEYS[1]) or '')
local status = 1
if current ~= nil and current >= cut then
  cut = current
  status = 2
end
local expire_at = cut * 1000 + keep
if expire_at <= now then
  return {cut, 0}
end
local current_expiry = redis.call('PEXPIRETIME', KEYS[1])
if current_expiry > expire_at then
  expire_at = current_expiry
end
redis.call('SET', KEYS[1], string.format('%d', cut), 'PXAT', string.format('%d', expire_at))
return {cut, status}
