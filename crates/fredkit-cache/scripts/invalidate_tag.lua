-- invalidate_tag: move a tag to its next version, so that every entry written
-- under an older version of it is a miss (entries carry the versions of their
-- tags; readers compare them lazily). O(1) whatever the number of entries.
--
-- KEYS[1]  the tag's version key (prefix:tag:{tag})
-- ARGV[1]  the longest physical life of a tagged entry, in milliseconds: the
--          version key lives at least that long past its last change, so no
--          entry written under an older version outlives it (an absent key
--          reads as version 0, the version of a never-invalidated tag)
--
-- Returns the tag's new version (an integer >= 1).
local v = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return v
