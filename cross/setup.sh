#!/usr/bin/env bash
# Installs what the Docker-free cross builds and the emulated tests need on a fresh Debian 12
# machine; quick (no network) when everything is already there. Safe to run again.
set -euo pipefail

debs=(
    # Debian's rustc 1.96 + std's source for exactly that compiler: build-std for any target.
    rustc-web cargo-web rust-web-src
    # C cross linkers and the targets' glibc.
    gcc-arm-linux-gnueabihf gcc-mipsel-linux-gnu libc6-dev-armhf-cross libc6-dev-mipsel-cross
    # Emulation: qemu-user for cargo test and chroots, qemu-system for real conntrack events.
    qemu-user-static binfmt-support qemu-system-arm qemu-system-mips
    # Target roots, initramfs, ELF inspection.
    mmdebstrap cpio gzip kmod binutils-multiarch file
    # cross-rs (cross/cross-wheels.sh): podman, run by runc (crun fails here, see env.sh).
    podman runc
)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "cross/setup.sh: installing ${missing[*]}"
    apt-get update -qq || true   # a broken third-party source must not stop us
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# qemu-user through binfmt_misc: chroot into a foreign root runs its binaries transparently.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
for fmt in qemu-arm qemu-mipsel; do
    if [ ! -e "/proc/sys/fs/binfmt_misc/$fmt" ]; then
        update-binfmts --enable "$fmt" 2>/dev/null || true
    fi
done

PYTHON=${PYTHON:-python3}
need_pip=()
$PYTHON -c 'import maturin' 2>/dev/null || command -v maturin >/dev/null || need_pip+=("maturin>=1.7,<2")
$PYTHON -c 'import ziglang' 2>/dev/null || need_pip+=("ziglang")
$PYTHON -c 'import wheel' 2>/dev/null || need_pip+=("wheel>=0.40")
if [ ${#need_pip[@]} -gt 0 ]; then
    $PYTHON -m pip install --quiet --disable-pip-version-check "${need_pip[@]}"
fi
