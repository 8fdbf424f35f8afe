"""A minimal RESP client for bench/lprof (a library's code is binary-safe text that
redis-cli would quote)."""
import socket


def command(port, *args):
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    req = b'*%d\r\n' % len(parts) + b''.join(b'$%d\r\n%s\r\n' % (len(p), p) for p in parts)
    with socket.create_connection(('127.0.0.1', port)) as s:
        s.sendall(req)
        f = s.makefile('rb')

        def read():
            line = f.readline()
            kind, rest = line[:1], line[1:-2]
            if kind == b'+':
                return rest.decode()
            if kind == b'-':
                raise RuntimeError(rest.decode())
            if kind == b':':
                return int(rest)
            if kind == b'$':
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2]
            if kind == b'*':
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise RuntimeError(f'unexpected reply {line!r}')

        return read()
