-- Removes up to `batch` waiting messages of one queue (Broker::purge), ready ones first, then
-- delayed ones; their tasks become REVOKED (kind `purged`), each a task event. The caller
-- repeats until a call removes fewer than `batch`, so that no single call blocks Redis for
-- long.
--
-- KEYS[1]  `ready:<queue>`; KEYS[2] `delayed:<queue>`
-- ARGV[1]  key prefix; ARGV[2] now (ms); ARGV[3] batch; ARGV[4] the `purged` error JSON
--
-- Returns how many messages it removed.
local prefix, now_ms = ARGV[1], ARGV[2]
local batch = tonumber(ARGV[3])
local removed = 0
for k = 1, 2 do
  if removed < batch then
    local ids = redis.call('ZRANGE', KEYS[k], 0, batch - removed - 1)
    for _, id in ipairs(ids) do
      local key = prefix .. 'task:' .. id
      local ttl = redis.call('HGET', key, 'result_ttl')
      if ttl then
        redis.call('HSET', key, 'state', 'REVOKED', 'error', ARGV[4], 'finished', now_ms)
        redis.call('PEXPIRE', key, record_ttl(ttl))
        redis.call('PUBLISH', prefix .. 'done:' .. id, 'REVOKED')
        event(prefix, id, 'REVOKED', now_ms)
        flow_check(prefix, id, 'REVOKED', ARGV[4], tonumber(now_ms))
      end
    end
    if #ids > 0 then
      redis.call('ZREM', KEYS[k], unpack(ids))
    end
    removed = removed + #ids
  end
end
flow_wake(prefix)
return removed
