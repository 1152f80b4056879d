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

