-- Stores an entry's last handled tick, fenced by the beat lease (Schedules::record_fired):
-- a leader whose lease expired or was taken over writes nothing.
--
-- KEYS[1]  `beat-leader`; KEYS[2] `schedule-fired`
-- ARGV[1]  the tenure's lease value `<token>:<holder>`; ARGV[2] entry name; ARGV[3] `Fired` JSON
--
-- Returns 1 when written, 0 when the tenure no longer holds the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
