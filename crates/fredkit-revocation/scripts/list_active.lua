#!lua flags=no-writes
-- Lists a subject's tracked tokens that have not expired (server clock).
--
-- KEYS[1]  the subject's tracking set (member jti, score exp in Unix ms)
--
-- Returns a flat array {jti, exp_ms, jti, exp_ms, ...}, earliest expiry first.
-- Read-only (may run on a replica); expired members are skipped, not removed
-- (the next track call removes them).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGE', KEYS[1], '(' .. string.format('%d', now), '+inf', 'BYSCORE', 'WITHSCORES')
