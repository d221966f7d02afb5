#!/usr/bin/env bash
# Memory per idle keep-alive client connection (issue 22): strangler next to nginx, one worker
# each, with 1,000, 10,000 and 50,000 connections held open after one request each; then the same
# over TLS (strangler's listen_tls, nginx's `listen ... ssl`).
#
#   bench/idle.sh                      # COUNTS="1000 10000 50000" TLS_COUNTS=$COUNTS
#   COUNTS="1000 10000" TLS_COUNTS= bench/idle.sh   # smaller, no TLS rows
#   COUNTS= TLS_COUNTS=10000 bench/idle.sh           # TLS rows only
#   NO_BUILD=1 bench/idle.sh           # use the binaries already in target/release
#
# Setup: compare.sh's nginx backend (150-byte answers, written head and body in one send) on
# CPU 0; the proxy on CPU 1 with one worker; examples/loadgen's idle mode on CPU 0 opens the
# connections one after another (from 127.0.0.1, .2, ... so that 50,000 fit the ephemeral ports)
# and holds them. RSS is the proxy's (nginx: its worker's) VmRSS after a warm-up and again
# once every connection is open and idle; per connection is the difference over the count.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS="${COUNTS-1000 10000 50000}"
TLS_COUNTS="${TLS_COUNTS-$COUNTS}"
export RUST_LOG=warn
. bench/common.sh
bench_work
install_missing idle nginx curl wrk openssl cmake
# One descriptor a connection in the proxy and one in the load generator (the few upstream
# connections aside): raise the open-file limit for everything started from here. Counts that
# don't fit under the hard limit (a container may refuse to raise it) are left out, loudly.
max=0; for n in $COUNTS $TLS_COUNTS; do [ "$n" -gt "$max" ] && max="$n"; done
want=$((max + 1000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want" ]; then
  ulimit -Hn "$want" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)"
fits() {
  local keep=() n
  for n in "$@"; do
    if [ "$(ulimit -n)" = unlimited ] || [ "$((n + 1000))" -le "$(ulimit -n)" ]; then keep+=("$n")
    else echo "idle: leaving out $n connections: the open-file limit is $(ulimit -n) and can't be raised here" >&2; fi
  done
  echo "${keep[*]:-}"
}
COUNTS="$(fits $COUNTS)" TLS_COUNTS="$(fits $TLS_COUNTS)"
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --bin strangler --example loadgen 2>&1 | tail -1
fi
BIN="${CARGO_TARGET_DIR:-target}/release"
LOADGEN="$BIN/examples/loadgen"
[ -x "$LOADGEN" ] && [ -x "$BIN/strangler" ] || { echo "idle: build $BIN/strangler and $LOADGEN first" >&2; exit 1; }

# A self-signed certificate for 127.0.0.1, for both proxies' TLS listeners.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod a+r "$WORK/key.pem" "$WORK/cert.pem"

mkdir -p "$WORK/nginx-proxy" "$WORK/rules"
cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/nginx-proxy/pid; error_log stderr warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $((max + 1000)); }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream other { server $B2; keepalive 64; }
  server { listen 127.0.0.1:8480; listen 127.0.0.1:8490 ssl;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    location / { proxy_pass http://other; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
RULES="$WORK/rules/rules.yaml"
cat > "$RULES" <<EOF
legacy: other
listen_tls: { addr: "127.0.0.1:8493", cert: "$WORK/cert.pem", key: "$WORK/key.pem" }
limits: { max_connections: $((max + 1000)) }
discovery: { enabled: false }
upstreams:
  other: { url: "http://$B2" }
routes: []
EOF
start_backends
strangler_run "$BIN"
STRANGLER=("${STRANGLER_RUN[@]}" --access-log false --config "$RULES")

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
results="$WORK/results"

# row NAME PORT MODE COUNT CMD...: start the proxy on CPU 1, warm it up, hold COUNT idle
# connections to PORT (MODE idle or idle-tls) and print "NAME COUNT held before after".
row() {
  local name="$1" port="$2" mode="$3" count="$4"; shift 4
  taskset -c 1 "$@" >"$WORK/$name-$count.log" 2>&1 &
  local pid=$!
  wait_ready "$([ "$name" = nginx ] && echo 8480 || echo 8483)"
  local measured="$pid"
  case "$name" in nginx*) measured="$(pgrep -P "$pid" | head -1)";; esac
  # Warm-up: what a proxy holds after serving, before it holds idle connections.
  taskset -c 0 wrk -t1 -c32 -d1s "http://127.0.0.1:$([ "$name" = nginx ] && echo 8480 || echo 8483)/api/orders/1" >/dev/null
  sleep 0.5
  local before; before="$(rss_kib "$measured")"
  taskset -c 0 "$LOADGEN" "$mode" "127.0.0.1:$port" /api/orders/1 "$count" 600 > "$WORK/$name-$mode-$count.out" &
  local idle=$!
  local _
  for _ in $(seq 1 6000); do
    grep -q ready "$WORK/$name-$mode-$count.out" 2>/dev/null && break
    kill -0 "$idle" 2>/dev/null || { echo "idle: the load generator stopped; logs in $WORK" >&2; exit 1; }
    sleep 0.1
  done
  sleep 1
  local after; after="$(rss_kib "$measured")"
  local held; held="$(awk '{print $2}' "$WORK/$name-$mode-$count.out")"
  kill "$idle" 2>/dev/null; wait "$idle" 2>/dev/null || true
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  sleep 1  # the sockets' TIME_WAIT is the client's; let the proxy's port go
  [ "$held" = "$count" ] || echo "idle: $name held $held of $count connections ($mode); logs in $WORK" >&2
  echo "$name $mode $count $held $before $after" | tee -a "$results" >&2
}

for count in $COUNTS; do
  row nginx 8480 idle "$count" nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy"
  row strangler 8483 idle "$count" "${STRANGLER[@]}"
done
for count in $TLS_COUNTS; do
  row nginx 8490 idle-tls "$count" nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy"
  row strangler 8493 idle-tls "$count" "${STRANGLER[@]}"
done

echo
echo "memory per idle keep-alive connection, one worker each (RSS in KiB; per connection: (after - before) / held):"
printf "%-10s %-9s %7s %7s %12s %12s %12s %10s\n" proxy mode count held "RSS before" "RSS after" "KiB / conn" "vs nginx"
while read -r name mode count held before after; do
  per="$(awk -v a="$after" -v b="$before" -v h="$held" 'BEGIN {printf "%.2f", h ? (a - b) / h : 0}')"
  base="$(awk -v m="$mode" -v c="$count" '$1 == "nginx" && $2 == m && $3 == c {printf "%.4f", $4 ? ($6 - $5) / $4 : 0}' "$results")"
  ratio="$(awk -v p="$per" -v b="$base" 'BEGIN {if (b > 0) printf "%.2fx", p / b; else print "-"}')"
  printf "%-10s %-9s %7s %7s %12s %12s %12s %10s\n" "$name" "$mode" "$count" "$held" "$before" "$after" "$per" "$ratio"
done < "$results"
