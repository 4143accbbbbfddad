#!/usr/bin/env bash
# Fuzzes what idem reads from outside (fuzz/fuzz_targets: envelope, canonical_json,
# intent_id, cell_args, declarative_toml) with cargo-fuzz and libFuzzer, each for a bounded
# time. CI runs every target FUZZ_SECONDS (default 20); by hand, e.g.
#   FUZZ_SECONDS=600 scripts/fuzz.sh cell_args
# A crash fails the script and leaves its input in fuzz/artifacts/<target>/: make it a
# regression test beside the code it broke, then fix the code.
#
# cargo-fuzz needs unstable compiler flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the one
# stable toolchain on the machine accept them, so no nightly is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/idem-fuzz-target}"

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked -q
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

for t in "${targets[@]}"; do
  cargo fuzz build -O "$t" || { echo "fuzz build of $t failed" >&2; exit 1; }
done

corpus_root=$(mktemp -d /tmp/idem-fuzz-corpus.XXXXXX)
trap 'rm -rf "$corpus_root"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$corpus_root/$t"
  log="$corpus_root/$t.log"
  # New inputs go to a scratch corpus; the committed seeds are read only.
  if cargo fuzz run -O "$t" "$corpus_root/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo "?")
    echo "fuzz $t: ok, $runs executions in ${FUZZ_SECONDS} s, coverage $cov, corpus $(ls "$corpus_root/$t" | wc -l)"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED" >&2
    grep -E 'panicked|ERROR: |SUMMARY|Test unit written' "$log" | head -n 20 >&2 || tail -n 40 "$log" >&2
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
