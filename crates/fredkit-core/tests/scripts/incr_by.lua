-- Adds to a counter and returns the new value.
-- KEYS[1]: the counter
-- ARGV[1]: the increment (integer)
-- Returns: integer, the counter after the increment
return redis.call('INCRBY', KEYS[1], ARGV[1])
