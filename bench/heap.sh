#!/usr/bin/env bash
# Where the bytes of an idle keep-alive client connection go (issue 22): heaptrack follows the
# proxy while COUNT connections (default 5,000) each make one request and then wait; the bytes
# still held per connection are printed by allocation site, largest first.
#
#   bench/heap.sh                 # plain HTTP/1, 5,000 connections
#   MODE=tls COUNT=2000 bench/heap.sh   # over listen_tls
#   BIN=DIR bench/heap.sh         # DIR/strangler and DIR/examples/loadgen, built as below
#
# The build: `--features system-alloc` (the system allocator: heaptrack can't follow mimalloc),
# release without LTO, line tables (CARGO_TARGET_DIR=target/heap, kept apart from target/release).
# Future layouts are fixed before LTO, so the sizes are those of the shipped build. The figures
# are heaptrack's peak per stack (`--flamegraph-cost-type peak`), divided by COUNT; stacks of fewer
# than MIN bytes a connection (default 40) are left out. The full file is kept as $OUT.zst.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${MODE:-plain}" COUNT="${COUNT:-5000}" MIN="${MIN:-40}" OUT="${OUT:-/tmp/strangler-heap-$MODE}"
. bench/common.sh
bench_work
install_missing heap nginx wrk heaptrack openssl
if [ -z "${BIN:-}" ]; then
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=target/heap \
    cargo build --release --features system-alloc --bin strangler --example loadgen 2>&1 | tail -1
  BIN=target/heap/release
fi
start_backends
ulimit -n "$(ulimit -Hn)"
mkdir -p "$WORK/rules"
R="$WORK/rules/rules.yaml"
case "$MODE" in
  plain) listen=(); target=8483; load=idle ;;
  tls)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
      -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    listen=("listen_tls: { addr: \"127.0.0.1:8493\", cert: \"$WORK/cert.pem\", key: \"$WORK/key.pem\" }")
    target=8493; load=idle-tls ;;
  *) echo "heap: MODE is plain or tls" >&2; exit 2 ;;
esac
cat > "$R" <<EOR
legacy: other
${listen[*]:-}
limits: { max_connections: $((COUNT + 1000)) }
upstreams:
  other: { url: "http://$B2" }
routes: []
EOR
strangler_run "$BIN"
heaptrack -o "$WORK/heap" "${STRANGLER_RUN[@]}" --access-log false --config "$R" > "$WORK/proxy.log" 2>&1 &
traced=$!
wait_ready 8483 300
wrk -t1 -c8 -d1s http://127.0.0.1:8483/api/orders/1 > /dev/null
"$BIN/examples/loadgen" "$load" "127.0.0.1:$target" /api/orders/1 "$COUNT" 600 > "$WORK/loadgen.out" &
lg=$!
for _ in $(seq 1 3000); do grep -q ready "$WORK/loadgen.out" 2>/dev/null && break; sleep 0.1; done
held="$(awk '{print $2}' "$WORK/loadgen.out")"
[ "$held" = "$COUNT" ] || { echo "heap: only $held of $COUNT connections held; logs in $WORK" >&2; exit 1; }
sleep 2
kill -INT "$(pgrep -f "^$BIN/strangler run" | head -1)"
wait "$traced" 2>/dev/null || true
kill "$lg" 2>/dev/null || true
cp "$(ls "$WORK"/heap*.zst | head -1)" "$OUT.zst"
heaptrack_print -f "$OUT.zst" --print-flamegraph "$WORK/stacks" --flamegraph-cost-type peak > /dev/null
echo "bytes held per idle connection ($MODE, $COUNT connections), by stack (innermost frames of ours, Pingora's and tokio's):"
python3 - "$WORK/stacks" "$COUNT" "$MIN" <<'PY'
import re, sys
path, count, least = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# Frames from the allocator, std and the runtime's plumbing say nothing about the owner.
noise = re.compile(r"^_R|clone3|start_thread|\((alloc|raw_vec|boxed|future|harness|panicking|panic|"
                   r"unwind_safe|unsafe_cell|raw|task_local|coop|context|scoped|backtrace|function|"
                   r"poll_fn|option|result|pin|sync|arc|vec|rc|lifecycle)\.rs\)")
rows = []
for line in open(path):
    stack, cost = line.rsplit(" ", 1)
    per = int(cost) / count
    if per >= least:
        frames = [f for f in stack.split(";") if f.strip() and not noise.search(f)]
        rows.append((per, " < ".join(reversed(frames[-5:]))))
total = 0
for per, where in sorted(rows, reverse=True):
    total += per
    print(f"{per:8.0f}  {where}")
print(f"{total:8.0f}  in all (stacks of {least:.0f} bytes or more a connection, the process's own included)")
PY
