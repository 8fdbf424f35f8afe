#!/usr/bin/env python3
"""bench/lprof/report.py PORT OUTDIR JOBS [TOP]: the profile inject.py collected, per job: by
script, by the library function each line belongs to, and the TOP lines."""
import collections
import re
import sys

from resp import command


def main():
    port, out, jobs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    offset = int(open(f'{out}/offset').read())
    lib = open(f'{out}/lib.lua').read().split('\n')
    lines, calls = {}, {}
    for entry in command(port, 'FCALL', 'prof_dump', '0'):
        p = entry.decode().split()
        if p[0] == 'C':
            calls[p[1]] = int(p[2])
        else:
            lines[int(p[0]) - offset] = (int(p[1]), int(p[2]))
    total = sum(t for t, _ in lines.values()) or 1
    print(f'{jobs} jobs; cycles per job on script lines: {total / jobs:,.0f}')
    for name in sorted(k for k in calls if not k.startswith('T:')):
        t = calls['T:' + name]
        print(f'  {name:14s} {calls[name]:6d} calls  {t / jobs:10,.0f} cycles per job with the hook')
    # the library function (or script) a line belongs to: the nearest definition above it
    owner, cur = {}, '?'
    for i, text in enumerate(lib, 1):
        m = (re.match(r'^(?:local )?function ([\w.:]+)', text)
             or re.match(r"^SCRIPTS\['(\w+)'\]", text))
        if m:
            cur = m.group(1)
        owner[i] = cur
    by = collections.Counter()
    for line, (t, _) in lines.items():
        by[owner.get(line, '?')] += t
    print('\nby function: cycles per job, share')
    for name, t in by.most_common(30):
        print(f'{t / jobs:10,.0f} {100 * t / total:5.1f} %  {name}')
    print('\nlines: cycles per job, share, runs per job, line')
    for line, (t, n) in sorted(lines.items(), key=lambda x: -x[1][0])[:top]:
        text = lib[line - 1].strip() if 0 < line <= len(lib) else '?'
        print(f'{t / jobs:9,.0f} {100 * t / total:5.1f} % x{n / jobs:5.1f} {line:5d} '
              f'{owner.get(line, "?")[:16]:16s} {text[:100]}')


if __name__ == '__main__':
    main()
