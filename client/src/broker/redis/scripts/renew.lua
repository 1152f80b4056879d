-- Extends the leases still held (Broker::renew).
--
-- KEYS[1]  `leases`
-- ARGV[1]  key prefix; ARGV[2] new lease expiry (ms); then id, token per lease
--
-- Returns 1 (held, extended) or 0 (lost) per lease.
local prefix = ARGV[1]
local out = {}
local extended = {}
for a = 3, #ARGV, 2 do
  local id = ARGV[a]
  -- The token field is non-empty exactly while the task is leased, so a match means held.
  if redis.call('HGET', prefix .. 'task:' .. id, 'token') == ARGV[a + 1] then
    extended[#extended + 1] = ARGV[2]
    extended[#extended + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #extended > 0 then
  redis.call('ZADD', KEYS[1], unpack(extended))
end
return out
