-- fredkit-flags: write (set, update or delete) one flag with compare-and-set
-- on its revision, bump the namespace version, append to the audit stream
-- and publish the change, atomically. All keys share one hash tag; the
-- channel too (SPUBLISH on a cluster needs it in the keys' slot).
--
-- KEYS[1] the flags hash (field = flag name, value = record JSON)
-- KEYS[2] the namespace version counter (string, INCR)
-- KEYS[3] the audit stream
-- ARGV[1] op: 'set' (create or replace), 'update' (must exist), 'delete' (must exist)
-- ARGV[2] flag name
-- ARGV[3] expected revision: '' = any, '0' = must be absent, n = must be n
-- ARGV[4] write id (hex): a retried EVALSHA of the same write finds its own
--         record and answers ok instead of a conflict
-- ARGV[5] definition JSON (set/update; '' for delete)
-- ARGV[6] expiry: 'keep' (the stored one), 'never', or milliseconds from now
-- ARGV[7] author as a JSON string (with its quotes)
-- ARGV[8] audit stream MAXLEN (approximate)
-- ARGV[9] change channel
-- ARGV[10] '1' = SPUBLISH, '0' = PUBLISH
--
-- Returns {status, namespace version, new revision, current revision}:
--   {'ok', v, rev, rev}            written (or found already written by this write id)
--   {'conflict', 0, 0, cur}        expected revision differs (cur = -1: malformed record, 0: absent)
--   {'missing', 0, 0, 0}           update/delete of an absent flag
-- The record is '{"rev":N,"wid":"..","expires_at":N|null,"updated_at":N,"by":"..","def":{..}}'
-- with the first three fields in this order: they are read back by position.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[1], ARGV[2])
local rev, wid, exp = 0, nil, 'null'
if cur then
  local r, w, e = string.match(cur, '^{"rev":(%d+),"wid":"(%w*)","expires_at":(%w+),')
  if r then
    rev = tonumber(r)
    wid = w
    exp = e
  else
    rev = -1
  end
end
if cur and wid == ARGV[4] then
  return {'ok', tonumber(redis.call('GET', KEYS[2]) or '0'), rev, rev}
end
if ARGV[1] ~= 'set' and not cur then
  return {'missing', 0, 0, 0}
end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= rev then
  return {'conflict', 0, 0, rev}
end
local version = redis.call('INCR', KEYS[2])
local new = ''
local newrev = 0
if ARGV[1] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  if rev > 0 then newrev = rev + 1 else newrev = 1 end
  local e = exp
  if ARGV[6] == 'never' then
    e = 'null'
  elseif ARGV[6] ~= 'keep' then
    e = string.format('%d', now + tonumber(ARGV[6]))
  end
  new = '{"rev":' .. string.format('%d', newrev) .. ',"wid":"' .. ARGV[4] .. '","expires_at":' .. e ..
    ',"updated_at":' .. string.format('%d', now) .. ',"by":' .. ARGV[7] .. ',"def":' .. ARGV[5] .. '}'
  redis.call('HSET', KEYS[1], ARGV[2], new)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  'op', ARGV[1], 'flag', ARGV[2], 'by', ARGV[7], 'at', string.format('%d', now),
  'version', string.format('%d', version), 'old', cur or '', 'new', new)
local msg = string.format('%d', version) .. '\n' .. ARGV[2] .. '\n' .. new
if ARGV[10] == '1' then
  redis.call('SPUBLISH', ARGV[9], msg)
else
  redis.call('PUBLISH', ARGV[9], msg)
end
return {'ok', version, newrev, newrev}
