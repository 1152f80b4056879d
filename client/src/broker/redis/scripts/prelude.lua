-- Shared by every script (prepended when the scripts are loaded).

-- A record's time to live, clamped so PEXPIRE cannot fail: a script that errors half-way is
-- not rolled back, and would leave what it already wrote.
local function record_ttl(value)
  local n = tonumber(value) or 1
  if n < 1 then n = 1 elseif n > 315360000000 then n = 315360000000 end
  return string.format('%d', n)
end

-- Publishes a task event (`TaskEvent` JSON) on the namespace's `events` channel, if anyone
-- watches it: the `events-watched` key (kept alive by the watchers' listener) is checked once
-- per script call, at its first event, so an unwatched namespace pays one EXISTS per call
-- that changes a state, and a call that changes none pays nothing.
local events_watched
local function event(prefix, id, state, at_ms)
  if events_watched == nil then
    events_watched = redis.call('EXISTS', prefix .. 'events-watched') == 1
  end
  if events_watched then
    redis.call('PUBLISH', prefix .. 'events',
      '{"id":' .. cjson.encode(id) .. ',"state":"' .. state .. '","at_ms":' .. at_ms .. '}')
  end
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

-- Carries out the links of a task or join that ended (`key` its hash): with its output
-- (`ok`), or with `failure` (id, task, kind, message[, member]) in final state `state`.
-- A worklist, not recursion: a failure cascades down chains of any length.
local function flow_links(prefix, now, key, ok, value, state)
  local work = { { key, ok, value, state } }
  local at = 1
  while at <= #work do
    key, ok, value, state = unpack(work[at])
    at = at + 1
    local f = redis.call('HMGET', key, 'next', 'errback', 'join', 'jidx')
    if ok then
      for _, id in ipairs(flow_ids(f[1])) do
        flow_start(prefix, id, value, now)
      end
      local skipped = { id = '', task = '', kind = 'skipped', message = 'not needed' }
      local err = '{"kind":"skipped","message":"not needed: what it handles did not fail"}'
      for _, id in ipairs(flow_ids(f[2])) do
        if flow_drop(prefix, id, 'REVOKED', err, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, false, skipped, 'REVOKED' }
        end
      end
    else
      local err = cjson.encode({
        kind = state == 'REVOKED' and 'upstream_revoked' or 'upstream_failed',
        message = flow_describe(value, state) })
      for _, id in ipairs(flow_ids(f[1])) do
        if flow_drop(prefix, id, state, err, now) then
          work[#work + 1] = { prefix .. 'task:' .. id, false, value, state }
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
        if not ok and j[2] ~= 'collect' then
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
          work[#work + 1] = { join, false, failed, state }
        else
          local entry = ok and value or ('{"error":' .. cjson.encode(value) .. '}')
          if redis.call('HSETNX', join, 'r:' .. f[4], entry) == 1 then
            local size = tonumber(j[1])
            if redis.call('HINCRBY', join, 'done', 1) == size then
              work[#work + 1] = { join, true, flow_gather(join, size, j[3] == '1'), nil }
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
    flow_links(prefix, now, key, true, output, state)
    return
  end
  local ok, decoded = pcall(cjson.decode, err)
  if not ok or type(decoded) ~= 'table' then
    decoded = {}
  end
  local failure = {
    id = id,
    task = redis.call('HGET', key, 'addr') or '?',
    kind = type(decoded.kind) == 'string' and decoded.kind or 'unknown',
    message = type(decoded.message) == 'string' and decoded.message or '',
  }
  flow_links(prefix, now, key, false, failure, state)
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
