#!/usr/bin/env bash
# The CI step for the cross builds (.ci/run calls `bash cross/ci.sh`). Both build paths, each
# proof once:
#   1. the four wheels without Docker (cross/build-wheels.sh: zig), then the decoder tests
#      under qemu-user, the musl checks, and for the armv7 and mipsel wheels: the target's pip
#      installs the wheel alone and it decodes every capture as on x86_64;
#   2. the armv7 and mipsel wheels with cross-rs under podman (cross/cross-wheels.sh), then the
#      whole proofs on them: the target's pip with the dependencies, the CLI, the same decoding,
#      the host's kernel tests under qemu-system (the mipsel guest also runs the musl probe
#      built in 1).
# Each proof's verdict is pytest's (tests/cross, on the facts test-emulated.sh gathered); the
# reports have a PASS or FAIL line for each.
# The Python side is the same in both builds, so the first proves only what differs: the
# native code and its tag.
# The cross-rs binary is kept in ~/.cache and its image in podman's store, both outside the
# fresh clone, so only the first run builds them. See docs/cross.md for the times.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CROSS_CACHE_DIR=${CROSS_CACHE_DIR:-$HOME/.cache/conntrack-event-collector/cross}
t0=$SECONDS
status=0
reports=(cross/out/emulated-report.txt cross/out/cross-rs/emulated-report.txt)
rm -f "${reports[@]}"
step() {
    local name=$1 t=$SECONDS rc=0
    shift
    "$@" || rc=$?
    echo "cross: $name took $((SECONDS - t)) s (exit $rc)"
    [ $rc = 0 ] || status=$rc
    return $rc
}

if step "zig wheels" bash cross/build-wheels.sh; then
    step "zig wheels' proofs" bash cross/test-emulated.sh cargo-test musl armhf-decode mipsel-decode
fi
if step "cross-rs wheels" bash cross/cross-wheels.sh; then
    step "cross-rs wheels' proofs" env CROSS_WHEEL_DIR=cross/out/cross-rs \
        bash cross/test-emulated.sh armhf mipsel
fi

passed=$(cat "${reports[@]}" 2>/dev/null | grep -c '^PASS' || true)
failed=$(cat "${reports[@]}" 2>/dev/null | grep -c '^FAIL' || true)
[ $status = 0 ] || [ "${failed:-0}" -gt 0 ] || failed=1   # a build that failed is a failure too
echo "cross: wheels and emulated proofs took $((SECONDS - t0)) s (exit $status)"
echo "cross: ${passed:-0} passed, ${failed:-0} failed"
exit $status
