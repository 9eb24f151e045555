-- Fails on purpose with the given message.
-- KEYS: none
-- ARGV[1]: the error message
-- Returns: an error reply carrying ARGV[1]
return redis.error_reply(ARGV[1])
