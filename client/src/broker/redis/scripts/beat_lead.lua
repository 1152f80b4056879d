-- Takes or renews the beat lease (Schedules::lead). The lease is `<token>:<holder>` with a
-- PX expiry; the token comes from the `beat-fence` counter, so every tenure has its own.
--
-- KEYS[1]  `beat-leader`; KEYS[2] `beat-fence`
-- ARGV[1]  holder; ARGV[2] lease (ms); ARGV[3] the token this holder holds ('' none)
--
-- Returns the tenure's token, or 0 while another tenure holds the lease.
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[3] ~= '' and current == ARGV[3] .. ':' .. ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(ARGV[3])
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
