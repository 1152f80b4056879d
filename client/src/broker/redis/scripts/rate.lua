-- Takes `n` units from a rate bucket (Tenancy::take_rate) with GCRA: the bucket is its
-- theoretical arrival time (TAT, Unix µs); taking moves it `cost` on from max(TAT, now), and
-- is allowed when that is at most `window` ahead of now. Mirrors `gcra` in
-- `broker/tenancy.rs`, which computes the interval, window and cost (every number here is
-- an integer below 2^53, exact in Lua).
--
-- KEYS[1]  `rate:<bucket>`
-- ARGV[1]  now (Unix µs); ARGV[2] window (µs); ARGV[3] cost of the `n` units (µs)
--
-- Returns { 1, 0 } when taken (the bucket expires once it is full again, so idle buckets
-- vanish), { 0, retry after (µs) } when not (nothing is taken).
local now, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then
  tat = now
end
local new_tat = tat + cost
local ahead = new_tat - now
if ahead > window then
  return { 0, ahead - window }
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
  string.format('%d', math.max(math.ceil(ahead / 1000), 1)))
return { 1, 0 }
