#!/usr/bin/env bash
# User-space instructions per request, under valgrind's callgrind: strangler against bare Pingora,
# its access log on against off, and shadow on against off. A count of instructions does not move
# with the neighbours on a shared machine the way CPU time does, so it shows what a change to the
# request path did; it leaves out the kernel's share (about half of the CPU time in
# bench/compare.sh) and cache misses.
#
#   bench/instructions.sh            # DURATION=8 (seconds of load per proxy, under valgrind)
#   PROFILE=1 bench/instructions.sh  # also keep the callgrind files, for callgrind_annotate
#   CACHE=1 bench/instructions.sh    # also simulate the caches: L1 instruction and data misses
#   PGO=1 bench/instructions.sh      # profile-guided builds of both proxies (bench/pgo.sh)
#   CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_TARGET_DIR=/tmp/opt-s bench/instructions.sh  # another build
#   BEFORE=/tmp/strangler-7c63c8b bench/instructions.sh  # also an earlier strangler binary, same rules
#
# Setup: the backend of bench/compare.sh (nginx, a fixed 150-byte JSON answer on two ports); the
# proxy runs one worker under callgrind; wrk warms it up for 3 s, the counters are zeroed, wrk
# loads it for DURATION seconds over 8 connections, and the counters are dumped.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-8}"
. bench/common.sh
bench_work
install_missing instructions nginx wrk curl valgrind cmake
pgo_if_asked
# BIN=DIR: binaries built earlier (strangler and examples/), e.g. copied aside so that a build
# running meanwhile cannot swap them mid-run.
[ -n "${BIN:-}" ] || { cargo build --release --bin strangler --example bare_pingora 2>&1 | tail -1; }

start_backends

# The rules of bench/compare.sh: a migrated /api/orders route among 20, and the shadow pair.
R20="$(rules 20)" R20_NO_MAP="$(rules 20 off)" R20_AUTOPILOT="$(rules 20 autopilot)"
R20_TRACE0="$(rules 20 trace0)" R20_TRACE1="$(rules 20 trace1)"
R20_RATE="$(rules 20 ratelimit)" R20_RATE_IP="$(rules 20 ratelimit-ip)" S0="$(shadow_rules 0)" S1="$(shadow_rules 1)"

# measure NAME PORT CMD...: prints "NAME instructions-per-request".
measure() {
  local name="$1" port="$2"; shift 2
  local sim=(); [ -z "${CACHE:-}" ] || sim=(--cache-sim=yes)
  valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$WORK/$name.%p.out" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  wait_ready "$port" 600  # slow to start under valgrind
  wrk -t1 -c8 -d3s "http://127.0.0.1:$port/api/orders/1" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out; out="$(wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$port/api/orders/1")"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  local requests; requests="$(echo "$out" | awk '/requests in/ {print $1}')"
  local dump; dump="$(ls -t "$WORK/$name.$pid.out".* | head -1)"
  # Every event per request, by name (Ir; with CACHE=1 also I1mr, D1mr, D1mw, ...).
  awk -v n="$name" -v r="$requests" '/^events:/ {for (i = 2; i <= NF; i++) ev[i] = $i}
    /^summary:/ {printf "%s %.0f %d", n, $2 / r, r; for (i = 3; i <= NF; i++) printf " %s=%.0f", ev[i], $i / r; print ""}' "$dump"
}

export RUST_LOG=warn
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
strangler_run "$BIN"
STRANGLER=("${STRANGLER_RUN[@]}" --access-log false)
results="$WORK/results"
measure bare-pingora 8482 "$BIN/examples/bare_pingora" 127.0.0.1:8482 "$B1" "$B2" >> "$results"
measure strangler 8483 "${STRANGLER[@]}" --config "$R20" >> "$results"
# The migration map (issue 23) switched off: what every request pays for it is the difference.
measure strangler-map-off 8483 "${STRANGLER[@]}" --config "$R20_NO_MAP" >> "$results"
# The autopilot on, judging the measured route every second (issue 19).
measure strangler-autopilot 8483 "${STRANGLER[@]}" --config "$R20_AUTOPILOT" >> "$results"
# A rate limit on the route that the load never reaches (issue 21): one budget, one per client IP.
measure strangler-rate-limit 8483 "${STRANGLER[@]}" --config "$R20_RATE" >> "$results"
measure strangler-rate-limit-ip 8483 "${STRANGLER[@]}" --config "$R20_RATE_IP" >> "$results"
# Tracing (issue 24): a sampler of 0 (ids and traceparent, nothing sent), and every request sent.
measure strangler-trace-0 8483 "${STRANGLER[@]}" --config "$R20_TRACE0" >> "$results"
measure strangler-trace-1 8483 "${STRANGLER[@]}" --config "$R20_TRACE1" >> "$results"
if [ -n "${BEFORE:-}" ]; then
  # An earlier build, on the same rules (it has no map to switch off).
  measure strangler-before 8483 "$BEFORE" "${STRANGLER[@]:1}" --config "$R20" >> "$results"
fi
# The access log as shipped: a text line per request, to stderr (a file here).
RUST_LOG=info measure strangler-access-log 8483 "${STRANGLER_RUN[@]}" --config "$R20" >> "$results"
measure strangler-shadow-0 8483 "${STRANGLER[@]}" --config "$S0" >> "$results"
measure strangler-shadow-1 8483 "${STRANGLER[@]}" --config "$S1" >> "$results"

echo
echo "user-space instructions per request under callgrind (${DURATION}s of wrk, 8 connections, one worker):"
awk '{printf "%-20s %10d  (%d requests)", $1, $2, $3; for (i = 4; i <= NF; i++) printf "  %s", $i; print ""}' "$results"
ir() { awk -v n="$1" '$1 == n {print $2}' "$results"; }
awk -v s="$(ir strangler)" -v b="$(ir bare-pingora)" 'BEGIN {printf "strangler / bare-pingora: %.2fx\n", s / b}'
awk -v a="$(ir strangler-access-log)" -v b="$(ir strangler)" 'BEGIN {printf "access log on / off: %.2fx\n", a / b}'
awk -v a="$(ir strangler)" -v b="$(ir strangler-map-off)" 'BEGIN {printf "migration map on / off: %.3fx\n", a / b}'
awk -v a="$(ir strangler-rate-limit)" -v b="$(ir strangler)" 'BEGIN {printf "rate limit (one budget) on / off: %.3fx\n", a / b}'
awk -v a="$(ir strangler-rate-limit-ip)" -v b="$(ir strangler)" 'BEGIN {printf "rate limit (per client IP) on / off: %.3fx\n", a / b}'
awk -v a="$(ir strangler-autopilot)" -v b="$(ir strangler)" 'BEGIN {printf "autopilot on (judging the route every second) / off: %.3fx\n", a / b}'
awk -v a="$(ir strangler-trace-0)" -v b="$(ir strangler)" 'BEGIN {printf "tracing, sampler 0 / off: %.3fx\n", a / b}'
awk -v a="$(ir strangler-trace-1)" -v b="$(ir strangler)" 'BEGIN {printf "tracing, every request sampled and sent / off: %.3fx\n", a / b}'
if [ -n "${BEFORE:-}" ]; then
  awk -v a="$(ir strangler-map-off)" -v b="$(ir strangler-before)" 'BEGIN {printf "map off / the earlier build: %.3fx\n", a / b}'
  awk -v a="$(ir strangler)" -v b="$(ir strangler-before)" 'BEGIN {printf "map on / the earlier build: %.3fx\n", a / b}'
  awk -v s="$(ir strangler-before)" -v b="$(ir bare-pingora)" 'BEGIN {printf "the earlier build / bare-pingora: %.2fx\n", s / b}'
fi
awk -v a="$(ir strangler-shadow-1)" -v b="$(ir strangler-shadow-0)" 'BEGIN {printf "shadow, every request copied and compared / none: %.2fx\n", a / b}'
if [ -n "${CACHE:-}" ]; then
  ev() { awk -v n="$1" -v e="$2" '$1 == n {for (i = 4; i <= NF; i++) {split($i, kv, "="); if (kv[1] == e) print kv[2]}}' "$results"; }
  for e in I1mr D1mr D1mw; do
    awk -v s="$(ev strangler "$e")" -v b="$(ev bare-pingora "$e")" -v e="$e" 'BEGIN {printf "strangler / bare-pingora, %s: %.2fx\n", e, s / b}'
  done
fi
[ -z "${PROFILE:-}" ] || echo "callgrind files kept in $WORK"
