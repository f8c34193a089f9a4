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

# The host's own Debian mirror (deb822 or one-line sources) in $mirror and its security mirror
# in $security; both empty means mmdebstrap's default.
debian_mirrors() {
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    security=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | sed -n 2p)
}

# podman as this machine needs it, in a containers.conf of our own (the user's stays untouched):
# runc, since crun fails here ("cgroups in hybrid mode not supported"), and ulimits the container
# may set, since the defaults are refused ("setrlimit RLIMIT_NPROC: Operation not permitted").
use_podman() {
    [ "${CROSS_CONTAINER_ENGINE:-podman}" = podman ] || return 0
    mkdir -p "$WORK_DIR"
    cat >"$WORK_DIR/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$WORK_DIR/containers.conf"
}
