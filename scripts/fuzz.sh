#!/usr/bin/env bash
# Fuzzes the parsers of untrusted files with cargo-fuzz (libFuzzer): the safetensors header
# reader, the torch pickle/zip reader, the A1111 PNG embedding reader and read_embedding's format
# dispatch (targets in fuzz/fuzz_targets/, see fuzz/README.md). Not part of CI (scripts/test.sh).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Env: FUZZ_TARGETS="pickle png_embedding" (default: all), FUZZ_SANITIZER=address|none (default
# address), FUZZ_ARGS (extra libFuzzer flags, e.g. "-max_len=65536"), CARGO_BUILD_JOBS (default
# 1). Installs the nightly toolchain (rustup) and cargo-fuzz (cargo install) when missing. Each
# target runs single-process with -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10, growing
# fuzz/corpus/<target>/ (only seed-* files are committed); crashes land in
# fuzz/artifacts/<target>/, logs in fuzz/logs/. Prints one line per target (executions, corpus,
# crash or not) and exits 1 if any target found a crash.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
targets=(${FUZZ_TARGETS:-safetensors_header pickle png_embedding read_embedding})

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks on, so arithmetic overflow is a crash too.
flags=(-a -s "$sanitizer")
echo "==> building fuzz targets (sanitizer: $sanitizer, jobs: $CARGO_BUILD_JOBS)"
start=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "==> built in $((SECONDS - start)) s"

mkdir -p fuzz/logs
summary=()
failed=0
for t in "${targets[@]}"; do
  log="fuzz/logs/$t.log"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "==> $t: fuzzing for $secs s (log: $log)"
  rc=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  corp=$( (grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" || true) | tail -1 | sed 's/corp: //')
  if [[ $rc == 0 ]]; then
    result="no crash"
  else
    failed=1
    what=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|ERROR: AddressSanitizer: [a-z-]+|panicked at [^ ]+|memory allocation of [0-9]+ bytes failed' "$log" || echo "exit $rc")
    artifact=$(grep -m1 -o 'fuzz/artifacts/[^ ]*' "$log" || echo "see $log")
    result="CRASH ($what): $artifact"
  fi
  line=$(printf '%-20s %5s s  %10s execs  corpus %-12s %s' "$t" "$secs" "${execs:-?}" "${corp:-?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo "==> summary"
printf '%s\n' "${summary[@]}"
exit $failed
