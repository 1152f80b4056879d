-- Shared by every script (prepended when the scripts are loaded).

-- A record's time to live, clamped so PEXPIRE cannot fail: a script that errors half-way is
-- not rolled back, and would leave what it already wrote.
local function record_ttl(value)
  local n = tonumber(value) or 1
  if n < 1 then n = 1 elseif n > 315360000000 then n = 315360000000 end
  return string.format('%d', n)
end

-- Appends a task event to the namespace's event log, the `events` stream (see keys.rs), while
-- the log is on: `events-on` exists (its value is the log's cap, kept by `MAXLEN ~`). Checked
-- once per script call, at its first event, so with the log off a call that changes a state
-- pays one GET, and a call that changes none pays nothing. Entry fields: `type` (Celery's
-- name, as `task_event_type` in tenancy.rs), `id`, `state`, `at_ms`, and when known `task`
-- (component.task), `worker`, `attempt` (the ended attempt's JSON: runtime, fuel, memory,
-- digest), `error` and `progress` (JSON). `attempt_json` is the settle script's, or nil.
local events_cap
local EVENT_TYPES = {
  PENDING = 'task-sent', RECEIVED = 'task-received', STARTED = 'task-started',
  PROGRESS = 'task-progress', SUCCESS = 'task-succeeded', FAILURE = 'task-failed',
  RETRY = 'task-retried', REVOKED = 'task-revoked',
}
-- The figures of an attempt's JSON (`Attempt`), as a small JSON object: not its output or log,
-- which may be large. By pattern, not cjson: the fields wanted come before `log`, and a
-- string value (output, error message) cannot match `"name":` as its quotes are escaped.
local EVENT_NUMBERS = { 'attempt', 'duration_ms', 'fuel', 'peak_memory' }
local EVENT_STRINGS = { 'worker', 'digest' }
local function event_figures(attempt_json)
  local parts = {}
  for _, name in ipairs(EVENT_NUMBERS) do
    local value = string.match(attempt_json, '"' .. name .. '":(%-?[%d%.eE%+%-]+)')
    if value then
      parts[#parts + 1] = '"' .. name .. '":' .. value
    end
  end
  for _, name in ipairs(EVENT_STRINGS) do
    local value = string.match(attempt_json, '"' .. name .. '":("[^"\\]*")')
    if value then
      parts[#parts + 1] = '"' .. name .. '":' .. value
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function event(prefix, id, state, at_ms, attempt_json)
  if events_cap == nil then
    events_cap = redis.call('GET', prefix .. 'events-on')
  end
  if not events_cap then
    return
  end
  local f = redis.call('HMGET', prefix .. 'task:' .. id, 'msg', 'addr', 'worker', 'error',
    'progress')
  local fields = { 'type', EVENT_TYPES[state] or state, 'id', id, 'state', state,
    'at_ms', at_ms }
  -- The message JSON starts with its id, component and task (TaskMessage's field order), so
  -- the first matches are those fields: an id's own quotes are escaped and cannot match.
  local name = f[2]
  if f[1] then
    local component = string.match(f[1], '"component":"([^"]*)"')
    local task = string.match(f[1], '"task":"([^"]*)"')
    if component and task then
      name = component .. '.' .. task
    end
  end
  if name then
    fields[#fields + 1] = 'task'
    fields[#fields + 1] = name
  end
  if f[3] and f[3] ~= '' and state ~= 'PENDING' then
    fields[#fields + 1] = 'worker'
    fields[#fields + 1] = f[3]
  end
  if attempt_json then
    fields[#fields + 1] = 'attempt'
    fields[#fields + 1] = event_figures(attempt_json)
  end
  if f[4] and f[4] ~= '' and (state == 'FAILURE' or state == 'RETRY' or state == 'REVOKED') then
    fields[#fields + 1] = 'error'
    fields[#fields + 1] = f[4]
  end
  if f[5] and f[5] ~= '' and state == 'PROGRESS' then
    fields[#fields + 1] = 'progress'
    fields[#fields + 1] = f[5]
  end
  redis.call('XADD', prefix .. 'events', 'MAXLEN', '~', events_cap, '*', unpack(fields))
end

-- Workflows (Broker::submit). A workflow's tasks are all stored when it is submitted; a task
-- that waits for another's result is "parked": stored PENDING but not queued, its `parked`
-- field saying how the result joins its arguments (`p` prepended, `k` under the keyword
-- `pkey`, `i` ignored), `pargs` its own arguments and `head`/`tail` its message around the
-- arguments. A task hash with `flow` set carries its links: `next` (ids started with its
-- output), `errback` (ids started with its failure), `join`/`jidx` (the join it delivers to);
-- `addr` names it in failures. A join (`join:<id>`) collects `size` results (`r:<index>`),
-- counts them in `done`, and has the same link fields, plus `mode` (`fail` or `collect`) and
-- `flatten`. Every parked task and join has exactly one owner whose end starts it, fails it
-- or skips it, so none is left waiting when its workflow ends: this is what fires a chord
-- callback exactly once, with no polling task.
local flow_woken = {}

local function flow_ids(text)
  local out = {}
  if text then
    for word in string.gmatch(text, '%S+') do
      out[#out + 1] = word
    end
  end
  return out
end

-- `first` as the first item of `own`, a JSON array or object between `open` and `close`, by
-- text (whitespace around the brackets allowed).
local function flow_prepend(own, open, close, first)
  local rest = string.match(own, '^%s*%' .. open .. '%s*(.*)$') or own
  if string.sub(rest, 1, 1) == close then
    return open .. first .. close
  end
  return open .. first .. ',' .. rest
end

-- Queues a parked task with `input` (JSON text) joined to its arguments.
local function flow_start(prefix, id, input, now)
  local key = prefix .. 'task:' .. id
  local f = redis.call('HMGET', key, 'state', 'parked', 'pargs', 'head', 'tail', 'pkey',
    'queue', 'score', 'delay')
  if f[1] ~= 'PENDING' or not f[2] then
    return
  end
  local args = f[3]
  if f[2] == 'p' then
    args = flow_prepend(args, '[', ']', input)
  elseif f[2] == 'k' then
    args = flow_prepend(args, '{', '}', cjson.encode(f[6]) .. ':' .. input)
  end
  redis.call('HSET', key, 'msg', f[4] .. cjson.encode(args) .. f[5])
  redis.call('HDEL', key, 'parked', 'pargs', 'head', 'tail', 'pkey', 'delay')
  if f[9] then
    redis.call('ZADD', prefix .. 'delayed:' .. f[7], string.format('%d', now + tonumber(f[9])), id)
  else
    redis.call('ZADD', prefix .. 'ready:' .. f[7], f[8], id)
  end
  flow_woken[f[7]] = true
end

-- Ends a parked task that will never run; false if it was not parked (already started,
-- revoked by hand).
local function flow_drop(prefix, id, state, err, now)
  local key = prefix .. 'task:' .. id
  local f = redis.call('HMGET', key, 'state', 'parked', 'result_ttl')
  if f[1] ~= 'PENDING' or not f[2] then
    return false
  end
  redis.call('HSET', key, 'state', state, 'error', err, 'finished', string.format('%d', now))
  redis.call('HDEL', key, 'parked', 'pargs', 'head', 'tail', 'pkey', 'delay')
  redis.call('PEXPIRE', key, record_ttl(f[3]))
  redis.call('PUBLISH', prefix .. 'done:' .. id, state)
  event(prefix, id, state, string.format('%d', now))
  return true
end

local function flow_describe(failure, state)
  local what = failure.task .. ' (' .. failure.id .. ')'
  if failure.member then
    what = 'chord header member ' .. failure.member .. ', ' .. what
  end
  local verb = state == 'REVOKED' and ' was revoked: ' or ' failed: '
  return what .. verb .. failure.kind .. ': ' .. failure.message
end

-- The results a join collected, in order, as one JSON array (flattened for chunks).
local function flow_gather(key, size, flatten)
  local parts = {}
  for first = 0, size - 1, 1000 do
    local fields = {}
    for index = first, math.min(first + 999, size - 1) do
      fields[#fields + 1] = 'r:' .. index
    end
    for _, value in ipairs(redis.call('HMGET', key, unpack(fields))) do
      -- A missing entry (an index past `size` was counted instead) is false here.
      value = value or 'null'
      local items = flatten and string.match(value, '^%s*%[(.*)%]%s*$')
      if items then
        if string.find(items, '%S') then
          parts[#parts + 1] = items
        end
      else
        parts[#parts + 1] = value
      end
    end
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- Carries out the links of a task or join that ended (`key` its hash), by `mode`: 'ok' with
-- its output (`value`); 'fail' with `value` a failure (id, task, kind, message[, member]) in
-- final state `state`, `within` being the joins the failed task is inside (only those of
-- them that collect failures collect it: a failure from outside a group fails it); 'skip'
-- when it will never run because nothing failed (an errback whose task succeeded), which
-- skips everything behind it, errbacks included. A worklist, not recursion: a failure
-- cascades down chains of any length.
local SKIPPED = '{"kind":"skipped","message":"not needed: what it handles did not fail"}'

local function flow_links(prefix, now, key, mode, value, state, within)
  local work = { { key, mode, value, state, within } }
  local at = 1
  while at <= #work do
    key, mode, value, state, within = unpack(work[at])
    at = at + 1
    local f = redis.call('HMGET', key, 'next', 'errback', 'join', 'jidx')
    if mode == 'ok' then
      for _, id in ipairs(flow_ids(f[1])) do
        flow_start(prefix, id, value, now)
      end
      for _, id in ipairs(flow_ids(f[2])) do
        if flow_drop(prefix, id, 'REVOKED', SKIPPED, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, 'skip' }
        end
      end
    elseif mode == 'skip' then
      for _, id in ipairs(flow_ids(f[1])) do
        if flow_drop(prefix, id, 'REVOKED', SKIPPED, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, 'skip' }
        end
      end
      for _, id in ipairs(flow_ids(f[2])) do
        if flow_drop(prefix, id, 'REVOKED', SKIPPED, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, 'skip' }
        end
      end
    else
      local err = cjson.encode({
        kind = state == 'REVOKED' and 'upstream_revoked' or 'upstream_failed',
        message = flow_describe(value, state) })
      for _, id in ipairs(flow_ids(f[1])) do
        if flow_drop(prefix, id, state, err, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, 'fail', value, state, within }
        end
      end
      local input = cjson.encode(value)
      for _, id in ipairs(flow_ids(f[2])) do
        flow_start(prefix, id, input, now)
      end
    end
    if f[3] then
      local join = prefix .. 'join:' .. f[3]
      local j = redis.call('HMGET', join, 'size', 'mode', 'flatten', 'failed')
      if j[1] and not j[4] then
        local collect = mode == 'fail' and j[2] == 'collect' and
          string.find(' ' .. (within or '') .. ' ', ' ' .. f[3] .. ' ', 1, true)
        if mode == 'skip' then
          redis.call('HSET', join, 'failed', '1')
          work[#work + 1] = { join, 'skip' }
        elseif mode == 'fail' and not collect then
          redis.call('HSET', join, 'failed', '1')
          -- A copy: the member index belongs to what the join's failure reaches, not to the
          -- links of this task still in the worklist. A number, as the failure JSON has it.
          local failed = {}
          for field, v in pairs(value) do
            failed[field] = v
          end
          if not failed.member then
            failed.member = tonumber(f[4])
          end
          work[#work + 1] = { join, 'fail', failed, state, within }
        else
          local entry = mode == 'ok' and value or ('{"error":' .. cjson.encode(value) .. '}')
          if redis.call('HSETNX', join, 'r:' .. f[4], entry) == 1 then
            local size = tonumber(j[1])
            if redis.call('HINCRBY', join, 'done', 1) == size then
              work[#work + 1] = { join, 'ok', flow_gather(join, size, j[3] == '1') }
            end
          end
        end
      end
    end
    -- A join's work is done once its links ran: later deliveries find nothing.
    if string.find(key, prefix .. 'join:', 1, true) == 1 then
      redis.call('DEL', key)
    end
  end
end

-- A workflow task ended in `state`: SUCCESS with `output`, or FAILURE/REVOKED with `err`
-- (the record's error JSON). The caller checked the hash's `flow` field.
local function flow_ended(prefix, id, state, output, err, now)
  local key = prefix .. 'task:' .. id
  if state == 'SUCCESS' then
    flow_links(prefix, now, key, 'ok', output)
    return
  end
  local ok, decoded = pcall(cjson.decode, err)
  if not ok or type(decoded) ~= 'table' then
    decoded = {}
  end
  local f = redis.call('HMGET', key, 'addr', 'within')
  local failure = {
    id = id,
    task = f[1] or '?',
    kind = type(decoded.kind) == 'string' and decoded.kind or 'unknown',
    message = type(decoded.message) == 'string' and decoded.message or '',
  }
  flow_links(prefix, now, key, 'fail', failure, state, f[2] or '')
end

-- flow_ended for callers outside the hot path, which have not read `flow`.
local function flow_check(prefix, id, state, err, now)
  if redis.call('HEXISTS', prefix .. 'task:' .. id, 'flow') == 1 then
    flow_ended(prefix, id, state, nil, err, now)
  end
end

local function flow_wake(prefix)
  for queue in pairs(flow_woken) do
    redis.call('PUBLISH', prefix .. 'work:' .. queue, '')
  end
  flow_woken = {}
end
