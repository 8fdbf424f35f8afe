# Sourced by bench/run.sh after the measurements: prints docs/benchmarks.md from the
# variables the phases set and the JSON summaries in $WORK, then bench/notes.md (the
# hand-written reading of the figures: what bounds each one that misses its target).

# The kernel's DAMON monitor during the run, when the machine has one (bench/lib.sh).
kdamond_note() {
  local t=$(($(kdamond_ticks) - KDAMOND_BEFORE))
  [ "$t" -gt 0 ] || return 0
  printf ' The kernel'"'"'s DAMON monitor (`kdamond`) took %s s of CPU during it, in bursts that hold a core for 10-40 ms (see "Sparse traffic, round 13" below).' \
    "$(printf '%.1f' "$(echo "$t / $CLK_TCK" | bc -l)")"
}

cat <<EOF
# Benchmarks

Figures of \`make bench\` (driver: [bench/run.sh](../bench/run.sh)), written by the driver
itself. Run on **$(date +%F)**, commit \`$GIT\`, machine: $MACHINE; Redis $REDIS_V
(a dedicated \`redis-server\` on a free loopback port, no persistence). The load generator
(\`switchyard sim\`, same release binary), the instances and Redis share the machine's
$(nproc) cores; load average before the run: $LOAD_BEFORE. Every figure is the median of
$RUNS runs (per-run values in brackets); comparisons ran side by side in the same run. The whole bench took $(($(date +%s) - STARTED_AT)) s.$(kdamond_note)

## Summary

| figure | value | target | |
|---|---|---|---|
| script calls per job on the lingua path (submit + job_result) | $(fmt "$LINGUA") | ≤ 2 | $(verdict "$LINGUA <= 2.0001") |
| dispatch overhead p50 at 20 % load | $(fmt "$D50" 3) ms | ≤ 0.5 ms | $(verdict "$D50 <= 0.5") |
| dispatch overhead p99 at 20 % load | $(fmt "$D99" 3) ms | ≤ 2 ms | $(verdict "$D99 <= 2") |
| saturation throughput, one instance | $(fmt "$SAT" 0) jobs/s | | |
| Redis-bound limit (trivial FCALL/s ÷ scripts per job) | $(fmt "$LIMIT" 0) jobs/s | | |
| finished job record (\`MEMORY USAGE\`) | $(fmt "$JOB_REC_B" 0) bytes | ≤ 400 bytes | $(verdict "$JOB_REC_B <= 400") |
| steady-state Redis memory per (job/s): records + result logs | $(fmt "$(echo "$MEM_PER_RATE / 1048576" | bc -l)" 2) MiB | | |
| the same with $(fmt "$TTS_BYTES" 0) bytes of TTS audio per result | $(fmt "$(echo "$MEM_PER_RATE_TTS / 1048576" | bc -l)" 2) MiB | | |
| one instance ÷ Redis-bound limit | $(fmt "$SHARE" 1) % | ≥ 50 % | $(verdict "$SHARE >= 50") |
| 10k nodes + 10k sessions, instance RSS (projected from $SCALE_SESSIONS sessions) | $(fmt "$(echo "$RSS_10K / 1024" | bc -l)" 0) MiB | ≤ 1024 MiB | $(verdict "$RSS_10K <= 1048576") |
| cross-instance hop ÷ same instance, dispatch p50 | $(fmt "$(ratio .dispatch.p50_ms)") × | | |
| cross-instance hop, added end-to-end p50 | $(fmt "$HOP_E50" 3) ms | ≤ 0.3 ms | $(verdict "$HOP_E50 <= 0.3") |
| sparse, 1 session at 1 utterance/s: end-to-end p50 / p99 | $(fmt "$SP1_E50" 2) / $(fmt "$SP1_E99" 2) ms | ≤ 1.5 / 3 ms | $(verdict "$SP1_E50 <= 1.5 && $SP1_E99 <= 3") |
| sparse, 10 sessions at 1 utterance/s each: end-to-end p50 / p99 | $(fmt "$SP10_E50" 2) / $(fmt "$SP10_E99" 2) ms | ≤ 1.5 / 3 ms | $(verdict "$SP10_E50 <= 1.5 && $SP10_E99 <= 3") |

Integrity over every load run of this bench: \`$INTEGRITY\` (lost, duplicates,
order violations and oversold must be 0).

## 1. Redis-bound limit

\`$EVAL_CMD\` (a function returning 1; the benchmark client shares the cores with Redis):
**$(fmt "$TRIVIAL_PER_S" 0) FCALL/s** [$(printf '%s, ' "${EVALS[@]}" | sed 's/, $//')].
Divided by the $(fmt "$LINGUA") script calls a job needs on the lingua path: **$(fmt "$LIMIT" 0) jobs/s**.
A bound from the real scripts instead: Redis spends $(fmt "$RCPU_US" 0) µs of CPU per job
(section 4), so one Redis core sustains at most **$(fmt "$REAL_LIMIT" 0) jobs/s**; one instance
reaches $(fmt "$SHARE_REAL" 0) % of that.

## 2. Saturation throughput of one instance

\`$(cat "$WORK/sat-1.cmd" | sed "s/$PA/PORT/")\`

| figure | median | runs |
|---|---|---|
| completed jobs/s (translation_result) | $(fmt "$SAT" 0) | $(list sat .results_per_s) |
| end-to-end p50 / p99 (ms) | $(fmt "$(med sat .end_to_end.p50_ms)" 1) / $(fmt "$(med sat .end_to_end.p99_ms)" 1) | |
| dispatch p50 / p99 (ms) | $(fmt "$(med sat .dispatch.p50_ms)" 1) / $(fmt "$(med sat .dispatch.p99_ms)" 1) | |
| instance CPU (% of one core) | $(fmt "$(median "${INST_CPU[@]}")" 0) | |
| Redis CPU (% of one core) | $(fmt "$(median "${REDIS_CPU[@]}")" 0) | |
| whole machine busy (% of one core; $(nproc) cores = $(($(nproc) * 100)) %) | $(fmt "$(median "${MACHINE_CPU[@]}")" 0) | |
| of which the load generator and anything else (difference) | $(fmt "$(echo "$(median "${MACHINE_CPU[@]}") - $(median "${INST_CPU[@]}") - $(median "${REDIS_CPU[@]}")" | bc -l)" 0) | |

## 3. Dispatch overhead at 20 % load

Open loop at $(fmt "$RATE" 0) utterances/s (20 % of the saturation figure), nodes answering at once.
Dispatch = the session writes \`utterance\` → the node reads \`job_assign\` (both ends in the
sim, correlated by \`(session_id, utterance_index)\`); end-to-end = \`utterance\` written →
\`translation_result\` read.

\`$(cat "$WORK/lat-1.cmd" | sed "s/$PA/PORT/")\`

| latency | p50 | p90 | p99 | max |
|---|---|---|---|---|
| dispatch (ms) | $(fmt "$D50" 3) [$(list lat .dispatch.p50_ms)] | $(fmt "$D90" 3) | $(fmt "$D99" 3) [$(list lat .dispatch.p99_ms)] | $(fmt "$DMAX" 3) |
| end-to-end (ms) | $(fmt "$E50" 3) | $(fmt "$(med lat .end_to_end.p90_ms)" 3) | $(fmt "$E99" 3) | $(fmt "$(med lat .end_to_end.max_ms)" 3) |

Achieved rate: $(fmt "$(med lat .results_per_s)" 0) results/s. Mean script round trip seen by the
instance in these runs (\`switchyard_script_duration_seconds\`): \`submit\` $(fmt "$SUBMIT_MS" 3) ms,
\`job_result\` $(fmt "$RESULT_MS" 3) ms.

## 4. Redis cost per job

A fixed workload of 3000 jobs (closed loop) between \`CONFIG RESETSTAT\` and \`INFO
commandstats\`, plus the instance's \`switchyard_script_calls_total\` by script. Everything
else running in that window (sweeps every 200 ms, presence beats, node heartbeats) is
included in the per-job figures, so they are slight over-estimates.

\`$(cat "$WORK/cost-1.cmd" | sed "s/$PA/PORT/")\`

| per completed job | median |
|---|---|
| script calls on the lingua path (\`submit\` + \`job_result\`) | $(fmt "$LINGUA" 3) |
| script calls (FCALL), all scripts | $(fmt "$EV_JOB" 3) |
| round trips (FCALL + the pool's UNWATCH/PING recycle check) | $(fmt "$RT_JOB" 3) |
| Redis µs in FCALL (commandstats) | $(fmt "$EV_US" 1) |
| Redis µs in all commands (commandstats) | $(fmt "$ALL_US" 1) |
| Redis process CPU µs (INFO cpu, incl. networking) | $(fmt "$RCPU_US" 1) |
| instance process CPU µs (/proc/PID/stat) | $(fmt "$ICPU_US" 1) |

Redis memory a job leaves behind (after the last run; \`MEMORY USAGE\`, median of 50 finished
job records; log entries = \`MEMORY USAGE\` of 20 sessions' log keys ÷ their entries):

| per job | bytes | kept for |
|---|---|---|
| finished job record \`job:<id>\` | $(fmt "$JOB_REC_B" 0) | \`jobs.record_ttl_ms\` = $((JOB_TTL_MS / 1000)) s |
| result log: terminal message (\`:results\`, TTS audio included) | $(fmt "$LOG_RES_B" 0) | \`session.result_retention_ms\` = $((RETENTION_MS / 1000)) s |
| result log: idempotency entry (\`:jobs\`) + delivery time (\`:rtime\`) | $(fmt "$(echo "$LOG_JOBS_B + $LOG_RTIME_B" | bc -l)" 0) | same |
| **steady-state Redis memory per (job/s)** | **$(fmt "$(echo "$MEM_PER_RATE / 1048576" | bc -l)" 2) MiB** | ttl × record + retention × log |
| result log: terminal message with $(fmt "$TTS_BYTES" 0) bytes of TTS audio (\`sim --tts-bytes $TTS_BYTES\`) | $(fmt "$LOG_RES_TTS_B" 0) | same |
| **steady-state Redis memory per (job/s), with that TTS audio** | **$(fmt "$(echo "$MEM_PER_RATE_TTS / 1048576" | bc -l)" 2) MiB** | |

At the 10,000 jobs/s target a cell's Redis holds $(fmt "$(echo "$MEM_PER_RATE * 10000 / 1073741824" | bc -l)" 2) GiB of finished jobs and result logs with
the sim's 10-byte TTS placeholder, $(fmt "$(echo "$MEM_PER_RATE_TTS * 10000 / 1073741824" | bc -l)" 2) GiB with $(fmt "$TTS_BYTES" 0) bytes of TTS audio per result: the
result log kept for resume (\`session.result_retention_ms\`) is what a real cell's memory is
made of (docs/scaling.md).

So one Redis core can complete at most $(fmt "$(echo "1000000 / $RCPU_US" | bc -l)" 0) jobs/s, one instance core
$(fmt "$(echo "1000000 / $ICPU_US" | bc -l)" 0) jobs/s (instances scale out; the cell's Redis does not).

Where the Redis time goes (last run; commands called inside the scripts are counted under
their own names *and* inside \`fcall\`):

| command | calls per job | µs per job |
|---|---|---|
$BREAKDOWN

## 5. Cross-instance hop

Two sims side by side in each run, both with sessions on instance A: one with its nodes on A
(pair zh/en), one with its nodes on B (pair ja/ko, so its jobs can only go to B: the
\`job_assign\` travels through B's inbox stream and the result back through A's).
$(fmt "$XRATE" 0) utterances/s each, nodes answering at once.

\`$(cat "$WORK/local-1.cmd" | sed "s/$PA/PORT_A/g; s/$PB/PORT_B/g")\`
\`$(cat "$WORK/remote-1.cmd" | sed "s/$PA/PORT_A/g; s/$PB/PORT_B/g")\`

| latency (ms) | same instance | across instances | ratio (median of per-run ratios) |
|---|---|---|---|
| dispatch p50 | $(fmt "$(med local .dispatch.p50_ms)" 3) | $(fmt "$(med remote .dispatch.p50_ms)" 3) | $(fmt "$(ratio .dispatch.p50_ms)") × |
| dispatch p99 | $(fmt "$(med local .dispatch.p99_ms)" 3) | $(fmt "$(med remote .dispatch.p99_ms)" 3) | $(fmt "$(ratio .dispatch.p99_ms)") × |
| end-to-end p50 | $(fmt "$(med local .end_to_end.p50_ms)" 3) | $(fmt "$(med remote .end_to_end.p50_ms)" 3) | $(fmt "$(ratio .end_to_end.p50_ms)") × |
| end-to-end p99 | $(fmt "$(med local .end_to_end.p99_ms)" 3) | $(fmt "$(med remote .end_to_end.p99_ms)" 3) | $(fmt "$(ratio .end_to_end.p99_ms)") × |

Added latency at p50: dispatch +$(fmt "$(echo "$(med remote .dispatch.p50_ms) - $(med local .dispatch.p50_ms)" | bc -l)" 3) ms, end-to-end +$(fmt "$(echo "$(med remote .end_to_end.p50_ms) - $(med local .end_to_end.p50_ms)" | bc -l)" 3) ms.

## 6. Scale: $SCALE_NODES nodes + $SCALE_SESSIONS idle sessions on one instance

Nodes heartbeat every 5 s (instance \`node.heartbeat_interval_ms\` = 5000, a third of the
lingua node's 15 s, to make the cost measurable); sessions are idle (a \`client_heartbeat\`
every 30 s). This machine's open-file limit is $HARD per process (not raisable here), and the
instance needs one descriptor per connection, so the run holds $SCALE_SESSIONS sessions and the
10k + 10k figure is projected linearly from the measured per-connection cost.
Connected: $NODES_UP nodes (in $T_NODES s), $SESSIONS_UP sessions (in $T_SESSIONS s).

\`$(sed "s/$PS/PORT/" "$WORK/scale-nodes.cmd")\`
\`$(sed "s/$PS/PORT/" "$WORK/scale-sessions.cmd")\`

| figure | value |
|---|---|
| instance RSS: idle / + $SCALE_NODES nodes / + $SCALE_SESSIONS sessions | $(fmt "$(echo "$RSS0 / 1024" | bc -l)" 0) / $(fmt "$(echo "$RSS1 / 1024" | bc -l)" 0) / $(fmt "$(echo "$RSS2 / 1024" | bc -l)" 0) MiB |
| RSS per node connection / per session connection | $(fmt "$PER_NODE" 1) / $(fmt "$PER_SESSION" 1) KiB |
| projected RSS for 10,000 + 10,000 | $(fmt "$(echo "$RSS_10K / 1024" | bc -l)" 0) MiB |
| instance CPU (% of one core) | $(fmt "$(median "${W_CPU[@]}")" 1) [$(printf '%.1f, ' "${W_CPU[@]}" | sed 's/, $//')] |
| heartbeats/s handled | $(fmt "$(median "${W_HB[@]}")" 0) |
| FCALL calls per heartbeat (sweeps, presence, session heartbeats included) | $(fmt "$(median "${W_CALLS[@]}")" 3) |
| Redis µs in FCALL per heartbeat (same) | $(fmt "$(median "${W_US[@]}")" 1) |
| Redis CPU (% of one core) | $(fmt "$(median "${W_RCPU[@]}")" 1) |
| Redis used_memory | $(fmt "$(echo "$REDIS_MEM / 1048576" | bc -l)" 0) MiB |

Medians of $RUNS consecutive 10 s windows of the same connections.

## 7. Sparse traffic

One utterance per second per session, nodes answering at once (\`--delay-ms 0-0\`): every
frame travels on a socket that was idle for a second, which is where a socket without
TCP_NODELAY waits for the peer's delayed ACK (~40 ms on Linux; issue 14). Each row is one
\`switchyard sim\` command on instance A (the instance of sections 2-5), $SPARSE_S s per run, $RUNS runs;
per-run values in brackets.

| sessions | end-to-end p50 (ms) | end-to-end p99 (ms) | dispatch p50 (ms) | dispatch p99 (ms) | results | command |
|---|---|---|---|---|---|---|
| 1 | $(fmt "$SP1_E50" 3) [$(list sparse1 .end_to_end.p50_ms)] | $(fmt "$SP1_E99" 3) [$(list sparse1 .end_to_end.p99_ms)] | $(fmt "$(med sparse1 .dispatch.p50_ms)" 3) | $(fmt "$(med sparse1 .dispatch.p99_ms)" 3) | $(over_runs sparse1 .results | paste -sd+ | bc) | \`$(sed "s/$PA/PORT/" "$WORK/sparse1-1.cmd")\` |
| 1, one utterance after another (closed loop) | $(fmt "$(med serial .end_to_end.p50_ms)" 3) [$(list serial .end_to_end.p50_ms)] | $(fmt "$(med serial .end_to_end.p99_ms)" 3) [$(list serial .end_to_end.p99_ms)] | $(fmt "$(med serial .dispatch.p50_ms)" 3) | $(fmt "$(med serial .dispatch.p99_ms)" 3) | $(over_runs serial .results | paste -sd+ | bc) | \`$(sed "s/$PA/PORT/" "$WORK/serial-1.cmd")\` |
| 10 | $(fmt "$SP10_E50" 3) [$(list sparse10 .end_to_end.p50_ms)] | $(fmt "$SP10_E99" 3) [$(list sparse10 .end_to_end.p99_ms)] | $(fmt "$(med sparse10 .dispatch.p50_ms)" 3) | $(fmt "$(med sparse10 .dispatch.p99_ms)" 3) | $(over_runs sparse10 .results | paste -sd+ | bc) | \`$(sed "s/$PA/PORT/" "$WORK/sparse10-1.cmd")\` |

What bounds the 1-session figure: one session, one node answering at once, utterances sent
with a growing gap between them (\`bash bench/idle.sh BIN ${IDLE_S:-8}\`, its own instance and
redis-server; at most 200 utterances or ${IDLE_S:-8} s per gap). The scheduler does the same work
per utterance at every gap; what changes is how long every process on the path (simulator,
instance, Redis) sat idle before the utterance woke it. The second table, from
\`bench/wake.py\`, is the same question without Switchyard: two processes ping-ponging one byte
over loopback TCP after the same sleeps (a round trip = two wake-ups).

$IDLE_CURVE

## 8. Routing explanation

What recording each dispatch's routing explanation costs (\`jobs.explain\`: \`route:<n>\` and
\`end:<n>\` on the job record, built with \`table.concat\` in the dispatching script's own
\`HSET\`): the same build with it off ("old") and on ("new"), alternating rounds, fresh
redis-server each, \`bash bench/explain.sh\` (bench/ab.sh). The row to read is Redis µs in
script calls per job (\`INFO commandstats\`).

$EXPLAIN_AB

## 9. Cells on a Redis Cluster

One cell against three cells on a 3-primary Redis Cluster (no replicas), one instance, the
saturation workload of section 2 split over the cells (three simulators, each presenting
tokens with another cell's \`cell\` claim, 6 nodes and 16 sessions each; one simulator with
18 nodes and 48 sessions for one cell). Redis CPU is \`INFO cpu\` of each primary over the
run, in % of one core. This machine has 2 cores shared by the instance, the simulators and
Redis, so the total does not triple: the row to read is how evenly the three primaries share
the Redis work (docs/scaling.md, "Several cells").

$CELLS_AB
EOF
if [ -f bench/notes.md ]; then
  echo
  cat bench/notes.md
fi

