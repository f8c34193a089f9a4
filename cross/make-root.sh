#!/usr/bin/env bash
# A Debian bookworm root of a target architecture, with its Python, pip, the netfilter tools
# and Debian's kernel for qemu-system (unpacked only: no maintainer scripts run).
# Usage: cross/make-root.sh armhf|mipsel  -> cross/work/root-ARCH   (about 10 s, ~300 MB)
set -euo pipefail
source "$(dirname "$0")/env.sh"

arch=${1:?usage: make-root.sh armhf|mipsel}
case $arch in
armhf) kernel=linux-image-armmp ;;
mipsel) kernel=linux-image-4kc-malta ;;
*) die "unknown architecture $arch" ;;
esac
root="$WORK_DIR/root-$arch"
# python3-yaml: PyPI has no PyYAML wheel for these architectures; Debian's satisfies PyYAML>=6.
packages=busybox-static,coreutils,python3,python3-pip,python3-yaml,kmod,nftables,iproute2,conntrack,$kernel

debian_mirrors

rm -rf "$root"
log "root $arch: mmdebstrap ($packages)"
try() { mmdebstrap --mode=root --variant=extract --architectures="$arch" --include="$packages" \
            bookworm "$root" "$@" >"$WORK_DIR/mmdebstrap-$arch.log" 2>&1; }
if [ -z "$mirror" ]; then
    try || { tail -20 "$WORK_DIR/mmdebstrap-$arch.log"; die "mmdebstrap $arch failed"; }
# Security first; its index for a foreign architecture has been seen half-synced ("File has
# unexpected size"), and nothing we need comes from there, so retry without it.
elif ! { [ -n "$security" ] && try "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
                                   "deb $security bookworm-security main"; }; then
    rm -rf "$root"
    log "root $arch: retrying without bookworm-security"
    try "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        || { tail -20 "$WORK_DIR/mmdebstrap-$arch.log"; die "mmdebstrap $arch failed"; }
fi

# The host's CA bundle, so the target's pip can reach the package index over TLS
# (update-ca-certificates did not run either).
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
if [ -f "$ca_bundle" ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
fi

# depmod did not run (no maintainer scripts); the host's kmod reads any architecture's modules.
kver=$(ls "$root/lib/modules")
depmod -b "$root" "$kver"
echo "$kver" >"$root/.kernel-version"
log "root $arch: $(du -sh "$root" | cut -f1), kernel $kver"
