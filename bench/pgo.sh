#!/usr/bin/env bash
# A profile-guided (PGO) build of strangler and of the bare Pingora proxy, so both can be measured
# as optimized builds (issue 8). rustc lays the hot code out from a profile of a real load, which
# cuts instruction-cache misses, where most of the CPU goes (see BENCHMARKS.md).
#
#   bench/pgo.sh                  # leaves target/pgo/release/strangler and .../examples/bare_pingora
#   PGO=1 bench/compare.sh        # runs this, then measures those two binaries
#   PGO=1 bench/instructions.sh
#
# Steps: llvm-profdata from rustup's llvm-tools (it must match rustc's LLVM); an instrumented
# build in target/pgo-train; a training load; the profile merged into target/pgo.profdata; the
# optimized build in target/pgo. The training load is the setup of bench/compare.sh (nginx
# backends on 127.0.0.1:8401-8402, one worker): wrk over five paths, on bare Pingora and on
# strangler with 20 routes, with its access log on, and with a shadowed route. A team would
# train on a copy of its own traffic instead; the profile only decides code layout and inlining,
# never behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

. bench/common.sh
bench_work
install_missing pgo nginx wrk curl cmake
if ! PROFDATA="$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)" || [ -z "$PROFDATA" ]; then
  echo "pgo: installing rustup's llvm-tools (for llvm-profdata)" >&2
  rustup component add llvm-tools >&2
  PROFDATA="$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)"
fi

RAW="$ROOT/target/pgo-profiles"
echo "pgo: instrumented build (target/pgo-train)" >&2
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR=target/pgo-train \
  cargo build --release --bin strangler --example bare_pingora 2>&1 | tail -1
# The build's own scripts are instrumented too, and wrote profiles while it ran.
rm -rf "$RAW"

start_backends
R20="$(rules 20)" S1="$(shadow_rules 1)"
BIN=target/pgo-train/release
export RUST_LOG=warn

# train PORT CMD...: start the instrumented proxy, load it, stop it (it writes its profile on exit).
train() {
  local port="$1"; shift
  "$@" >"$WORK/train.log" 2>&1 &
  local pid=$! path
  wait_ready "$port"
  for path in /api/orders/1 /svc1/items/7 /svc2/list /svc3/x /other; do
    wrk -t1 -c8 -d2s "http://127.0.0.1:$port$path" >/dev/null
  done
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}
strangler_run "$BIN"
echo "pgo: training" >&2
train 8482 "$BIN/examples/bare_pingora" 127.0.0.1:8482 "$B1" "$B2"
train 8483 "${STRANGLER_RUN[@]}" --access-log false --config "$R20"
train 8483 env RUST_LOG=info "${STRANGLER_RUN[@]}" --config "$R20"
train 8483 "${STRANGLER_RUN[@]}" --access-log false --config "$S1"

"$PROFDATA" merge -o "$ROOT/target/pgo.profdata" "$RAW"
echo "pgo: optimized build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$ROOT/target/pgo.profdata" CARGO_TARGET_DIR=target/pgo \
  cargo build --release --bin strangler --example bare_pingora --example loadgen 2>&1 | tail -1
echo "pgo: built target/pgo/release/strangler and target/pgo/release/examples/bare_pingora" >&2
