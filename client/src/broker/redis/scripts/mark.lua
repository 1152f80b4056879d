-- Records that held tasks started or made progress (Broker::mark); stale leases are ignored.
-- Each written mark is a task event.
--
-- KEYS[1]  `leases` (not touched: declared so the script runs in the namespace's slot)
-- ARGV[1]  key prefix; then id, token, state, progress JSON ('' none), at (ms) per mark
--
-- Returns 1 (written) or 0 (stale, ignored) per mark.
local prefix = ARGV[1]
local out = {}
for a = 2, #ARGV, 5 do
  local key = prefix .. 'task:' .. ARGV[a]
  if redis.call('HGET', key, 'token') == ARGV[a + 1] then
    if ARGV[a + 3] == '' then
      redis.call('HSET', key, 'state', ARGV[a + 2])
    else
      redis.call('HSET', key, 'state', ARGV[a + 2], 'progress', ARGV[a + 3])
    end
    event(prefix, ARGV[a], ARGV[a + 2], ARGV[a + 4])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
