#!/usr/bin/env python3
"""bench/wake.py: what waking an idle process costs on this machine, apart from Switchyard.

Two processes ping-pong one byte over loopback TCP (TCP_NODELAY); the client sleeps GAP
seconds before each round trip. A round trip is two wake-ups (server, then client); after a
long enough sleep both CPUs are idle and each wake-up pays the way out of the idle state
(on a VM, a halted vCPU woken by the host). bench/idle.sh sets it beside the end-to-end
latency of one session at the same gaps.
"""
import socket, time, sys, os, statistics
port = int(sys.argv[1]) if len(sys.argv) > 1 else 47125
if os.fork() == 0:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port)); s.listen(1); c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(10)
        if not d: os._exit(0)
        c.send(d)
time.sleep(0.3)
c = socket.create_connection(('127.0.0.1', port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def rtt():
    t = time.perf_counter(); c.send(b'x'); c.recv(10); return (time.perf_counter() - t) * 1e6
print('| sleep before each round trip (ms) | round trips | round trip p50 (µs) | p90 (µs) |')
print('|---|---|---|---|')
for gap in [0.0001, 0.0005, 0.001, 0.003, 0.01, 0.1, 1.0]:
    r = []
    for i in range(max(10, min(200, int(2 / gap)))):
        time.sleep(gap); r.append(rtt())
    print('| %g | %d | %.0f | %.0f |' % (gap * 1000, len(r), statistics.median(r), sorted(r)[int(len(r) * .9)]))
c.close()
