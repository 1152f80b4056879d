-- Gives the beat lease up if this tenure still holds it (Schedules::resign).
--
-- KEYS[1]  `beat-leader`
-- ARGV[1]  the tenure's lease value `<token>:<holder>`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
