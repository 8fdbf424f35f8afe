-- now_ms(): Redis server time in milliseconds. Every deadline uses this one clock, so
-- instances with skewed clocks still agree on what is due.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
