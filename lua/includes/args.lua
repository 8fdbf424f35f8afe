-- Argument checks. A script reads every numeric ARGV through these before its first write:
-- a bad argument becomes the error reply "ERR bad argument ARGV[i] (name): ..." and nothing
-- is changed (Redis does not roll back a script that fails half-way).
--   num(i, name)          ARGV[i] as a finite number
--   int(i, name, lo, hi)  ARGV[i] as a whole number in [lo, hi]
local function bad_arg(i, name, why)
  error({err = 'ERR bad argument ARGV[' .. i .. '] (' .. name .. '): ' .. why})
end

local function num(i, name)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= v or v == math.huge or v == -math.huge then
    bad_arg(i, name, 'not a number')
  end
  return v
end

local function int(i, name, lo, hi)
  local v = num(i, name)
  if v % 1 ~= 0 or v < lo or v > hi then
    bad_arg(i, name, 'not a whole number in [' .. lo .. ', ' .. hi .. ']')
  end
  return v
end
