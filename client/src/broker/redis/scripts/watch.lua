-- Reads a task's record for a waiter (Broker::wait) and marks the task watched, so that the
-- settle script publishes on `done:<id>` when it finishes (it skips the PUBLISH for tasks
-- nobody waits on). The waiter subscribed before calling this: a finish before this script
-- shows in the record it returns, a finish after it is published.
--
-- KEYS[1]  the task hash
--
-- Returns HGETALL's reply; empty when there is no such task (nothing is created).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
redis.call('HSET', KEYS[1], 'watched', '1')
return redis.call('HGETALL', KEYS[1])
