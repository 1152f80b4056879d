-- Sets or removes a task's rate limit (Broker::set_rate_limit), and brings the messages that
-- reserve deferred under the old limit back, as they may be due far ahead at its pace (see
-- reserve.lua and `broker/task_rate.rs`). The first call (ARGV[3] `set` or `del`) changes the
-- limit, drops the bucket and the defer cursor (a fresh start), and moves the task's index of
-- deferred messages to its draining set, atomically; messages deferred from then on are
-- indexed afresh, under the new limit. Each call, the first included, then moves up to
-- ARGV[4] ids of the draining set that are still waiting for their deferral in their delayed
-- set (same due time as indexed) back to their places in the ready set (their `score`);
-- stale ids (a message revoked, purged, expired, leased or booked since) are only dropped.
-- The caller repeats with `drain` until it returns 0.
--
-- KEYS[1]  `task-rates`
-- KEYS[2]  the task's bucket `task-rate:<task>`
-- KEYS[3]  its defer cursor `task-rate-defer:<task>`
-- KEYS[4]  its index of deferred messages `task-rate-deferred:<task>` (zset, id -> due ms)
-- KEYS[5]  its draining set `task-rate-undefer:<task>` (the same, being moved back)
-- ARGV[1]  key prefix; ARGV[2] the task (`component.task`); ARGV[3] `set`, `del` or `drain`;
-- ARGV[4]  most ids moved per call; ARGV[5] the rate (`<count>/<per_ms>`, with `set`)
--
-- Returns the ids left in the draining set.
local prefix, task, mode = ARGV[1], ARGV[2], ARGV[3]
local chunk = tonumber(ARGV[4])

if mode ~= 'drain' then
  if mode == 'set' then
    redis.call('HSET', KEYS[1], task, ARGV[5])
  else
    redis.call('HDEL', KEYS[1], task)
  end
  redis.call('DEL', KEYS[2], KEYS[3])
  if redis.call('EXISTS', KEYS[4]) == 1 then
    if redis.call('EXISTS', KEYS[5]) == 1 then
      -- An earlier change's drain was cut short: finish both.
      redis.call('ZUNIONSTORE', KEYS[5], 2, KEYS[5], KEYS[4])
      redis.call('DEL', KEYS[4])
    else
      redis.call('RENAME', KEYS[4], KEYS[5])
    end
  end
end

local entries = redis.call('ZRANGE', KEYS[5], 0, chunk - 1, 'WITHSCORES')
local woken = {}
for i = 1, #entries, 2 do
  local id, due = entries[i], tonumber(entries[i + 1])
  local f = redis.call('HMGET', prefix .. 'task:' .. id, 'queue', 'score')
  if f[1] and f[2] then
    local delayed = prefix .. 'delayed:' .. f[1]
    if tonumber(redis.call('ZSCORE', delayed, id)) == due then
      redis.call('ZREM', delayed, id)
      redis.call('ZADD', prefix .. 'ready:' .. f[1], f[2], id)
      woken[f[1]] = true
    end
  end
end
if #entries > 0 then
  -- By rank, not by id: a chunk's ids are more than one call may unpack.
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, #entries / 2 - 1)
end
for queue in pairs(woken) do
  redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
end
return redis.call('ZCARD', KEYS[5])
