-- Revokes one token id until the token expires.
--
-- KEYS[1]  the token's revocation key (prefix:jti:<jti>)
-- ARGV[1]  when the record may go: the token's exp (+ leeway), Unix milliseconds
-- ARGV[2]  a random id of this call, stored as the record's value, so that
--          this call run a second time (fred resends a command whose reply
--          was lost after the server ran it) finds its own record and still
--          answers 1
--
-- Returns an integer:
--   0  nothing written: ARGV[1] is already past by the server's clock (the
--      token has expired, there is nothing left to revoke)
--   1  revoked now (new record, or an existing one extended to ARGV[1]; also
--      this call's second run finding the record its first run wrote)
--   2  already revoked until ARGV[1] or later (left as it was)
--
-- The record's expiry is only ever moved later, never earlier.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(ARGV[1])
if until_ms == nil then
  return redis.error_reply('revoke_jti: ARGV[1] must be Unix milliseconds')
end
if until_ms <= now then
  return 0
end
local current = redis.call('PEXPIRETIME', KEYS[1])
if current >= until_ms then
  if current == until_ms and redis.call('GET', KEYS[1]) == ARGV[2] then
    return 1
  end
  return 2
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', string.format('%d', until_ms))
return 1
