-- Revokes a task (Broker::revoke). Waiting: REVOKED at once, its message removed. Leased
-- (running): with terminate, its worker is asked to stop it; otherwise nothing changes.
-- A revoked task is a REVOKED task event; a workflow task's links are carried out.
--
-- KEYS[1]  the task hash; KEYS[2] `terminating`
-- ARGV[1]  key prefix; ARGV[2] id; ARGV[3] terminate ('1'/'0'); ARGV[4] now (ms);
-- ARGV[5]  the `revoked` error JSON
--
-- Returns {'unknown'} | {'final', state} | {'running', '1'/'0' (terminating)} | {'revoked'}.
local prefix, id = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'queue', 'result_ttl')
local state = f[1]
if not state then
  return { 'unknown' }
end
if state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' then
  return { 'final', state }
end
-- An empty token is a finished lease.
if f[2] and f[2] ~= '' then
  if ARGV[3] == '1' then
    redis.call('SADD', KEYS[2], id)
    redis.call('PUBLISH', prefix .. 'terminate', id)
  end
  return { 'running', tostring(redis.call('SISMEMBER', KEYS[2], id)) }
end
if f[3] then
  redis.call('ZREM', prefix .. 'ready:' .. f[3], id)
  redis.call('ZREM', prefix .. 'delayed:' .. f[3], id)
end
redis.call('HSET', KEYS[1], 'state', 'REVOKED', 'error', ARGV[5], 'finished', ARGV[4])
-- A parked workflow task is never started now.
redis.call('HDEL', KEYS[1], 'parked', 'pargs', 'head', 'tail', 'pkey', 'delay')
if f[4] then
  redis.call('PEXPIRE', KEYS[1], record_ttl(f[4]))
end
redis.call('PUBLISH', prefix .. 'done:' .. id, 'REVOKED')
event(prefix, id, 'REVOKED', ARGV[4])
flow_check(prefix, id, 'REVOKED', ARGV[5], tonumber(ARGV[4]))
flow_wake(prefix)
return { 'revoked' }
