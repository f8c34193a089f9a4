#!/usr/bin/env bash
# The container image cross-rs runs for the armv7 and mipsel (glibc) wheels, made here: no image
# registry is reachable from the project's machines, so cross-rs's ghcr.io images cannot be
# pulled. A Debian bookworm minbase root with Debian's cross gcc and glibc for both targets and
# Debian's rustc 1.96 with std's source (build-std: no target std is installed anywhere), the
# same compiler the Docker-free path uses.
# The tag is a hash of this file, so the image is built once per recipe and kept by the engine
# (podman's store outlives CI's fresh clones); a changed recipe builds a new one and drops the old.
# Usage: cross/make-image.sh   -> prints the image name (about 3 minutes the first time)
set -euo pipefail
source "$(dirname "$0")/env.sh"
use_podman

engine=${CROSS_CONTAINER_ENGINE:-podman}
repo=localhost/conntrack-cross
image="$repo:$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"

if "$engine" image exists "$image" 2>/dev/null \
        || { [ "$engine" = docker ] && docker image inspect "$image" >/dev/null 2>&1; }; then
    echo "$image"
    exit 0
fi

# ca-certificates: only for its /etc/ssl/certs, over which the host's bundle is mounted (the
# container's cargo fetches std's dependencies from crates.io). python3: PyO3's build script.
packages=ca-certificates,python3,rustc-web,cargo-web,rust-web-src
packages+=,gcc-arm-linux-gnueabihf,libc6-dev-armhf-cross,gcc-mipsel-linux-gnu,libc6-dev-mipsel-cross

debian_mirrors
sources=()
if [ -n "$mirror" ]; then
    sources=("deb $mirror bookworm main" "deb $mirror bookworm-updates main")
    # rustc-web 1.96 comes from the security suite.
    [ -z "$security" ] || sources+=("deb $security bookworm-security main")
fi

mkdir -p "$WORK_DIR"
# mmdebstrap picks the format from the name's extension; rename only once it has succeeded, so a
# failed run never leaves a tar that looks complete.
tmp=$(mktemp "$WORK_DIR/image.XXXXXX.tar")
trap 'rm -f "$tmp"' EXIT
log "image $image: mmdebstrap --variant=minbase ($packages)"
t0=$SECONDS
if ! mmdebstrap --variant=minbase --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$tmp" "${sources[@]}" >"$WORK_DIR/mmdebstrap-image.log" 2>&1; then
    tail -20 "$WORK_DIR/mmdebstrap-image.log" >&2
    die "mmdebstrap for $image failed (see $WORK_DIR/mmdebstrap-image.log)"
fi
mv "$tmp" "$WORK_DIR/image.tar"

# What cross-rs's own images set in their Dockerfiles: the linkers, and build-std on a stable
# compiler.
"$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTC_BOOTSTRAP=1' \
    --change 'ENV CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc' \
    --change 'ENV CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc' \
    --change 'ENV CARGO_TARGET_MIPSEL_UNKNOWN_LINUX_GNU_LINKER=mipsel-linux-gnu-gcc' \
    --change 'ENV CC_mipsel_unknown_linux_gnu=mipsel-linux-gnu-gcc' \
    "$WORK_DIR/image.tar" "$image" >/dev/null
rm -f "$WORK_DIR/image.tar"
# Images of older recipes.
"$engine" images --format '{{.Repository}}:{{.Tag}}' | grep "^$repo:" | grep -vx "$image" \
    | xargs -r "$engine" rmi >/dev/null 2>&1 || true
log "image $image built in $((SECONDS - t0)) s"
echo "$image"
