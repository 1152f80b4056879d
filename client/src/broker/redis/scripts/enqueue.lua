-- Stores and queues a batch of new messages (Broker::enqueue), in order; or a whole workflow
-- (Broker::submit): its tree, joins and tasks, some of them parked (see the prelude).
--
-- KEYS[1]  the `seq` counter (enqueue order)
-- ARGV[1]  the namespace's key prefix `wtq:{ns}:`; per-task and per-queue keys are derived
--          from it (they share the namespace's hash slot)
-- ARGV[2]  now (Unix ms)
-- ARGV[3]  idempotency-key TTL (ms)
-- ARGV[4]  workflow id ('' for a plain enqueue); ARGV[5] its tree JSON; ARGV[6] the tree's
--          TTL (ms)
-- ARGV[7]  how many joins follow; each: id, n, then n field/value pairs of its hash
-- then per message 10 values:
--   id, message JSON, queue, rank base (priority rank << 44), eta ('' none),
--   expires ('' none), max_deliveries, result_expires_ms, idempotency key ('' none),
--   parked ('' to queue it now; else how its input joins its arguments)
-- and n, then n extra field/value pairs of its hash (workflow links).
--
-- Returns { duplicate id or '', id, created ('1'/'0'), id, created, ... }. A message whose
-- id is in use stops the batch there: the messages before it are stored, the rest are not;
-- a workflow is stored whole or not at all (its own id in use is reported the same way).
-- Each stored message is a PENDING task event.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local idem_ttl = ARGV[3]
local workflow = ARGV[4]

local joins = {}
local a = 7
for _ = 1, tonumber(ARGV[7]) do
  joins[#joins + 1] = a
  a = a + 2 + 2 * tonumber(ARGV[a + 2])
end
local starts = {}
local keys = {}
while a < #ARGV do
  starts[#starts + 1] = a
  keys[#keys + 1] = prefix .. 'task:' .. ARGV[a + 1]
  a = a + 11 + 2 * tonumber(ARGV[a + 11])
end
local count = #starts

if workflow ~= '' then
  local tree = prefix .. 'flow:' .. workflow
  if redis.call('EXISTS', tree) == 1 then
    return { workflow }
  end
  -- Every id is checked before anything is written, an id the plan repeats too.
  local seen = {}
  for i = 1, count do
    local id = ARGV[starts[i] + 1]
    if seen[id] or redis.call('EXISTS', keys[i]) == 1 then
      return { id }
    end
    seen[id] = true
  end
  redis.call('SET', tree, ARGV[5], 'PX', ARGV[6])
  for _, j in ipairs(joins) do
    local fields = {}
    for k = 1, tonumber(ARGV[j + 2]) * 2 do
      fields[k] = ARGV[j + 2 + k]
    end
    redis.call('HSET', prefix .. 'join:' .. ARGV[j + 1], unpack(fields))
  end
end

-- One EXISTS for the batch; only when it finds something is each id checked alone. A workflow's
-- ids were checked above (and may be too many to unpack: Lua's stack holds about 8,000).
local any_exists = workflow == '' and count > 0 and redis.call('EXISTS', unpack(keys)) > 0
-- One INCRBY for the batch: its messages take consecutive sequence numbers.
local seq = redis.call('INCRBY', KEYS[1], count) - count
local out = { '' }
local stored = {}
local woken = {}

local function wake()
  for queue in pairs(woken) do
    redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
  end
end

for i = 1, count do
  local a = starts[i]
  local id, body, queue, base = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local eta, expires, max_deliveries = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local result_ttl, idem, parked = ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]
  local extra = tonumber(ARGV[a + 11])
  local first = false
  if idem ~= '' then
    first = redis.call('GET', prefix .. 'idem:' .. idem)
  end
  if first then
    out[#out + 1] = first
    out[#out + 1] = '0'
  else
    local key = keys[i]
    if stored[id] or (any_exists and redis.call('EXISTS', key) == 1) then
      out[1] = id
      wake()
      return out
    end
    stored[id] = true
    -- Formatted once here: Redis would format a Lua number argument (twice) with a costly
    -- float conversion. Exact below 2^53.
    local score = string.format('%d', tonumber(base) + seq + i)
    -- Defaults are left out: no `deliveries` is 0, no `attempt` is 1, no `expires` is never.
    if expires == '' then
      redis.call('HSET', key, 'msg', body, 'state', 'PENDING', 'queue', queue, 'score', score,
        'max_deliveries', max_deliveries, 'result_ttl', result_ttl)
    else
      redis.call('HSET', key, 'msg', body, 'state', 'PENDING', 'queue', queue, 'score', score,
        'max_deliveries', max_deliveries, 'result_ttl', result_ttl, 'expires', expires)
    end
    if extra > 0 then
      local fields = {}
      for k = 1, extra * 2 do
        fields[k] = ARGV[a + 11 + k]
      end
      redis.call('HSET', key, unpack(fields))
    end
    if parked ~= '' then
      redis.call('HSET', key, 'parked', parked)
    elseif eta ~= '' and tonumber(eta) > now then
      redis.call('ZADD', prefix .. 'delayed:' .. queue, eta, id)
    else
      redis.call('ZADD', prefix .. 'ready:' .. queue, score, id)
    end
    if idem ~= '' then
      redis.call('SET', prefix .. 'idem:' .. idem, id, 'PX', idem_ttl)
    end
    -- Also for a delayed message: a waiting worker recomputes when the next one is due.
    if parked == '' then
      woken[queue] = true
    end
    event(prefix, id, 'PENDING', ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = '1'
  end
end
wake()
return out
