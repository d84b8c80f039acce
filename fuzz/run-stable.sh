#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) with libFuzzer's coverage guidance, on the
# stable toolchain (cargo-fuzz needs nightly only for sanitizers, which safe Rust decoders
# don't need). Crashes land in fuzz/artifacts/<target>/.
# Usage: run-stable.sh [SECONDS] [TARGET...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
target="$(rustc -vV | sed -n "s/^host: //p")"
# With an explicit --target, RUSTFLAGS skip build scripts (which must not be instrumented).
cargo build --release --bins --target "$target"
targets=("${@:2}")
[ ${#targets[@]} -gt 0 ] || targets=(record_header index_file base_scan frame)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  "target/$target/release/$t" -max_total_time="$secs" -artifact_prefix="artifacts/$t/" "corpus/$t" 2>&1 | tail -2
done
