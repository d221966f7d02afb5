#!/usr/bin/env bash
# strangler next to nginx, HAProxy and a bare Pingora proxy, on this machine, in one run.
#
#   bench/compare.sh            # DURATION=10 ROUNDS=2 RATE_ROUNDS=5 by default
#   PGO=1 bench/compare.sh      # profile-guided builds of strangler and bare Pingora (bench/pgo.sh)
#   BEFORE=/tmp/strangler-OLD bench/compare.sh  # also an earlier strangler binary, same rules
#   ROUNDS=5 bench/compare.sh   # CPU ratios such as the map's few percent need more rounds
#   ONLY="bare-pingora strangler strangler-map-off" STEADY=0 bench/compare.sh
#                               # only these rows of the CPU part, and no fixed-rate or idle part
#
# Setup (the one described in issue 8): the backend is nginx answering a fixed 200 on two ports,
# pinned with wrk to CPU 0. Each proxy runs one worker pinned to CPU 1 and routes /api/orders/ to
# one backend port and everything else to the other. The measure is the proxy's own CPU time per
# request, from /proc/PID/stat over the run. Proxies run interleaved, ROUNDS times each; the
# medians are reported, then strangler's ratios against the others. strangler also runs with
# 1,000 and 10,000 routes to show how the cost grows with the rule count.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
CONNS="${CONNS:-32}"
export RUST_LOG=warn
. bench/common.sh
bench_work
install_missing compare nginx haproxy wrk curl cmake
pgo_if_asked
# BIN=DIR: binaries built earlier (strangler and examples/), e.g. copied aside so that a build
# running meanwhile cannot swap them mid-run.
[ -n "${BIN:-}" ] || { cargo build --release --bin strangler --example bare_pingora --example loadgen 2>&1 | tail -1; }
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
LOADGEN="$BIN/examples/loadgen"
RATE="${RATE:-5000}" IDLE="${IDLE:-10000}" RATE_ROUNDS="${RATE_ROUNDS:-5}"

mkdir -p "$WORK/nginx-proxy" "$WORK/nginx-proxy-log" "$WORK/rules"
cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/nginx-proxy/pid; error_log stderr warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  upstream orders { server $B1; keepalive 64; }
  upstream other { server $B2; keepalive 64; }
  server { listen 127.0.0.1:8480;
    location /api/orders/ { proxy_pass http://orders; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location / { proxy_pass http://other; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
# The same nginx proxy with its access log on (the default combined format, to a file).
sed -e "s|access_log off;|access_log $WORK/nginx-access.log;|" -e "s|$WORK/nginx-proxy/pid|$WORK/nginx-proxy-log/pid|" \
  "$WORK/nginx-proxy/nginx.conf" > "$WORK/nginx-proxy-log/nginx.conf"
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend in
  bind 127.0.0.1:8481
  acl orders path_beg /api/orders/
  use_backend orders if orders
  default_backend other
backend orders
  server b1 $B1
backend other
  server b2 $B2
EOF
start_backends

# launch NAME PORT LOG CMD...: start the proxy on CPU 1, wait until it answers, warm it up from
# CPU 0. Sets pid (to stop it) and measured (the process doing the work).
launch() {
  local name="$1" port="$2" log="$3"; shift 3
  taskset -c 1 "$@" >"$log" 2>&1 &
  pid=$!
  wait_ready "$port"
  measured="$pid"
  # nginx: the worker does the work, not the master.
  case "$name" in nginx*) measured="$(pgrep -P "$pid" | head -1)";; esac
  taskset -c 0 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/api/orders/1" >/dev/null  # warm-up
}

# run NAME PORT CMD...: load the proxy from CPU 0 and print one result line. The request is
# GET $REQ_PATH (/api/orders/1, the 150-byte answer, by default).
# wanted NAME: the row is in ONLY, or ONLY is empty.
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

run() {
  local name="$1" port="$2"; shift 2
  wanted "$name" || return 0
  launch "$name" "$port" "$WORK/$name.log" "$@"
  local copies_before; copies_before="$(compared_copies "$name")"
  local before; before="$(cpu_ticks "$measured")"
  local out; out="$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port${REQ_PATH:-/api/orders/1}")"
  local after; after="$(cpu_ticks "$measured")"
  local copies_after; copies_after="$(compared_copies "$name")"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  # Answers other than 200 (a backend that cannot read its file, say) measure something else.
  if echo "$out" | grep -q "Non-2xx"; then
    echo "$name: $(echo "$out" | grep "Non-2xx"); the run measured errors, not the proxy. Logs: $WORK" >&2
    exit 1
  fi
  local requests rps p50 p99
  requests="$(echo "$out" | awk '/requests in/ {print $1}')"
  # Copied rows: the share of requests whose copy was compared. A copy skipped (at the in-flight
  # cap, say) would make the run look cheaper than every request copied.
  local compared="-"
  [ "$copies_before" = "-" ] || compared="$(awk -v a="$copies_before" -v b="$copies_after" -v n="$requests" 'BEGIN {printf "%.3f", (b - a) / n}')"
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p50="$(echo "$out" | awk '$1 == "50%" {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  local hz; hz="$(getconf CLK_TCK)"
  # CPU, user and system µs per request.
  local us; us="$(echo "$before $after" | awk -v hz="$hz" -v n="$requests" '{u = ($3 - $1) / hz * 1e6 / n; s = ($4 - $2) / hz * 1e6 / n; printf "%.1f %.1f %.1f", u + s, u, s}')"
  echo "$name $rps $p50 $p99 $us $compared"
}

# compared_copies NAME: for a row that copies (strangler-shadow-1*), the copies compared so far
# (match or mismatch, from strangler's metrics); "-" for any other row.
compared_copies() {
  case "$1" in
    strangler-shadow-1*) curl -fsS "http://$ADMIN/metrics" |
      awk '/^strangler_shadow_total\{result="(match|mismatch)"/ {c += $2} END {print c + 0}';;
    *) echo "-";;
  esac
}

results="$WORK/results"
R20_RATE="$(rules 20 ratelimit)" R20_RATE_IP="$(rules 20 ratelimit-ip)"
R20_TRACE0="$(rules 20 trace0)" R20_TRACE1="$(rules 20 trace1)"
R20="$(rules 20)" R20_NO_MAP="$(rules 20 off)" R1K="$(rules 1000)" R10K="$(rules 10000)" S0="$(shadow_rules 0)" S1="$(shadow_rules 1)"
strangler_run "$BIN"
STRANGLER=("${STRANGLER_RUN[@]}" --access-log false)
# Access log on, as shipped (one line per request at info level, to stderr: a file here).
STRANGLER_LOG=(env RUST_LOG=info "${STRANGLER_RUN[@]}")
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run nginx 8480 nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy" >> "$results"
  run haproxy 8481 haproxy -f "$WORK/haproxy.cfg" >> "$results"
  run bare-pingora 8482 "$BIN/examples/bare_pingora" 127.0.0.1:8482 "$B1" "$B2" >> "$results"
  run strangler 8483 "${STRANGLER[@]}" --config "$R20" >> "$results"
  # The migration map (issue 23) switched off: what every request pays for it is the difference.
  run strangler-map-off 8483 "${STRANGLER[@]}" --config "$R20_NO_MAP" >> "$results"
  # A rate limit on the route (issue 21), never reached: the check's own cost.
  run strangler-rate-limit 8483 "${STRANGLER[@]}" --config "$R20_RATE" >> "$results"
  run strangler-rate-limit-ip 8483 "${STRANGLER[@]}" --config "$R20_RATE_IP" >> "$results"
  # Tracing (issue 24) configured with a sampler of 0: the spans' ids and the traceparent, nothing
  # sent; then every request sampled and sent to the collector.
  run strangler-trace-0 8483 "${STRANGLER[@]}" --config "$R20_TRACE0" >> "$results"
  run strangler-trace-1 8483 "${STRANGLER[@]}" --config "$R20_TRACE1" >> "$results"
  # An earlier build on the same rules (BEFORE=PATH): the cost of a round's changes.
  [ -z "${BEFORE:-}" ] || run strangler-before 8483 "$BEFORE" "${STRANGLER[@]:1}" --config "$R20" >> "$results"
  run strangler-1k-routes 8483 "${STRANGLER[@]}" --config "$R1K" >> "$results"
  run strangler-10k-routes 8483 "${STRANGLER[@]}" --config "$R10K" >> "$results"
  run nginx-access-log 8480 nginx -c "$WORK/nginx-proxy-log/nginx.conf" -p "$WORK/nginx-proxy-log" >> "$results"
  run strangler-access-log 8483 "${STRANGLER_LOG[@]}" --config "$R20" >> "$results"
  run strangler-shadow-0 8483 "${STRANGLER[@]}" --config "$S0" >> "$results"
  run strangler-shadow-1 8483 "${STRANGLER[@]}" --config "$S1" >> "$results"
  REQ_PATH=/api/orders/big run strangler-shadow-0-10k 8483 "${STRANGLER[@]}" --config "$S0" >> "$results"
  REQ_PATH=/api/orders/big run strangler-shadow-1-10k 8483 "${STRANGLER[@]}" --config "$S1" >> "$results"
done

echo
echo "medians of $ROUNDS rounds (p50 and p99: first round), ${DURATION}s each, $CONNS connections, proxy on CPU 1 with one worker:"
printf "%-22s %12s %10s %10s %14s %8s %8s %9s\n" proxy "requests/s" p50 p99 "CPU µs/req" user system compared
declare -A cpu user system
for name in nginx haproxy bare-pingora strangler strangler-map-off strangler-rate-limit strangler-rate-limit-ip strangler-trace-0 strangler-trace-1 ${BEFORE:+strangler-before} strangler-1k-routes strangler-10k-routes nginx-access-log strangler-access-log strangler-shadow-0 strangler-shadow-1 strangler-shadow-0-10k strangler-shadow-1-10k; do
  wanted "$name" || continue
  rps="$(awk -v n="$name" '$1 == n {print $2}' "$results" | median)"
  p50="$(awk -v n="$name" '$1 == n {print $3}' "$results" | head -1)"
  p99="$(awk -v n="$name" '$1 == n {print $4}' "$results" | head -1)"
  cpu[$name]="$(awk -v n="$name" '$1 == n {print $5}' "$results" | median)"
  user[$name]="$(awk -v n="$name" '$1 == n {print $6}' "$results" | median)"
  system[$name]="$(awk -v n="$name" '$1 == n {print $7}' "$results" | median)"
  compared="$(awk -v n="$name" '$1 == n {print $8}' "$results" | sort -g | head -1)"
  printf "%-22s %12s %10s %10s %14s %8s %8s %9s\n" "$name" "$rps" "$p50" "$p99" "${cpu[$name]}" "${user[$name]}" "${system[$name]}" "$compared"
done
echo "(compared: the share of requests whose copy was compared, lowest round; 1.000 is every one)"
echo
# have NAME...: every one of these rows was measured (ONLY may leave some out).
have() { local n; for n in "$@"; do [ -n "${cpu[$n]:-}" ] || return 1; done; }
# paired A B: A's CPU per request over B's in the same round (the k-th run of each), median over
# the rounds: steadier than the ratio of the medians when the machine's load drifts between rows.
paired() {
  awk -v a="$1" -v b="$2" '$1 == a {x[++i] = $5} $1 == b {y[++j] = $5}
    END {for (k = 1; k <= (i < j ? i : j); k++) printf "%.3f\n", x[k] / y[k]}' "$results" | median
}
for base in nginx haproxy bare-pingora; do
  have strangler "$base" || continue
  awk -v s="${cpu[strangler]}" -v b="${cpu[$base]}" -v n="$base" 'BEGIN {printf "strangler / %-13s %.2fx CPU per request\n", n, s / b}'
done
! have strangler bare-pingora || echo "strangler / bare-pingora  $(paired strangler bare-pingora)x CPU per request, median of the rounds"
! have strangler strangler-before || awk -v a="${cpu[strangler]}" -v b="${cpu[strangler-before]}" -v p="$(paired strangler strangler-before)" \
  'BEGIN {printf "strangler / the earlier build: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / b, p}'
! have strangler bare-pingora || awk -v su="${user[strangler]}" -v ss="${system[strangler]}" -v bu="${user[bare-pingora]}" -v bs="${system[bare-pingora]}" \
  'BEGIN {printf "strangler / bare-pingora  %.2fx user time, %.2fx system time per request\n", su / bu, ss / bs}'
! have strangler strangler-map-off || awk -v a="${cpu[strangler]}" -v s="${cpu[strangler-map-off]}" -v p="$(paired strangler strangler-map-off)" \
  'BEGIN {printf "migration map on / off: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / s, p}'
! have strangler strangler-rate-limit || awk -v a="${cpu[strangler-rate-limit]}" -v s="${cpu[strangler]}" -v p="$(paired strangler-rate-limit strangler)" \
  'BEGIN {printf "rate limit (one budget) on / off: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / s, p}'
! have strangler strangler-rate-limit-ip || awk -v a="${cpu[strangler-rate-limit-ip]}" -v s="${cpu[strangler]}" -v p="$(paired strangler-rate-limit-ip strangler)" \
  'BEGIN {printf "rate limit (per client IP) on / off: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / s, p}'
! have strangler strangler-trace-0 || awk -v a="${cpu[strangler-trace-0]}" -v s="${cpu[strangler]}" -v p="$(paired strangler-trace-0 strangler)" \
  'BEGIN {printf "tracing, sampler 0 / off: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / s, p}'
! have strangler strangler-trace-1 || awk -v a="${cpu[strangler-trace-1]}" -v s="${cpu[strangler]}" -v p="$(paired strangler-trace-1 strangler)" \
  'BEGIN {printf "tracing, every request sampled and sent / off: %.3fx CPU per request (median of the rounds: %.3fx)\n", a / s, p}'
! have strangler-map-off strangler-before strangler || awk -v a="${cpu[strangler-map-off]}" -v b="${cpu[strangler-before]}" -v c="${cpu[strangler]}" \
  -v p="$(paired strangler-map-off strangler-before)" -v q="$(paired strangler strangler-before)" \
  'BEGIN {printf "map off / the earlier build: %.3fx, map on / the earlier build: %.3fx CPU per request (medians of the rounds: %.3fx, %.3fx)\n", a / b, c / b, p, q}'
! have strangler strangler-10k-routes || awk -v a="${cpu[strangler-10k-routes]}" -v s="${cpu[strangler]}" 'BEGIN {printf "strangler 10k routes / 20 routes: %.2fx\n", a / s}'
! have strangler strangler-access-log nginx nginx-access-log || awk -v a="${cpu[strangler-access-log]}" -v s="${cpu[strangler]}" -v n="${cpu[nginx-access-log]}" -v m="${cpu[nginx]}" \
  'BEGIN {printf "access log on / off: strangler %.2fx, nginx %.2fx CPU per request\n", a / s, n / m}'
! have strangler-shadow-1 strangler-shadow-0 || awk -v a="${cpu[strangler-shadow-1]}" -v s="${cpu[strangler-shadow-0]}" 'BEGIN {printf "strangler shadow, every request copied and compared / none: %.2fx CPU per request\n", a / s}'
! have strangler-shadow-1-10k strangler-shadow-0-10k || awk -v a="${cpu[strangler-shadow-1-10k]}" -v s="${cpu[strangler-shadow-0-10k]}" 'BEGIN {printf "the same with 10 KiB answers: %.2fx CPU per request\n", a / s}'
[ "${STEADY:-1}" != 0 ] || exit 0

# p99 at a fixed, moderate rate (open loop, latency counted from when each request was due):
# RATE_ROUNDS runs each (default 5), proxies interleaved, medians reported (one run's p99 moves a
# lot). Then memory
# with IDLE idle keep-alive client connections, once each.
echo
echo "fixed rate: $RATE requests/s for ${DURATION}s over $CONNS connections, medians of $RATE_ROUNDS rounds; then $IDLE idle keep-alive connections:"
steady_results="$WORK/steady"
steady() {
  local name="$1" port="$2"; shift 2
  launch "$name" "$port" "$WORK/$name-steady.log" "$@"
  local line; line="$(taskset -c 0 "$LOADGEN" rate "127.0.0.1:$port" /api/orders/1 "$RATE" "$DURATION" "$CONNS")"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  read -r _sent _ok errors p50 p99 max <<< "$line"
  echo "$name $p50 $p99 $max $errors" >> "$steady_results"
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A p99s rss_idle rss_base held_by
idle_memory() {
  local name="$1" port="$2"; shift 2
  launch "$name" "$port" "$WORK/$name-idle.log" "$@"
  local before; before="$(rss_kib "$measured")"
  taskset -c 0 "$LOADGEN" idle "127.0.0.1:$port" /api/orders/1 "$IDLE" 8 > "$WORK/$name-idle.out" &
  local idle=$!
  for _ in $(seq 1 600); do grep -q ready "$WORK/$name-idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  rss_idle[$name]="$(rss_kib "$measured")"; rss_base[$name]="$before"
  held_by[$name]="$(awk '{print $2}' "$WORK/$name-idle.out")"
  kill "$idle" 2>/dev/null; wait "$idle" 2>/dev/null || true
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$RATE_ROUNDS"); do
  echo "fixed rate, round $round of $RATE_ROUNDS" >&2
  steady nginx 8480 nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy"
  steady haproxy 8481 haproxy -f "$WORK/haproxy.cfg"
  steady bare-pingora 8482 "$BIN/examples/bare_pingora" 127.0.0.1:8482 "$B1" "$B2"
  steady strangler 8483 "${STRANGLER[@]}" --config "$R20"
  [ -z "${BEFORE:-}" ] || steady strangler-before 8483 "$BEFORE" "${STRANGLER[@]:1}" --config "$R20"
done
idle_memory nginx 8480 nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy"
idle_memory haproxy 8481 haproxy -f "$WORK/haproxy.cfg"
idle_memory bare-pingora 8482 "$BIN/examples/bare_pingora" 127.0.0.1:8482 "$B1" "$B2"
idle_memory strangler 8483 "${STRANGLER[@]}" --config "$R20"
printf "%-14s %10s %10s %10s %8s %14s %14s %s\n" proxy p50 p99 max errors "RSS before" "RSS with idle" "p99 of each round"
for name in nginx haproxy bare-pingora strangler ${BEFORE:+strangler-before}; do
  col() { awk -v n="$name" -v c="$1" '$1 == n {print $c}' "$steady_results"; }
  p99s[$name]="$(col 3 | median)"
  printf "%-14s %8sµs %8sµs %8sµs %8s %11s KiB %11s KiB (%s held)  %s\n" "$name" "$(col 2 | median)" "${p99s[$name]}" \
    "$(col 4 | median)" "$(col 5 | awk '{s += $1} END {print s + 0}')" "${rss_base[$name]:--}" "${rss_idle[$name]:--}" "${held_by[$name]:-0}" "$(col 3 | tr '\n' ' ')"
done
echo
awk -v s="${p99s[strangler]}" -v b="${p99s[nginx]}" -v p="${p99s[bare-pingora]}" \
  'BEGIN {printf "strangler / nginx: %.2fx p99 at a fixed rate (bare Pingora / nginx: %.2fx)\n", s / b, p / b}'
[ -z "${BEFORE:-}" ] || awk -v s="${p99s[strangler]}" -v b="${p99s[strangler-before]}" \
  'BEGIN {printf "strangler / the earlier build: %.2fx p99 at a fixed rate\n", s / b}'
awk -v s="${rss_idle[strangler]}" -v sb="${rss_base[strangler]}" -v n="${rss_idle[nginx]}" -v nb="${rss_base[nginx]}" -v c="$IDLE" \
  'BEGIN {printf "memory per idle connection: strangler %.1f KiB, nginx %.1f KiB (%.2fx)\n", (s - sb) / c, (n - nb) / c, (s - sb) / (n - nb)}'
