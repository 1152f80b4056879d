-- Replaces a registry record if it is still the one the caller read (compare and set): the
-- caller computes the new record (JSON, in Rust) and retries with the current one on a
-- conflict. The blob is stored before, with SET NX, so a record never names a missing blob.
--
-- KEYS[1]  `registry`
-- ARGV[1]  component name; ARGV[2] the record JSON the caller read ('' none); ARGV[3] new JSON
--
-- Returns { 1, new } when written, { 0, current ('' none) } on a conflict.
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return { 0, current }
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return { 1, ARGV[3] }
