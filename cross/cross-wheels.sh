#!/usr/bin/env bash
# The cross wheels with cross-rs (needs a Docker or Podman engine), into cross/out/docker/.
# The Docker-free equivalent that runs on the project's machines and in CI is
# cross/build-wheels.sh; this script makes the same three wheels with the same tags.
#
# Needs, once:
#   cargo install cross --locked             # cross-rs >= 0.2.5 (images for the MIPS targets)
#   rustup toolchain install nightly --component rust-src   # build-std for the MIPS targets
#   python3 -m pip install 'maturin>=1.7,<2' 'wheel>=0.40'
# Usage: cross/cross-wheels.sh [armv7|mipsel|mipsel-musl ...]   (default: all three)
#
# UNTESTED on the project's machines (no container engine there); see docs/cross.md.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(armv7 mipsel mipsel-musl)
out=cross/out/docker
PYTHON=${PYTHON:-python3}
# maturin runs `cross` instead of `cargo` when CARGO=cross (maturin >= 1.4).
export CARGO=cross
export CROSS_CONFIG="$PWD/cross/Cross.toml"
mkdir -p "$out"

build() {  # TRIPLE PLATFORM_TAG_OR_EMPTY MATURIN_ARGS...
    local triple=$1 tag=$2
    shift 2
    local dir
    dir=$(mktemp -d)
    "$PYTHON" -m maturin build --release --locked --target "$triple" --out "$dir" "$@"
    local whl
    whl=$(ls "$dir"/*.whl)
    if [ -n "$tag" ]; then
        whl="$dir/$("$PYTHON" -m wheel tags --remove --platform-tag "$tag" "$whl")"
    fi
    mv "$whl" "$out/"
    rm -rf "$dir"
}

for target in "${targets[@]}"; do
    case $target in
    # Stable toolchain; maturin picks the manylinux tag from the glibc symbols used.
    armv7) build armv7-unknown-linux-gnueabihf "" ;;
    # Tier 3: nightly for build-std (Cross.toml). pip on mipsel wants linux_mips / musllinux_*_mips
    # (uname -m says "mips"), while maturin names the wheels linux_mipsel.
    mipsel) RUSTUP_TOOLCHAIN=nightly build mipsel-unknown-linux-gnu linux_mips --compatibility linux ;;
    mipsel-musl) RUSTUP_TOOLCHAIN=nightly build mipsel-unknown-linux-musl musllinux_1_2_mips --compatibility linux ;;
    *) echo "unknown target $target (armv7, mipsel, mipsel-musl)" >&2; exit 2 ;;
    esac
done
ls -l "$out"
