# Sourced by the cross/ scripts: where things go and which tools build them.
# shellcheck shell=bash

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$CROSS_DIR")
OUT_DIR=${CROSS_OUT_DIR:-$CROSS_DIR/out}
WORK_DIR=${CROSS_WORK_DIR:-$CROSS_DIR/work}
# Our own target dir: never blocks (or is blocked by) a `cargo build` in the main target/.
export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$WORK_DIR/target}
# 2 cores shared with other builds.
export CARGO_BUILD_JOBS=${CROSS_JOBS:-2}

# The Python that runs maturin, wheel and zig: the caller's, resolved before PATH changes
# (Debian's /usr/bin/python3 comes first below and may lack them).
HOST_PYTHON=${PYTHON:-python3}
HOST_PYTHON=$(command -v "$HOST_PYTHON")
HOST_PYTHON=$("$HOST_PYTHON" -c 'import sys; print(sys.executable)')

log() { printf '\n=== %s: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'cross: %s\n' "$*" >&2; exit 1; }

# Debian's rustc/cargo 1.96 (rustc-web) and the std source for exactly that compiler
# (rust-web-src, found by cargo at /usr/lib/rustlib/src/rust): -Z build-std for any target.
# rustup's toolchain has neither the targets nor rust-src, and comes first in PATH.
use_debian_rust() {
    mkdir -p "$WORK_DIR/bin"
    # maturin --zig looks for `zig` in PATH; ziglang is a PyPI package of the host Python.
    printf '#!/bin/sh\nexec "%s" -m ziglang "$@"\n' "$HOST_PYTHON" >"$WORK_DIR/bin/zig"
    chmod +x "$WORK_DIR/bin/zig"
    # A C linker for static musl soft-float MIPS executables (test binaries, the musl probe):
    # rustc's self-contained musl objects come with rustup's std only, not with build-std.
    printf '#!/bin/sh\nexec "%s" -m ziglang cc -target mipsel-linux-musleabi "$@"\n' "$HOST_PYTHON" \
        >"$WORK_DIR/bin/cc-mipsel-musl"
    chmod +x "$WORK_DIR/bin/cc-mipsel-musl"
    export PATH="$WORK_DIR/bin:/usr/bin:/bin:$PATH"
    export RUSTC_BOOTSTRAP=1
    [ "$(command -v cargo)" = /usr/bin/cargo ] || die "expected Debian's cargo first in PATH"
    [ -d /usr/lib/rustlib/src/rust/library/std ] || die "rust-web-src missing (cross/setup.sh)"
}

# Static executables for mipsel-unknown-linux-musl (soft-float, like OpenWrt), linked by zig.
use_musl_executables() {
    export CARGO_TARGET_MIPSEL_UNKNOWN_LINUX_MUSL_LINKER="$WORK_DIR/bin/cc-mipsel-musl"
    export CARGO_TARGET_MIPSEL_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=no"
}
