-- Ends leases (Broker::settle), each only if its token still matches: a worker whose lease
-- was reaped (and perhaps given to another) writes nothing.
--
-- KEYS[1]  `leases`; KEYS[2] `dead`; KEYS[3] `terminating`; KEYS[4] the `seq` counter;
-- KEYS[5]  `usage`
-- ARGV[1]  key prefix; ARGV[2] now (ms)
-- then 9 values per settlement: id, token, kind, operand, attempt JSON, error JSON ('' none),
-- and the attempt's metering (computed in Rust, `Metered`): fuel, cpu_us, memory_kib_ms.
--   F  finish       operand = final state; the attempt is stored, the record expires later
--   R  retry        operand = eta (ms); the attempt is stored, the next one waits for the eta
--   L  release      back to its ready place at once; this delivery does not count
--   D  dead-letter  FAILURE with the error, into `dead`
--
-- An empty `token`, `error` or `progress` field means none: writing '' costs no extra call,
-- where HDEL would.
--
-- Committed settlements are metered in `usage` (F: a task and an attempt, R: an attempt,
-- D: a task; F and R add the metering), summed over the batch and written with one HINCRBY
-- per counter per call. Each is a task event with its new state. A final workflow task
-- carries out its links (prelude: flow_ended) in the same step.
--
-- Returns 1 (committed) or 0 (stale) per settlement.
local prefix, now_ms = ARGV[1], ARGV[2]
local now = tonumber(now_ms)
local WIDTH = 9
local out = {}
local unleased = {}
local final = {}
local woken = {}
-- Sums stay exact: each metered value is below 2^43 and a batch has at most 1000 items.
local tasks, attempts, fuel, cpu_us, memory_kib_ms = 0, 0, 0, 0, 0

local function meter(a)
  attempts = attempts + 1
  fuel = fuel + (tonumber(ARGV[a + 7]) or 0)
  cpu_us = cpu_us + (tonumber(ARGV[a + 8]) or 0)
  memory_kib_ms = memory_kib_ms + (tonumber(ARGV[a + 9]) or 0)
end

-- A workflow task's output, from its attempt's JSON: only workflow tasks pay the decode, and
-- no task sends its output twice. (Decoding a JSON string gives its text back exactly.)
local function attempt_output(attempt_json)
  local ok, attempt = pcall(cjson.decode, attempt_json)
  if ok and type(attempt) == 'table' and type(attempt.output) == 'string' then
    return attempt.output
  end
  return 'null'
end

for a = 2, #ARGV - 1, WIDTH do
  local id, token, kind = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local operand, attempt_json, err = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local key = prefix .. 'task:' .. id
  if kind == 'F' then
    local f = redis.call('HMGET', key, 'token', 'attempt', 'result_ttl', 'watched', 'flow')
    if f[1] == token then
      redis.call('HSET', key, 'state', operand, 'a:' .. (f[2] or '1'), attempt_json,
        'finished', now_ms, 'token', '', 'error', err)
      -- Counts final commits, so a test can prove each task has exactly one.
      redis.call('HINCRBY', key, 'commits', 1)
      if f[3] then
        redis.call('PEXPIRE', key, record_ttl(f[3]))
      end
      -- Only a waiter (watch.lua) listens; most tasks have none, and PUBLISH is a call.
      if f[4] then
        redis.call('PUBLISH', prefix .. 'done:' .. id, operand)
      end
      final[#final + 1] = id
      tasks = tasks + 1
      meter(a)
      event(prefix, id, operand, now_ms, attempt_json)
      if f[5] then
        flow_ended(prefix, id, operand, attempt_output(attempt_json), err, now)
      end
    end
    out[#out + 1] = f[1] == token and 1 or 0
  elseif kind == 'R' then
    local f = redis.call('HMGET', key, 'token', 'attempt', 'queue', 'score')
    if f[1] == token then
      local attempt = tonumber(f[2]) or 1
      -- The error shows while it waits; progress belonged to the attempt that ended.
      redis.call('HSET', key, 'state', 'RETRY', 'a:' .. (f[2] or '1'), attempt_json,
        'attempt', string.format('%d', attempt + 1), 'deliveries', '0', 'token', '',
        'error', err, 'progress', '')
      if tonumber(operand) > now then
        redis.call('ZADD', prefix .. 'delayed:' .. f[3], operand, id)
      else
        redis.call('ZADD', prefix .. 'ready:' .. f[3], f[4], id)
      end
      woken[f[3]] = true
      meter(a)
      event(prefix, id, 'RETRY', now_ms, attempt_json)
    end
    out[#out + 1] = f[1] == token and 1 or 0
  elseif kind == 'L' then
    local f = redis.call('HMGET', key, 'token', 'queue', 'score', 'deliveries')
    if f[1] == token then
      local deliveries = math.max((tonumber(f[4]) or 1) - 1, 0)
      redis.call('HSET', key, 'state', 'PENDING', 'token', '',
        'deliveries', string.format('%d', deliveries))
      redis.call('ZADD', prefix .. 'ready:' .. f[2], f[3], id)
      woken[f[2]] = true
      event(prefix, id, 'PENDING', now_ms)
    end
    out[#out + 1] = f[1] == token and 1 or 0
  else
    local f = redis.call('HMGET', key, 'token', 'flow')
    local held = f[1] == token
    if held then
      redis.call('HSET', key, 'state', 'FAILURE', 'error', err, 'finished', now_ms,
        'token', '')
      -- Scored by a counter, not the clock: "most recent first" is call order even within
      -- one millisecond.
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
      redis.call('PUBLISH', prefix .. 'done:' .. id, 'FAILURE')
      final[#final + 1] = id
      tasks = tasks + 1
      event(prefix, id, 'FAILURE', now_ms)
      if f[2] then
        flow_ended(prefix, id, 'FAILURE', nil, err, now)
      end
    end
    out[#out + 1] = held and 1 or 0
  end
  if out[#out] == 1 then
    unleased[#unleased + 1] = id
  end
end

if #unleased > 0 then
  redis.call('ZREM', KEYS[1], unpack(unleased))
end
if #final > 0 then
  redis.call('SREM', KEYS[3], unpack(final))
end
for queue in pairs(woken) do
  flow_woken[queue] = true
end
flow_wake(prefix)
local counters = { tasks = tasks, attempts = attempts, fuel = fuel, cpu_us = cpu_us,
  memory_kib_ms = memory_kib_ms }
for field, value in pairs(counters) do
  if value > 0 then
    redis.call('HINCRBY', KEYS[5], field, string.format('%d', value))
  end
end
return out
