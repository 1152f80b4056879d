-- Shared by every script (prepended when the scripts are loaded).

-- A record's time to live, clamped so PEXPIRE cannot fail: a script that errors half-way is
-- not rolled back, and would leave what it already wrote.
local function record_ttl(value)
  local n = tonumber(value) or 1
  if n < 1 then n = 1 elseif n > 315360000000 then n = 315360000000 end
  return string.format('%d', n)
end

