-- fredkit-collections TtlMap merge, step 3 of 3 (on the source's slot):
-- delete the source once its snapshot was applied to the target.
--
-- KEYS[1]  the source map  <prefix>:{from}:map
-- ARGV[1]  the merge id (from step 1)
--
-- Deletes only a source still marked with this merge id, so a late retry can
-- never delete a newer map written under the same id after the merge.
-- Returns: 1 when deleted, 0 when there was nothing (left) to delete.
local mark = redis.pcall('HGET', KEYS[1], '~merging')
if type(mark) ~= 'string' then return 0 end
if string.sub(mark, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  redis.call('UNLINK', KEYS[1])
  return 1
end
return 0
