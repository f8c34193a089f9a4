#!/usr/bin/env bash
# `make wheels-cross`: the armv7 and mipsel (glibc) wheels built by cross-rs in a container,
# into cross/out/cross-rs/, with the same tags as cross/build-wheels.sh (the Docker-free path).
#   - cross-rs 0.2.5, installed from crates.io into $CROSS_CACHE_DIR/tools (pinned, --locked);
#   - the image from cross/make-image.sh (Debian's cross gcc and rustc 1.96, build-std), made
#     here because no registry is reachable; cross-rs is pointed at it per target;
#   - podman (CROSS_CONTAINER_ENGINE; docker takes the same commands, untried here);
#   - maturin runs cross-rs instead of cargo (CARGO=cross, through cross/cargo-cross).
# Usage: cross/cross-wheels.sh [armv7|mipsel ...]   (default: both)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_DIR"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(armv7 mipsel)
CROSS_VERSION=0.2.5
out="$OUT_DIR/cross-rs"
# CI points this at a directory that outlives its fresh clones.
cache=${CROSS_CACHE_DIR:-$WORK_DIR/cache}
export CROSS_CONTAINER_ENGINE=${CROSS_CONTAINER_ENGINE:-podman}

bash "$CROSS_DIR/setup.sh"
use_podman
mkdir -p "$out" "$cache"

# rustup-guard answers for rustup (see that file) before anything runs cross-rs: even
# `cross --version` asks rustup and, unguarded, updated the host's stable toolchain.
# CROSS_CUSTOM_TOOLCHAIN stops cross-rs from adding targets or rust-src to the host's toolchain
# (the image brings its own compiler).
rustc_before=$(rustc --version)
mkdir -p "$WORK_DIR/cross-bin"
export CROSS_REAL_RUSTUP
CROSS_REAL_RUSTUP=$(command -v rustup)
cp "$CROSS_DIR/rustup-guard" "$WORK_DIR/cross-bin/rustup"
chmod +x "$WORK_DIR/cross-bin/rustup"
export PATH="$WORK_DIR/cross-bin:$cache/tools/bin:$PATH"
export CROSS_CUSTOM_TOOLCHAIN=1

# cargo's install record, not `cross --version` (which would run cross-rs).
if ! grep -q "^\"cross $CROSS_VERSION " "$cache/tools/.crates.toml" 2>/dev/null; then
    log "cargo install cross --version $CROSS_VERSION --locked"
    cargo install --quiet cross --version "$CROSS_VERSION" --locked --root "$cache/tools"
fi
image=$(bash "$CROSS_DIR/make-image.sh")
export CROSS_CONFIG="$CROSS_DIR/Cross.toml"
export CARGO="$CROSS_DIR/cargo-cross"
# The container's cargo fetches std's dependencies from crates.io: the host's network and CA
# bundle (which may hold a local proxy's CA), mounted at the same path. Any such volume also
# makes cross-rs mount the project at its host path rather than /project, which maturin's
# --manifest-path needs.
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
export CROSS_BUILD_ENV_VOLUMES=SSL_CERT_FILE
export CROSS_CONTAINER_OPTS="--network host"

# TRIPLE PLATFORM_TAG_OR_EMPTY MATURIN_ARGS...
build() {
    local triple=$1 tag=$2
    shift 2
    local var dir="$WORK_DIR/wheels-cross-rs/$triple"
    var=CROSS_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')
    export "${var}_IMAGE=$image" "${var}_BUILD_STD=true"
    rm -rf "$dir"
    log "cross-rs $triple in $image: maturin build"
    local t0=$SECONDS
    "$HOST_PYTHON" -m maturin build --release --locked --target "$triple" --out "$dir" "$@"
    local whl
    whl=$(ls "$dir"/*.whl)
    if [ -n "$tag" ]; then
        whl="$dir/$("$HOST_PYTHON" -m wheel tags --remove --platform-tag "$tag" "$whl")"
    fi
    rm -f "$out"/*"$(sed 's/.*-//' <<<"${whl%.whl}")".whl
    cp "$whl" "$out/"
    log "cross-rs $triple: $(basename "$whl") in $((SECONDS - t0)) s"
}

status=0
for target in "${targets[@]}"; do
    case $target in
    # maturin audits the glibc symbols used and tags accordingly.
    armv7) build armv7-unknown-linux-gnueabihf "" || status=$? ;;
    # maturin has no manylinux policy for mipsel; pip on mipsel wants linux_mips (uname -m).
    mipsel) build mipsel-unknown-linux-gnu linux_mips --compatibility linux || status=$? ;;
    *) die "unknown target $target (armv7, mipsel)" ;;
    esac
    [ $status = 0 ] || break
done

rustc_after=$(rustc --version)
[ "$rustc_after" = "$rustc_before" ] \
    || die "the host's rustc changed during the cross-rs build: $rustc_before -> $rustc_after"
[ $status = 0 ] || die "cross-rs build failed"
log "cross-rs wheels in $out (host rustc still $rustc_after)"
ls -l "$out"/*.whl
