#!/usr/bin/env bash
# Short run of every cargo-fuzz target (issue 2): keeps the fuzz targets building and catches
# regressions on the committed corpus. 8 s per target keeps the 15 targets' runs under ~3 min
# of CI. Long runs with corpus growth and a report: bash scripts/fuzz.sh (issue 18).
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# (the only one CI has) accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-8}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi
# Every [[bin]] block's name (the package has a name line too).
targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name = / { gsub(/"/, "", $3); print $3; bin = 0 }' Cargo.toml)
[ -n "$targets" ] || { echo "fuzz-smoke: no targets found in fuzz/Cargo.toml"; exit 1; }
passed=0; failed=0
for t in $targets; do
  scratch=$(mktemp -d)
  if RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$scratch" "corpus/$t" -- \
       -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 >"$scratch.log" 2>&1; then
    echo "fuzz-smoke: $t ok ($(grep -o 'Done [0-9]* runs' "$scratch.log" | tail -1))"
    passed=$((passed + 1))
  else
    echo "fuzz-smoke: $t FAILED"; tail -40 "$scratch.log"
    failed=$((failed + 1))
  fi
  rm -rf "$scratch" "$scratch.log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
