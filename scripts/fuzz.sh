#!/usr/bin/env bash
# Fuzz the ctnetlink decoder (fuzz/fuzz_targets/decode.rs) for $1 seconds (default 60).
# Exits non-zero if libFuzzer finds a crash; the input is left in fuzz/artifacts/decode/.
# Works on the stable toolchain: cargo-fuzz's nightly flags are allowed by RUSTC_BOOTSTRAP=1.
# FUZZ_SANITIZER=address (or none, the default: the decoder is safe Rust, so a bug is a
# panic, and without ASan it runs several times faster). FUZZ_JOBS=N runs N fuzzers at once.
set -euo pipefail

seconds="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

corpus=fuzz/corpus/decode
mkdir -p "$corpus"
cp rust/testdata/*.bin "$corpus"/

cargo fuzz build --sanitizer "$sanitizer" decode

echo "fuzz.sh: fuzzing the decoder for ${seconds}s (sanitizer: $sanitizer)" >&2
cargo fuzz run --sanitizer "$sanitizer" decode "$corpus" -- \
    -max_total_time="$seconds" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -max_len=4096 \
    $([ "$jobs" -gt 1 ] && echo -jobs="$jobs" -workers="$jobs") \
    -print_final_stats=1
