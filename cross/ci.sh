#!/usr/bin/env bash
# The CI step for the cross builds (.ci/run calls `bash cross/ci.sh`): builds the four wheels
# without Docker, then proves them under emulation (cross/test-emulated.sh). About 12 minutes
# on 2 cores from a fresh clone; what it installs stays on the machine, so later runs skip it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
t0=$SECONDS
status=0
bash cross/build-wheels.sh || status=$?
if [ $status = 0 ]; then
    bash cross/test-emulated.sh || status=$?
fi
report=cross/out/emulated-report.txt
passed=$(grep -c '^PASS' "$report" 2>/dev/null || true)
failed=$(grep -c '^FAIL' "$report" 2>/dev/null || true)
[ $status = 0 ] || [ "${failed:-0}" -gt 0 ] || failed=1   # a build that failed is a failure too
echo "cross: wheels and emulated proofs took $((SECONDS - t0)) s (exit $status)"
echo "cross: ${passed:-0} passed, ${failed:-0} failed"
exit $status
