#!/usr/bin/env bash
# Long fuzzing campaign (issue 18): every cargo-fuzz target in fuzz/Cargo.toml for --seconds N
# (default 600) each, --jobs N at a time (default: nproc), new corpus entries kept in
# fuzz/corpus/<target>/ (merged afterwards so the corpus stays small), crash and timeout
# inputs saved in fuzz/artifacts/<target>/. Prints per target: runs, exec/s, new corpus
# entries, crashes, timeouts, peak RSS. Exits non-zero if any target crashed or timed out.
#
#   bash scripts/fuzz.sh                      # all targets, 10 minutes each
#   bash scripts/fuzz.sh --seconds 60 --jobs 1 patch route
#   bash scripts/fuzz.sh --no-merge ...       # keep every new entry (no -merge=1 pass)
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them (as in scripts/fuzz-smoke.sh, the short CI run).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=600
jobs=$(nproc)
merge=1
picked=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --no-merge) merge=0; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) picked+=("$1"); shift ;;
  esac
done
case "$seconds$jobs" in *[!0-9]*) echo "fuzz.sh: --seconds and --jobs take numbers" >&2; exit 2 ;; esac
[ "$jobs" -ge 1 ] || jobs=1

# Every [[bin]] block's name (the package has a name line too), as in fuzz-smoke.sh.
all=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name = / { gsub(/"/, "", $3); print $3; bin = 0 }' Cargo.toml)
[ -n "$all" ] || { echo "fuzz.sh: no targets found in fuzz/Cargo.toml" >&2; exit 1; }
if [ ${#picked[@]} -gt 0 ]; then
  for t in "${picked[@]}"; do
    grep -qx "$t" <<<"$all" || { echo "fuzz.sh: no target $t in fuzz/Cargo.toml" >&2; exit 2; }
  done
  targets=("${picked[@]}")
else
  mapfile -t targets <<<"$all"
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi
# Build once, up front: parallel `cargo fuzz run`s would otherwise all build at once.
echo "fuzz.sh: building ${#targets[@]} target(s)"
for t in "${targets[@]}"; do
  RUSTC_BOOTSTRAP=1 cargo fuzz build "$t" >/dev/null
done
# cargo fuzz builds into fuzz/target, or $CARGO_TARGET_DIR when that is set.
bin_dir=${CARGO_TARGET_DIR:-target}/$(rustc -vV | sed -n 's/^host: //p')/release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_one() {
  local t=$1 w=$work/$1 rc=0
  mkdir -p "$w/new" "artifacts/$t" "corpus/$t"
  touch "$w/start"
  # New inputs go to the first directory ($w/new); the committed corpus seeds the run.
  "$bin_dir/$t" "$w/new" "corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$w/log" 2>&1 || rc=$?
  echo "$rc" >"$w/rc"
}

running=0
for t in "${targets[@]}"; do
  echo "fuzz.sh: $t for ${seconds}s"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

stat() { sed -n "s/^stat::$2: *//p" "$1" | tail -1; }
failed=0
printf '%-16s %12s %9s %5s %8s %9s %8s\n' target runs exec/s new crashes timeouts rss_mb
for t in "${targets[@]}"; do
  w=$work/$t
  new=$(find "$w/new" -type f | wc -l)
  # Artifacts written during this run (libFuzzer names them by kind).
  crashes=$(find "artifacts/$t" -type f -newer "$w/start" \( -name 'crash-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  timeouts=$(find "artifacts/$t" -type f -newer "$w/start" -name 'timeout-*' | wc -l)
  printf '%-16s %12s %9s %5s %8s %9s %8s\n' "$t" "$(stat "$w/log" number_of_executed_units)" \
    "$(stat "$w/log" average_exec_per_sec)" "$new" "$crashes" "$timeouts" "$(stat "$w/log" peak_rss_mb)"
  if [ "$(cat "$w/rc")" != 0 ] || [ "$crashes" != 0 ] || [ "$timeouts" != 0 ]; then
    failed=$((failed + 1))
    echo "fuzz.sh: $t FAILED (exit $(cat "$w/rc")); artifacts in fuzz/artifacts/$t/:"
    ls "artifacts/$t" | sed 's/^/  /'
    grep -m1 -A30 -E 'panicked|ERROR|ALARM' "$w/log" | sed 's/^/  | /' || true
  fi
  if [ "$new" -gt 0 ]; then
    if [ "$merge" = 1 ]; then
      # Keep only inputs that add coverage: merge the old corpus and the new entries into a
      # fresh directory, then replace the corpus with it.
      mkdir -p "$w/merged"
      if "$bin_dir/$t" -merge=1 -rss_limit_mb=2048 -timeout=10 "$w/merged" "corpus/$t" "$w/new" \
           >"$w/merge.log" 2>&1; then
        rm -rf "corpus/$t" && mv "$w/merged" "corpus/$t"
        echo "fuzz.sh: $t corpus merged to $(ls "corpus/$t" | wc -l) entries"
      else
        echo "fuzz.sh: $t merge failed; new entries copied unmerged"; cp "$w/new"/* "corpus/$t"/
      fi
    else
      cp "$w/new"/* "corpus/$t"/
    fi
  fi
done
echo "fuzz: $(( ${#targets[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
