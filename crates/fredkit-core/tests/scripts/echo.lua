-- Returns its argument, touching no key (routed to a random node on a cluster).
-- KEYS: none
-- ARGV[1]: any string
-- Returns: bulk string, ARGV[1]
return ARGV[1]
