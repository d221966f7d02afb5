#!/usr/bin/env bash
# What batching shadow copies on one connection could save (issue 5): the CPU an HTTP/1.1 client
# spends per exchange when it writes 1, 2, 4 or 8 requests at once on each connection (pipelined)
# instead of one. The client is wrk, a lean one, standing in for the proxy's copy sender; the
# server is bench/compare.sh's nginx backend (150-byte answers). strangler does not pipeline: this
# measures the size of the prize, for deciding whether it should.
#
#   bench/pipelining.sh          # DURATION=5 (seconds per depth), ROUNDS=2
#
# Setup: nginx on CPU 0, wrk (one thread, 32 connections) on CPU 1; wrk's own user and system
# time per answered request, from /proc/PID/stat over the run; depths interleaved, medians shown.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5}" ROUNDS="${ROUNDS:-2}"
[ "$DURATION" -ge 2 ] || { echo "DURATION must be 2 seconds or more" >&2; exit 1; }
. bench/common.sh
bench_work
install_missing pipelining nginx wrk
start_backends

# wrk sends the request() string as is: DEPTH requests in one write.
cat > "$WORK/pipeline.lua" <<'LUA'
init = function(args)
  local depth = tonumber(args[1]) or 1
  local r = {}
  for i = 1, depth do r[i] = wrk.format(nil, "/api/orders/1") end
  req = table.concat(r)
end
request = function() return req end
LUA

results="$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for depth in 1 2 4 8; do
    taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" -s "$WORK/pipeline.lua" "http://$B1/" -- "$depth" > "$WORK/out" 2>&1 &
    w=$!
    sleep 0.5
    before="$(cpu_ticks "$w")"
    sleep "$((DURATION - 1))"
    after="$(cpu_ticks "$w")"
    wait "$w"
    if grep -q "Non-2xx" "$WORK/out"; then echo "depth $depth: $(grep Non-2xx "$WORK/out")" >&2; exit 1; fi
    rps="$(awk '/Requests\/sec/ {print $2}' "$WORK/out")"
    # CPU over DURATION - 1 seconds in the middle of the run, at the run's average rate.
    echo "$depth $(echo "$before $after" | awk -v r="$rps" -v s="$((DURATION - 1))" -v hz="$(getconf CLK_TCK)" \
      '{printf "%.2f", ($3 + $4 - $1 - $2) / hz * 1e6 / (r * s)}')" >> "$results"
  done
done

echo "wrk's CPU per answered request, ${DURATION}s runs, medians of $ROUNDS rounds:"
one="$(awk '$1 == 1 {print $2}' "$results" | median)"
for depth in 1 2 4 8; do
  us="$(awk -v d="$depth" '$1 == d {print $2}' "$results" | median)"
  awk -v d="$depth" -v u="$us" -v o="$one" 'BEGIN {printf "  %d request(s) per write: %5.2f µs (%.2fx of one)\n", d, u, u / o}'
done
