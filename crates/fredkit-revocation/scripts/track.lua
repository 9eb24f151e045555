-- Tracks one token of a subject for session listing, trimming expired ones.
--
-- KEYS[1]  the subject's tracking set (sorted set: member jti, score exp in Unix ms)
-- ARGV[1]  the token id (jti)
-- ARGV[2]  the token's exp (+ leeway), Unix milliseconds
--
-- Returns the number of live (unexpired) tokens tracked after this call.
--
-- Every call removes members whose exp has passed (server clock) and sets the
-- set's expiry to its latest member's exp, so the set never outlives its
-- tokens and never grows with dead ones. A token already expired is not added.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = tonumber(ARGV[2])
if exp == nil then
  return redis.error_reply('track: ARGV[2] must be Unix milliseconds')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if exp > now then
  redis.call('ZADD', KEYS[1], string.format('%d', exp), ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  return 0
end
redis.call('PEXPIREAT', KEYS[1], last[2])
return redis.call('ZCARD', KEYS[1])
