#!/usr/bin/env bash
# Runs every fuzz target of the vault format for SECONDS each (default 10); exits non-zero
# as soon as one finds a crash (the input is left in fuzz/artifacts/<target>/).
#
# The toolchain here is stable only: cargo-fuzz needs -Z sanitizer flags, which
# RUSTC_BOOTSTRAP=1 unlocks on stable rustc. Needs `cargo install cargo-fuzz --locked`.
# The first build compiles every dependency with AddressSanitizer (about 6 minutes on
# 2 cores); later runs reuse fuzz/target.
set -euo pipefail
secs="${1:-10}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "run.sh: cargo-fuzz missing; cargo install cargo-fuzz --locked" >&2; exit 2; }
cargo fuzz build
# Logs go beside the fuzz targets even when CARGO_TARGET_DIR puts the build elsewhere.
mkdir -p target
for target in $(cargo fuzz list); do
    echo "== fuzz $target for ${secs}s"
    if ! cargo fuzz run "$target" -- -max_total_time="$secs" -timeout=10 >"target/fuzz-$target.log" 2>&1; then
        tail -40 "target/fuzz-$target.log" >&2
        echo "run.sh: fuzz target $target FAILED; see fuzz/artifacts/$target/ and fuzz/target/fuzz-$target.log" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "target/fuzz-$target.log" || true
done
echo "run.sh: all fuzz targets clean"
