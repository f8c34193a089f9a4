#!/usr/bin/env bash
# `make wheels`: the four wheels, built here without Docker, into cross/out/.
#   x86_64       manylinux_2_17 (zig links against glibc 2.17 symbols)
#   armv7        manylinux_2_17_armv7l (zig; Allwinner A20 class boards, Debian/Armbian/Raspbian)
#   mipsel gnu   linux_mips (Debian mipsel, glibc >= 2.17; pip has no manylinux tags for mips)
#   mipsel musl  musllinux_1_2_mips (OpenWrt: musl, soft-float, MIPS32r2 e.g. 1004Kc)
# Usage: cross/build-wheels.sh [x86_64|armv7|mipsel|mipsel-musl ...]   (default: all)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_DIR"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64 armv7 mipsel mipsel-musl)

bash "$CROSS_DIR/setup.sh"
mkdir -p "$OUT_DIR"
MATURIN=("$HOST_PYTHON" -m maturin)

# Builds into a per-target directory first: the gnu and musl mipsel wheels leave maturin
# with the same name.
build() {
    local name=$1; shift
    local dir="$WORK_DIR/wheels/$name"
    rm -rf "$dir"
    log "wheel $name: maturin build $*"
    local t0=$SECONDS
    "${MATURIN[@]}" build --release --locked --out "$dir" "$@"
    log "wheel $name built in $((SECONDS - t0)) s"
}

# Retags for the target's pip (see docs/cross.md) and replaces that target's wheel in cross/out/.
publish() {
    local name=$1 out_glob=$2 platform_tag=${3:-}
    local whl
    whl=$(ls "$WORK_DIR/wheels/$name"/*.whl)
    if [ -n "$platform_tag" ]; then
        whl="$WORK_DIR/wheels/$name/$("$HOST_PYTHON" -m wheel tags --remove --platform-tag "$platform_tag" "$whl")"
    fi
    rm -f "$OUT_DIR"/$out_glob
    cp "$whl" "$OUT_DIR/"
    echo "$OUT_DIR/$(basename "$whl")"
}

for target in "${targets[@]}"; do
    case $target in
    x86_64)
        # rustup's own toolchain (the host target needs no build-std).
        ( build x86_64 --target x86_64-unknown-linux-gnu --zig --compatibility manylinux2014 )
        publish x86_64 '*_x86_64.whl'
        ;;
    armv7)
        ( use_debian_rust
          build armv7 --target armv7-unknown-linux-gnueabihf --zig --compatibility manylinux2014 \
              -Z build-std=std,panic_abort )
        publish armv7 '*_armv7l.whl'
        ;;
    mipsel)
        # Tier 3: build-std. zig links against glibc 2.17's symbols, so the wheel also loads on
        # Debian 10/11 (Debian's own cross gcc would need glibc 2.34). maturin knows no manylinux
        # policy for mipsel, hence no audit; the tag is replaced below anyway.
        ( use_debian_rust
          build mipsel --target mipsel-unknown-linux-gnu --zig --compatibility manylinux_2_17 \
              --auditwheel skip -Z build-std=std,panic_abort )
        # maturin says linux_mipsel; pip on mipsel (uname -m = mips) wants linux_mips.
        publish mipsel '*-linux_mips.whl' linux_mips
        ;;
    mipsel-musl)
        # zig's target is mipsel-linux-musleabi: soft-float like OpenWrt. Debian's
        # musl:mipsel is hard-float and must not be used for this.
        ( use_debian_rust
          build mipsel-musl --target mipsel-unknown-linux-musl --zig --compatibility linux \
              -Z build-std=std,panic_abort )
        publish mipsel-musl '*-musllinux_1_2_mips.whl' musllinux_1_2_mips
        ;;
    *) die "unknown target $target (x86_64, armv7, mipsel, mipsel-musl)" ;;
    esac
done

log "wheels in $OUT_DIR"
ls -l "$OUT_DIR"/*.whl
