-- Leases up to `max` messages to a worker (Broker::reserve): first moves due delayed messages
-- of the queues to their ready sets, then pops the best ready ones, queue by queue in the
-- order given. Messages past their `expires` become REVOKED (kind `expired`) instead.
-- With a concurrency cap (`quota` field `concurrency`), it leases at most the cap minus the
-- namespace's current leases (of every worker), so the cap holds across workers. Each lease
-- is a RECEIVED task event, each expiry a REVOKED one.
--
-- KEYS[1]  the `fence` counter
-- KEYS[2]  `leases`
-- KEYS[3]  `terminating`
-- KEYS[4]  `quota`
-- ARGV[1]  key prefix; ARGV[2] worker; ARGV[3] now (ms); ARGV[4] lease expiry (ms);
-- ARGV[5]  max; ARGV[6] most delayed messages promoted per queue and call;
-- ARGV[7..] the queues
--
-- Returns { { id, token, message JSON, deliveries, attempt, terminating (0/1), ... },
--           { dropped id, ... } }: a terminate requested before this delivery (its worker died,
--           say) travels with it, so the next worker does not run a revoked task.
-- A ready id without a stored message (written by hand) is dropped and reported.
local prefix, worker = ARGV[1], ARGV[2]
local now_ms, lease_until = ARGV[3], ARGV[4]
local now = tonumber(now_ms)
local max, promote_limit = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Small counts as strings, each formatted once: Redis formats a Lua number argument with a
-- costly float conversion.
local decimals = {}
local function decimal(n)
  local text = decimals[n]
  if not text then
    text = string.format('%d', n)
    decimals[n] = text
  end
  return text
end

local function expire(key, id, expires, result_ttl)
  local err = '{"kind":"expired","message":"expired at ' .. expires .. ' ms before it started"}'
  redis.call('HSET', key, 'state', 'REVOKED', 'finished', now_ms, 'error', err)
  if result_ttl then
    redis.call('PEXPIRE', key, record_ttl(result_ttl))
  end
  redis.call('PUBLISH', prefix .. 'done:' .. id, 'REVOKED')
  event(prefix, id, 'REVOKED', now_ms)
  flow_check(prefix, id, 'REVOKED', err, now)
end

for q = 7, #ARGV do
  local queue = ARGV[q]
  local delayed = prefix .. 'delayed:' .. queue
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms, 'LIMIT', 0, promote_limit)
  if #due > 0 then
    local ready = prefix .. 'ready:' .. queue
    for _, id in ipairs(due) do
      local key = prefix .. 'task:' .. id
      local f = redis.call('HMGET', key, 'score', 'expires', 'result_ttl')
      if f[2] and tonumber(f[2]) < now then
        expire(key, id, f[2], f[3])
      elseif f[1] then
        redis.call('ZADD', ready, f[1], id)
      end
    end
    redis.call('ZREM', delayed, unpack(due))
    -- More may have become ready than this worker takes.
    redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
  end
end

-- One HGET per call when uncapped. Leases not yet reaped count: their task may still run.
local cap = redis.call('HGET', KEYS[4], 'concurrency')
if cap then
  local room = (tonumber(cap) or 0) - redis.call('ZCARD', KEYS[2])
  if room < max then
    max = room
  end
end

local chosen = {}
local dropped = {}
for q = 7, #ARGV do
  local ready = prefix .. 'ready:' .. ARGV[q]
  while #chosen < max do
    local popped = redis.call('ZPOPMIN', ready, max - #chosen)
    if #popped == 0 then
      break
    end
    for j = 1, #popped, 2 do
      local id = popped[j]
      local key = prefix .. 'task:' .. id
      local f = redis.call('HMGET', key, 'msg', 'deliveries', 'attempt', 'expires', 'result_ttl')
      if not f[1] then
        dropped[#dropped + 1] = id
      elseif f[4] and tonumber(f[4]) < now then
        expire(key, id, f[4], f[5])
      else
        chosen[#chosen + 1] = { key, id, f[1], (tonumber(f[2]) or 0) + 1, f[3] or '1' }
      end
    end
  end
end

local out = {}
if #chosen > 0 then
  -- One INCRBY mints every token of the batch.
  local first = redis.call('INCRBY', KEYS[1], #chosen) - #chosen
  -- Almost always empty: one call per batch instead of one per message.
  local any_terminating = redis.call('SCARD', KEYS[3]) > 0
  local leases = {}
  for i, c in ipairs(chosen) do
    local token = first + i
    -- Formatted once here: Redis would format a Lua number argument as a float, slowly.
    redis.call('HSET', c[1], 'state', 'RECEIVED', 'token', string.format('%d', token),
      'worker', worker, 'deliveries', decimal(c[4]))
    leases[#leases + 1] = lease_until
    leases[#leases + 1] = c[2]
    out[#out + 1] = c[2]
    out[#out + 1] = token
    out[#out + 1] = c[3]
    out[#out + 1] = c[4]
    out[#out + 1] = c[5]
    out[#out + 1] = any_terminating and redis.call('SISMEMBER', KEYS[3], c[2]) or 0
    event(prefix, c[2], 'RECEIVED', now_ms)
  end
  redis.call('ZADD', KEYS[2], unpack(leases))
end
flow_wake(prefix)
return { out, dropped }
