-- Queues dead-lettered tasks again as a fresh attempt (Broker::retry_dead): state PENDING,
-- delivery count 0, at their original ready place; each a PENDING task event.
--
-- KEYS[1]  `dead`
-- ARGV[1]  key prefix; ARGV[2] one id, or '' for up to `batch` of them; ARGV[3] batch;
-- ARGV[4]  now (ms)
--
-- Returns { ids taken out of `dead`, tasks queued again }. The caller repeats a '' call
-- while the first number equals the batch.
local prefix = ARGV[1]
local ids
if ARGV[2] ~= '' then
  if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
    return { 0, 0 }
  end
  ids = { ARGV[2] }
else
  ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
  if #ids == 0 then
    return { 0, 0 }
  end
end
local queued = 0
local woken = {}
for _, id in ipairs(ids) do
  local key = prefix .. 'task:' .. id
  local f = redis.call('HMGET', key, 'queue', 'score', 'attempt')
  if f[1] and f[2] then
    redis.call('HSET', key, 'state', 'PENDING', 'deliveries', 0,
      'attempt', (tonumber(f[3]) or 1) + 1)
    redis.call('HDEL', key, 'error', 'finished', 'progress', 'token')
    redis.call('ZADD', prefix .. 'ready:' .. f[1], f[2], id)
    woken[f[1]] = true
    queued = queued + 1
    event(prefix, id, 'PENDING', ARGV[4])
  end
end
redis.call('ZREM', KEYS[1], unpack(ids))
for queue in pairs(woken) do
  redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
end
return { #ids, queued }
