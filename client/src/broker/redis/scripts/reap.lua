-- Reclaims up to `limit` expired leases (Broker::reap): each message returns to its ready
-- place, or is dead-lettered when its attempt was already delivered `max_deliveries` times.
-- Each is a task event: PENDING, or FAILURE.
--
-- KEYS[1]  `leases`; KEYS[2] `dead`; KEYS[3] `terminating`; KEYS[4] the `seq` counter
-- ARGV[1]  key prefix; ARGV[2] now (ms); ARGV[3] limit
--
-- Returns how many leases it reclaimed.
local prefix, now_ms = ARGV[1], ARGV[2]
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[3])
if #expired == 0 then
  return 0
end
local buried = {}
local woken = {}
for _, id in ipairs(expired) do
  local key = prefix .. 'task:' .. id
  local f = redis.call('HMGET', key, 'deliveries', 'max_deliveries', 'queue', 'score', 'token')
  -- Only a lease still held (a token set) is reclaimed; an id left in `leases` by a settled,
  -- revoked or released task is just dropped from it.
  if f[3] and f[5] and f[5] ~= '' then
    local deliveries, max = f[1] or '0', f[2] or '0'
    if tonumber(deliveries) >= tonumber(max) then
      redis.call('HSET', key, 'state', 'FAILURE', 'finished', now_ms, 'token', '', 'error',
        '{"kind":"dead_lettered","message":"delivered ' .. deliveries ..
        ' times without finishing (max_deliveries ' .. max .. ')"}')
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
      redis.call('PUBLISH', prefix .. 'done:' .. id, 'FAILURE')
      event(prefix, id, 'FAILURE', now_ms)
      flow_check(prefix, id, 'FAILURE', redis.call('HGET', key, 'error'), tonumber(now_ms))
      buried[#buried + 1] = id
    else
      redis.call('HSET', key, 'state', 'PENDING', 'token', '')
      redis.call('ZADD', prefix .. 'ready:' .. f[3], f[4], id)
      woken[f[3]] = true
      event(prefix, id, 'PENDING', now_ms)
    end
  end
end
redis.call('ZREM', KEYS[1], unpack(expired))
if #buried > 0 then
  redis.call('SREM', KEYS[3], unpack(buried))
end
for queue in pairs(woken) do
  flow_woken[queue] = true
end
flow_wake(prefix)
return #expired
