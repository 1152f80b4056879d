-- Deletes up to `batch` dead-lettered tasks and their records (Broker::purge_dead). The
-- caller repeats until a call deletes fewer than `batch`.
--
-- KEYS[1]  `dead`; KEYS[2] `terminating`
-- ARGV[1]  key prefix; ARGV[2] batch
--
-- Returns how many it deleted.
local prefix = ARGV[1]
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then
  return 0
end
local keys = {}
for i, id in ipairs(ids) do
  keys[i] = prefix .. 'task:' .. id
end
redis.call('DEL', unpack(keys))
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('SREM', KEYS[2], unpack(ids))
return #ids
