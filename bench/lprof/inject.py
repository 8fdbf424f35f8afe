#!/usr/bin/env python3
"""bench/lprof/inject.py PORT OUTDIR: replace the Switchyard library loaded in the redis-server
on 127.0.0.1:PORT with a copy that profiles itself line by line.

Needs a redis-server built with bench/lprof/redis.patch (`debug` left to scripts and a
`prof_cycles()` that reads the CPU's time-stamp counter). Every registered function gets a
line hook for the length of its call: the cycles between two line events go to the line that
was running, commands it issued (`redis.call`) included, the hook's own time excluded.
`prof_dump` returns the totals, `prof_reset` clears them. Writes OUTDIR/lib.lua (the library
as loaded) and OUTDIR/offset (lines the profiler adds in front of it)."""
import re
import sys

from resp import command

PROFILER = r'''local PT, PN, PC = {}, {}, {}
local prof_t, prof_line, prof_t0 = 0, 0, 0
local function prof_hook(_, line)
  local t = prof_cycles()
  if prof_line ~= 0 then
    PT[prof_line] = (PT[prof_line] or 0) + (t - prof_t)
    PN[prof_line] = (PN[prof_line] or 0) + 1
  end
  prof_line = line
  prof_t = prof_cycles()
end
local function prof_begin()
  prof_t0, prof_line = prof_cycles(), 0
  debug.sethook(prof_hook, 'l')
end
local function prof_end(name)
  debug.sethook()
  prof_hook(nil, 0)
  PC[name] = (PC[name] or 0) + 1
  PC['T:' .. name] = (PC['T:' .. name] or 0) + (prof_cycles() - prof_t0)
end'''

DUMP = r'''
redis.register_function('prof_dump', function()
  local r = {}
  for l, t in pairs(PT) do r[#r + 1] = l .. ' ' .. string.format('%d', t) .. ' ' .. PN[l] end
  for k, v in pairs(PC) do r[#r + 1] = 'C ' .. k .. ' ' .. string.format('%d', v) end
  return r
end)
redis.register_function('prof_reset', function()
  for _, t in ipairs({PT, PN, PC}) do
    for k in pairs(t) do t[k] = nil end
  end
  return 1
end)
'''


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    lib = command(port, 'FUNCTION', 'LIST', 'WITHCODE')[0]
    fields = {lib[i].decode(): lib[i + 1] for i in range(0, len(lib), 2)}
    code = fields['library_code'].decode()
    lines = code.split('\n')
    added = PROFILER.split('\n')
    src = '\n'.join([lines[0]] + added + lines[1:])
    src, n = re.subn(
        r"function\(keys, args\) begin\(keys, args\) return SCRIPTS\['(\w+)'\]\(\) end\)",
        lambda m: ("function(keys, args) prof_begin() begin(keys, args) "
                   "local r = SCRIPTS['{0}']() prof_end('{0}') return r end)").format(m.group(1)),
        src)
    if n == 0:
        sys.exit('inject.py: no registration of the expected shape found (src/store/scripts.rs)')
    with open(f'{out}/lib.lua', 'w') as f:
        f.write(code)
    with open(f'{out}/offset', 'w') as f:
        f.write(str(len(added)))
    command(port, 'FUNCTION', 'LOAD', 'REPLACE', src + DUMP)
    print(f'profiling {n} functions')


if __name__ == '__main__':
    main()
