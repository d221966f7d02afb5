#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60) and report what it found.
#   fuzz/run.sh 300
# Needs cargo-fuzz (installed here if missing). Crashes land in fuzz/artifacts/TARGET/;
# each one found becomes a regression test (see SECURITY.md).
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")"
# cargo-fuzz builds with sanitizer flags that need a nightly compiler; this opts stable in.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/rules corpus/normalize corpus/diff
cp ../rules.yaml corpus/rules/repo-rules.yaml
printf '/api//orders/./7/../%%2e%%2E/x' > corpus/normalize/seed
printf '{"a":[1,2,{"b":"c"}],"served_at":"x"}\0{"a":[2,1,{"b":"d"}],"served_at":"y"}' > corpus/diff/seed
status=0
for target in normalize rules diff; do
  echo "== $target: ${seconds}s"
  if cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 2>"/tmp/fuzz-$target.log"; then
    grep -E "^Done|stat::number_of_executed_units" "/tmp/fuzz-$target.log" | tail -1 || true
    echo "   $target: no crash"
  else
    echo "   $target: CRASH, see fuzz/artifacts/$target/ and /tmp/fuzz-$target.log"
    status=1
  fi
done
exit $status
