-- fredkit-session: load a session and slide its expiry, in one step.
--
-- KEYS[1]  the session   <prefix>:{tag}:s:<handle>  (a hash: '~c' created ms
--          (server clock), '~u' user, '~d' device, '.<name>' values,
--          '#<name>' counters)
-- KEYS[2]  the tag's cut-offs  <prefix>:{tag}:cut  (a hash: user -> ms)
-- ARGV[1]  idle TTL in ms (> 0): the sliding expiry set on a live session
-- ARGV[2]  absolute lifetime in ms (> 0): a session older than this is dead
--
-- Returns: {1, {field, value, ...}}  found (its expiry is now ARGV[1] ms)
--          {0}   no such session, or past its absolute lifetime (removed)
--          {-1}  garbage under the key (not a hash, no creation time): removed
--          {-2}  revoked: created at or before its user's cut-off (removed)
-- Never writes a field: the touch is one PEXPIRE.
local key = KEYS[1]
local all = redis.pcall('HGETALL', key)
if type(all) == 'table' and all['err'] then
  redis.call('UNLINK', key)
  return {-1}
end
if #all == 0 then return {0} end
local created, user
for i = 1, #all, 2 do
  local f = all[i]
  if f == '~c' then created = all[i + 1] elseif f == '~u' then user = all[i + 1] end
end
created = tonumber(created)
if not created then
  redis.call('UNLINK', key)
  return {-1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - created >= tonumber(ARGV[2]) then
  redis.call('UNLINK', key)
  return {0}
end
if user then
  local cut = tonumber(redis.call('HGET', KEYS[2], user))
  if cut and created <= cut then
    redis.call('UNLINK', key)
    return {-2}
  end
end
redis.call('PEXPIRE', key, ARGV[1])
return {1, all}
