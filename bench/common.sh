# Shared by the scripts in bench/ (sourced, not run). Each one starts with:
#   . bench/common.sh
#   bench_work
#   install_missing NAME TOOL...

# bench_work: a temporary directory in WORK, removed at exit with every process started from it
# (kept with PROFILE set: bench/instructions.sh leaves its callgrind files there).
bench_work() {
  WORK="$(mktemp -d)"
  trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$WORK" 2>/dev/null || true; [ -n "${PROFILE:-}" ] || rm -rf "$WORK"' EXIT
}

# install_missing NAME TOOL...: apt-get install the tools that are not on PATH.
install_missing() {
  local name="$1"; shift
  local need=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "$name: installing ${need[*]}" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# pgo_if_asked: with PGO set, make the profile-guided builds (bench/pgo.sh) and point cargo and
# the binaries at them.
pgo_if_asked() {
  [ -n "${PGO:-}" ] || return 0
  bench/pgo.sh
  export CARGO_TARGET_DIR=target/pgo RUSTFLAGS="-Cprofile-use=$PWD/target/pgo.profdata"
}

# strangler's admin listener in the benchmarks (its metrics are read there).
ADMIN=127.0.0.1:8489

# strangler_run DIR: set STRANGLER_RUN to the command that runs DIR/strangler as the benchmarks
# do: one worker, the proxy on 127.0.0.1:8483, the admin listener on $ADMIN, no grace period.
strangler_run() {
  STRANGLER_RUN=("$1/strangler" run --threads 1 --listen 127.0.0.1:8483 --admin "$ADMIN" --grace-period 0 --shutdown-timeout 1)
}

# cpu_ticks PID: user and system clock ticks so far.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# median: the median of the numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }

# wait_ready PORT [TRIES]: poll the proxy on PORT every 0.1 s until it answers, TRIES times at
# most (100 by default).
wait_ready() {
  local _
  for _ in $(seq 1 "${2:-100}"); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/api/orders/1" 2>/dev/null && return 0
    sleep 0.1
  done
}

# The backends: nginx answering a fixed 150-byte JSON on two ports, and a 10 KiB one at
# /api/orders/big (31 orders of two items each, the shape `cargo bench --bench diff` uses). The
# two ports' answers differ only in served_at, which the shadow rules ignore.
B1=127.0.0.1:8401 B2=127.0.0.1:8402

# big_json SERVED_AT: the 10 KiB answer.
big_json() {
  local i orders=()
  for i in $(seq 0 30); do
    orders+=("{\"id\":$i,\"user_id\":7,\"status\":\"paid\",\"created_at\":\"2023-04-16T18:00:00Z\",\"total_cents\":$((21980 + i)),\"items\":[{\"sku\":\"SKU-$(printf %04d "$i")\",\"name\":\"Rustic Bamboo Lamp\",\"quantity\":3,\"unit_price_cents\":35999,\"line_total_cents\":107997},{\"sku\":\"SKU-$(printf %04d $((i + 1)))\",\"name\":\"Everyday Cotton Lamp\",\"quantity\":2,\"unit_price_cents\":13399,\"line_total_cents\":26798}]}")
  done
  local IFS=,
  printf '{"user_id":7,"items":[%s],"served_at":"%s","request_id":"4f58661563367d0ff2dad46448a2d738"}' "${orders[*]}" "$1"
}

# backend_conf DIR: write DIR/nginx.conf for the backends (pid file and the 10 KiB answers in DIR;
# nginx reads the large answers from files, as a config token is at most 4 KiB).
backend_conf() {
  big_json b1 > "$1/big-b1.json"
  big_json b2 > "$1/big-b2.json"
  # nginx's workers run as nobody, and mktemp's directories are private: open the way to the files.
  chmod a+rx "$1" "$(dirname "$1")" && chmod a+r "$1"/big-*.json
  cat > "$1/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $1/pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type application/json;
  server { listen $B1; location = /api/orders/big { alias $1/big-b1.json; }
    location / { return 200 '{"id":1,"status":"paid","total":{"amount":1299,"currency":"EUR"},"items":[{"sku":"SKU-0001","qty":2}],"served_at":"b1"}'; } }
  server { listen $B2; location = /api/orders/big { alias $1/big-b2.json; }
    location / { return 200 '{"id":1,"status":"paid","total":{"amount":1299,"currency":"EUR"},"items":[{"sku":"SKU-0001","qty":2}],"served_at":"b2"}'; } } }
CONF
}

# start_backends: the backends in $WORK/backend, nginx on CPU 0 (away from the proxy on CPU 1).
start_backends() {
  mkdir -p "$WORK/backend"
  backend_conf "$WORK/backend"
  taskset -c 0 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" 2>"$WORK/backend.log" &
  sleep 0.5
}

# rules N [on|off|autopilot|ratelimit|ratelimit-ip|trace0|trace1]: write strangler's rules file
# for N routes into $WORK/rules and print its path; the migration map on (the default) or off, or
# on with the autopilot judging the route, or with a rate limit on the route (one budget, or one
# per client IP) that the load never reaches, so every request pays for the check and none is
# limited, or with tracing on, sampling none of the requests (trace0) or every one (trace1): the
# spans go by OTLP/HTTP to the first backend, whose nginx answers any request with 200.
# /api/orders goes to the "orders" upstream, everything else to legacy, and N-1 more routes that
# the benchmark's request never takes, so matching has a real table to search. The rules sit in a
# directory of their own: the reload watcher wakes for every write in the rules file's directory,
# and the proxies' logs are written to $WORK.
rules() {
  local n="$1" map="${2:-on}" f="$WORK/rules/rules-$1-map-${2:-on}.yaml"
  mkdir -p "$WORK/rules"
  { echo "legacy: other"; echo "limits: { max_connections: 16000 }"; echo "upstreams:"; echo "  other: { url: \"http://$B2\" }"; echo "  orders: { url: \"http://$B1\" }"
    [ "$map" = off ] && echo "discovery: { enabled: false }"
    [ "$map" = trace0 ] && echo "tracing: { endpoint: \"http://$B1\", sampler: traceidratio, sampler_arg: 0 }"
    [ "$map" = trace1 ] && echo "tracing: { endpoint: \"http://$B1\", sampler: always_on }"
    # autopilot: the measured route has a rollout at its last step, judged every second.
    [ "$map" = autopilot ] && echo "autopilot: { enabled: true, interval: 1s }"
    local extra=""
    case "$map" in
      autopilot) extra=", rollout: { steps: [25, migrated], hold: 1s }";;
      ratelimit) extra=", rate_limit: { per_second: 1000000, burst: 1000000 }";;
      ratelimit-ip) extra=", rate_limit: { per_second: 1000000, burst: 1000000, key: ip }";;
    esac
    echo "routes:"; echo "  - { name: orders, match: { prefix: /api/orders }, mode: migrated, service: orders$extra }"
    for i in $(seq 1 $((n - 1))); do
      case $((i % 3)) in
        0) echo "  - { name: r$i, match: { prefix: /svc$i }, mode: legacy }";;
        1) echo "  - { name: r$i, match: { path: \"/svc$i/items/{id}\" }, mode: migrated, service: orders }";;
        2) echo "  - { name: r$i, match: { path: /svc$i/list, methods: [GET] }, mode: legacy }";;
      esac
    done; } > "$f"
  echo "$f"
}

# shadow_rules SAMPLE: the shadow cost (issue 5). /api/orders answered by "other" and copied to
# "orders" for a SAMPLE share of requests (1: every one, 0: none). The two backends differ only in
# served_at, which is ignored, so every copy is parsed and compared as JSON and matches.
shadow_rules() {
  local f="$WORK/rules/rules-shadow-$1.yaml"
  mkdir -p "$WORK/rules"
  { echo "legacy: other"; echo "upstreams:"; echo "  other: { url: \"http://$B2\" }"; echo "  orders: { url: \"http://$B1\" }"
    echo "routes:"
    echo "  - { name: orders, match: { prefix: /api/orders }, mode: shadow, service: orders, shadow: { sample: $1, ignore: [\"\$.served_at\"] } }"; } > "$f"
  echo "$f"
}
