#!/usr/bin/env bash
# bench/callcost.sh: what one redis.call costs inside a Redis function, in instructions
# (callgrind inside FCALL, 100 calls per FCALL, 20 FCALLs per command), for the commands and
# sizes a job uses: the floor under any script that issues them. "empty function" is one
# FCALL with no command (the cost every script call starts with).
# REDIS_BIN: the redis-server to measure (default: the one on PATH).
set -euo pipefail
REDIS_BIN=${REDIS_BIN:-redis-server}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cd "$(dirname "$0")/.."
. bench/lib.sh
OUT=$(mktemp -d)
trap 'cleanup; rm -rf "$OUT"' EXIT
rp=$(free_port)
start_callgrind_redis "$OUT" "$rp"
# name|Lua statement run 100 times (k: KEYS[1], a hash of 40 fields like a session record;
# small: a hash of 12; z: a sorted set; s: a set)
CASES=(
  "empty function|"
  "TIME|redis.call('TIME')"
  "HGET 1 field|redis.call('HGET', k, 'f7')"
  "HEXISTS|redis.call('HEXISTS', k, 'f7')"
  "HMGET 6 fields|redis.call('HMGET', k, 'f1', 'f2', 'f3', 'f4', 'f5', 'f6')"
  "HMGET 12 fields|redis.call('HMGET', k, 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9', 'f10', 'f11', 'f12')"
  "HMGET 12 fields of a 12-field hash|redis.call('HMGET', 'small', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9', 'f10', 'f11', 'f12')"
  "HSET 2 fields|redis.call('HSET', k, 'f1', 'v1', 'f2', 'v2')"
  "HSET 12 fields|redis.call('HSET', k, 'f1', 'v1', 'f2', 'v2', 'f3', 'v3', 'f4', 'v4', 'f5', 'v5', 'f6', 'v6', 'f7', 'v7', 'f8', 'v8', 'f9', 'v9', 'f10', 'v10', 'f11', 'v11', 'f12', 'v12')"
  "HINCRBY|redis.call('HINCRBY', k, 'n', '1')"
  "PEXPIRE|redis.call('PEXPIRE', k, '600000')"
  "ZADD|redis.call('ZADD', 'z', '1795804698279', 'job-e94ef881cd72-0')"
  "SISMEMBER|redis.call('SISMEMBER', 's', 'node-2280DFF4')"
  "EXISTS 6 keys|redis.call('EXISTS', 'q1', 'q2', 'q3', 'q4', 'q5', 'q6')"
  "a concatenated key, no command|local x = 'tag:' .. 'node:' .. i"
)
lib="#!lua name=callcost"
for i in "${!CASES[@]}"; do
  lib+=$'\n'"redis.register_function('c$i', function(keys) local k = keys[1] for i = 1, 100 do ${CASES[$i]#*|} end return 1 end)"
done
redis-cli -p "$rp" function load "$lib" >/dev/null
fields=(); for f in $(seq 1 40); do fields+=("f$f" "value-of-field-$f"); done
redis-cli -p "$rp" hset h "${fields[@]}" >/dev/null
redis-cli -p "$rp" hset small "${fields[@]:0:24}" >/dev/null
redis-cli -p "$rp" sadd s node-2280DFF4 node-1 node-2 >/dev/null
ir() { callgrind_annotate "$(ls -t "$OUT"/cg.out.* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'; }
base=0
printf '%-34s %12s\n' "in a function, per call" "instructions"
for i in "${!CASES[@]}"; do
  callgrind_control -z "$RPID" >/dev/null
  for _ in $(seq 1 20); do echo "FCALL c$i 1 h"; done | redis-cli -p "$rp" >/dev/null
  callgrind_control -d "$RPID" >/dev/null
  total=$(ir)
  if [ "$i" = 0 ]; then
    base=$((total / 20)) # one FCALL (and its loop of 100 empty iterations)
    printf '%-34s %12d\n' "${CASES[$i]%%|*}" "$base"
  else
    printf '%-34s %12d\n' "${CASES[$i]%%|*}" "$(((total - 20 * base) / 2000))"
  fi
done
