-- Leases up to `max` messages to a worker (Broker::reserve): first moves due delayed messages
-- of the queues to their ready sets, then pops the best ready ones, queue by queue in the
-- order given. Messages past their `expires` become REVOKED (kind `expired`) instead.
-- With a concurrency cap (`quota` field `concurrency`), it leases at most the cap minus the
-- namespace's current leases (of every worker), so the cap holds across workers. Each lease
-- is a RECEIVED task event, each expiry a REVOKED one.
--
-- Per-task rate limits (`task-rates`: `component.task` -> `<count>/<per_ms>`), the same for
-- every worker; `broker/task_rate.rs` holds the arithmetic this mirrors and its reasons. When
-- the hash is empty they cost one HLEN per call. Otherwise each popped message of a limited
-- task takes the slot max(TAT, now) of its bucket `task-rate:<task>` (TAT in Unix us) and
-- moves the TAT one interval on: a slot that is now is leased; one within the horizon
-- (max(1 s, interval) ahead) is booked: the message goes to its delayed set due at the slot,
-- with the slot in its `rate_slot` field, and is leased without another slot once promoted;
-- one further ahead is deferred: back to the delayed set, taking nothing, due at
-- max(cursor, slot - horizon), where the cursor `task-rate-defer:<task>` (Unix us) then moves
-- one interval past that, so a backlog is spread one interval apart across calls and
-- workers. Deferred ids are indexed in `task-rate-deferred:<task>` (zset, id -> due ms; ids
-- leave it when leased or booked, and once due) for `set_rate_limit.lua`. The cursor and the
-- index expire when the cursor has passed, the bucket when its TAT has. A call examines at
-- most `max` + 100 messages, so a queue full of limited messages costs one batch, not the
-- whole queue, and other tasks behind them are reached. A booked message that is revoked,
-- purged or expires leaves its slot unused.
--
-- KEYS[1]  the `fence` counter
-- KEYS[2]  `leases`
-- KEYS[3]  `terminating`
-- KEYS[4]  `quota`
-- KEYS[5]  `task-rates`
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

-- Rate limits (see the header; constants as in task_rate.rs). One HLEN per call without any.
local rates_on = redis.call('HLEN', KEYS[5]) > 0
local HORIZON_MIN_US, EXAMINE_EXTRA = 1000000, 100
local SLOT_TOLERANCE_US = 100000
local now_us = now * 1000
local limits = {}   -- task -> { interval, horizon } or false, read once per call
local buckets = {}  -- task -> TAT (us), read once per call
local moved = {}    -- task -> true once this call took a slot of it (its TAT is written back)
local cursors = {}  -- task -> defer cursor (us), read once per call when one is deferred
local booked = {}   -- queue -> true when a message was booked there

local function limit_of(name)
  local limit = limits[name]
  if limit == nil then
    limit = false
    local text = redis.call('HGET', KEYS[5], name)
    local count, per_ms = string.match(text or '', '^(%d+)/(%d+)$')
    count, per_ms = tonumber(count), tonumber(per_ms)
    if count and per_ms and count > 0 and per_ms > 0 then
      local interval = math.max(math.floor((per_ms * 1000 + math.floor(count / 2)) / count), 1)
      limit = { interval, math.max(interval, HORIZON_MIN_US) }
    end
    limits[name] = limit
  end
  return limit
end

local function due_of(us)
  return string.format('%d', math.ceil(us / 1000))
end

-- Whether the message may be leased now; if not, it is in its delayed set.
local function rate_allows(key, id, queue, body, rate_slot)
  if rate_slot then
    local slot = tonumber(rate_slot) or 0
    if slot > now_us + SLOT_TOLERANCE_US then
      redis.call('ZADD', prefix .. 'delayed:' .. queue, due_of(slot), id)
      return false
    end
    redis.call('HDEL', key, 'rate_slot')
    return true
  end
  if not rates_on then
    return true
  end
  -- The message JSON starts with its id, component and task (as in the prelude's `event`).
  local component = string.match(body, '"component":"([^"]*)"')
  local task = string.match(body, '"task":"([^"]*)"')
  if not (component and task) then
    return true
  end
  local name = component .. '.' .. task
  local limit = limit_of(name)
  if not limit then
    return true
  end
  local interval, horizon = limit[1], limit[2]
  local tat = buckets[name]
  if tat == nil then
    tat = tonumber(redis.call('GET', prefix .. 'task-rate:' .. name) or '0') or 0
  end
  local slot = math.max(tat, now_us)
  if slot - now_us <= horizon then
    buckets[name], moved[name] = slot + interval, true
    redis.call('ZREM', prefix .. 'task-rate-deferred:' .. name, id)
    if slot == now_us then
      return true
    end
    redis.call('HSET', key, 'rate_slot', string.format('%d', slot))
    redis.call('ZADD', prefix .. 'delayed:' .. queue, due_of(slot), id)
    booked[queue] = true
    return false
  end
  buckets[name] = tat
  local cursor = cursors[name]
  if cursor == nil then
    cursor = tonumber(redis.call('GET', prefix .. 'task-rate-defer:' .. name) or '0') or 0
  end
  local bookable = math.max(cursor, slot - horizon)
  cursors[name] = bookable + interval
  local due = due_of(bookable)
  redis.call('ZADD', prefix .. 'delayed:' .. queue, due, id)
  redis.call('ZADD', prefix .. 'task-rate-deferred:' .. name, due, id)
  return false
end

local chosen = {}
local dropped = {}
-- With rate limits, messages that wait for a slot do not count toward `max`: bound the work.
local examined, examine_limit = 0, max
if rates_on then
  examine_limit = max + EXAMINE_EXTRA
end
for q = 7, #ARGV do
  local queue = ARGV[q]
  local ready = prefix .. 'ready:' .. queue
  while #chosen < max and examined < examine_limit do
    local popped = redis.call('ZPOPMIN', ready, math.min(max - #chosen, examine_limit - examined))
    if #popped == 0 then
      break
    end
    examined = examined + #popped / 2
    for j = 1, #popped, 2 do
      local id = popped[j]
      local key = prefix .. 'task:' .. id
      local f = redis.call('HMGET', key, 'msg', 'deliveries', 'attempt', 'expires', 'result_ttl',
        'rate_slot')
      if not f[1] then
        dropped[#dropped + 1] = id
      elseif f[4] and tonumber(f[4]) < now then
        expire(key, id, f[4], f[5])
      elseif rate_allows(key, id, queue, f[1], f[6]) then
        chosen[#chosen + 1] = { key, id, f[1], (tonumber(f[2]) or 0) + 1, f[3] or '1' }
      end
    end
  end
end
-- Buckets live until their TAT has passed (then they are as good as absent).
for name in pairs(moved) do
  local tat = buckets[name]
  if tat > now_us then
    redis.call('SET', prefix .. 'task-rate:' .. name, string.format('%d', tat), 'PX',
      string.format('%d', math.max(math.ceil((tat - now_us) / 1000), 1)))
  end
end
-- Cursors and indexes likewise; index entries already due are dropped (they are looked at
-- again anyway), so ids of messages revoked, purged or expired while deferred do not pile up.
for name, cursor in pairs(cursors) do
  local ttl = string.format('%d', math.max(math.ceil((cursor - now_us) / 1000), 1))
  local index = prefix .. 'task-rate-deferred:' .. name
  redis.call('SET', prefix .. 'task-rate-defer:' .. name, string.format('%d', cursor), 'PX', ttl)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now_ms)
  redis.call('PEXPIRE', index, ttl)
end
-- Workers waiting for work learn of the new due time (they wait until the earliest one).
for queue in pairs(booked) do
  redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
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
