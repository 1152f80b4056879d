-- Stores and queues a batch of new messages (Broker::enqueue), in order.
--
-- KEYS[1]  the `seq` counter (enqueue order)
-- ARGV[1]  the namespace's key prefix `wtq:{ns}:`; per-task and per-queue keys are derived
--          from it (they share the namespace's hash slot)
-- ARGV[2]  now (Unix ms)
-- ARGV[3]  idempotency-key TTL (ms)
-- then 9 values per message:
--   id, message JSON, queue, rank base (priority rank << 44), eta ('' none),
--   expires ('' none), max_deliveries, result_expires_ms, idempotency key ('' none)
--
-- Returns { duplicate id or '', id, created ('1'/'0'), id, created, ... }. A message whose
-- id is in use stops the batch there: the messages before it are stored, the rest are not.
-- Each stored message is a PENDING task event.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local idem_ttl = ARGV[3]
local WIDTH = 9
local count = (#ARGV - 3) / WIDTH

local keys = {}
for i = 1, count do
  keys[i] = prefix .. 'task:' .. ARGV[3 + (i - 1) * WIDTH + 1]
end
-- One EXISTS for the batch; only when it finds something is each id checked alone.
local any_exists = redis.call('EXISTS', unpack(keys)) > 0
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
  local a = 3 + (i - 1) * WIDTH
  local id, body, queue, base = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local eta, expires, max_deliveries = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local result_ttl, idem = ARGV[a + 8], ARGV[a + 9]
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
    if eta ~= '' and tonumber(eta) > now then
      redis.call('ZADD', prefix .. 'delayed:' .. queue, eta, id)
    else
      redis.call('ZADD', prefix .. 'ready:' .. queue, score, id)
    end
    if idem ~= '' then
      redis.call('SET', prefix .. 'idem:' .. idem, id, 'PX', idem_ttl)
    end
    -- Also for a delayed message: a waiting worker recomputes when the next one is due.
    woken[queue] = true
    event(prefix, id, 'PENDING', ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = '1'
  end
end
wake()
return out
