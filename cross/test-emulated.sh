#!/usr/bin/env bash
# `make test-cross` (after `make wheels`): the proofs that the cross wheels work.
#   cargo-test   the crate's Rust tests built for armv7, mipsel (glibc) and mipsel (musl,
#                static, soft-float), run under qemu-user
#   armhf        armv7 wheel: the target's pip installs it with its dependencies into a Debian
#                armhf root (qemu-user chroot), the CLI runs, Python imports it and decodes the
#                golden captures exactly as x86_64 does; then Debian's armmp kernel boots under
#                qemu-system-arm and EventStream yields real NEW/DESTROY events, checked field
#                by field and against the guest's own `conntrack -E`, and measured
#   musl         mipsel-musl wheel (OpenWrt): ELF checks (MIPS32r2, o32, soft-float, musl only),
#                and the Rust core built as a static musl soft-float binary (cross/musl-probe)
#                for the mipsel guest to run against its real kernel (no musl Python for MIPS
#                is reachable here)
#   mipsel       as armhf, for the mipsel (glibc) wheel, Debian's 4kc-malta kernel and
#                qemu-system-mipsel; the guest also runs the musl probe (if musl ran before)
#   armhf-decode, mipsel-decode   of armhf and mipsel only the wheel alone installed by the
#                target's pip and the golden captures decoded as x86_64 does (qemu-user)
# See docs/cross.md.
# Usage: [CROSS_WHEEL_DIR=DIR] cross/test-emulated.sh [cargo-test] [armhf] [musl] [mipsel]
#        [armhf-decode] [mipsel-decode]    (default: the first four)
# Proves the wheels in CROSS_WHEEL_DIR (default cross/out/, e.g. cross/out/cross-rs/ for
# cross/cross-wheels.sh's); the x86_64 reference wheel always comes from cross/out/.
# Writes DIR/emulated-report.txt; exits non-zero if any proof failed.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO_DIR"

steps=("$@")
# musl before mipsel: the mipsel guest also runs the musl probe.
[ ${#steps[@]} -gt 0 ] || steps=(cargo-test armhf musl mipsel)
BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-420}

bash "$CROSS_DIR/setup.sh"
WHEEL_DIR=${CROSS_WHEEL_DIR:-$OUT_DIR}
mkdir -p "$OUT_DIR" "$WORK_DIR" "$WHEEL_DIR"
REPORT="$WHEEL_DIR/emulated-report.txt"
: >"$REPORT"
rm -f "$WORK_DIR/host-digest"
failed=0
report() { echo "$*" | tee -a "$REPORT" >&2; }
pass() { report "PASS  $*"; }
fail() { report "FAIL  $*"; failed=1; }

wheel_for() {
    local pattern=$1 dir=${2:-$WHEEL_DIR} found
    found=$(ls "$dir"/$pattern 2>/dev/null | head -1 || true)
    [ -n "$found" ] || die "no wheel $pattern in $dir: run make wheels (or make wheels-cross)"
    echo "$found"
}

# --- Rust tests under qemu-user --------------------------------------------------------------
# qemu-user refuses NETLINK_NETFILTER sockets (EPROTONOSUPPORT). Tests that open one are named
# kernel_* and are skipped here; they run on the host in `make test`, and the qemu-system guests
# below read real events. The decoder's golden tests and the filter's interpreter are what runs.
cargo_test() {
    local target=$1 runner=$2
    log "cargo test --target $target (qemu-user)"
    local t0=$SECONDS logf="$WORK_DIR/cargo-test-$1.log"
    if ( use_debian_rust
         local var
         var=CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')
         case $target in
         armv7-*) export "${var}_LINKER=arm-linux-gnueabihf-gcc" ;;
         mipsel-*-gnu) export "${var}_LINKER=mipsel-linux-gnu-gcc" ;;
         mipsel-*-musl) use_musl_executables ;;
         esac
         export "${var}_RUNNER=$runner"
         # Unoptimised std and tests under TCG took 341 s for armv7's robustness loops alone;
         # opt-level 1 keeps debug assertions and overflow checks (the 32-bit point of this).
         export CARGO_PROFILE_DEV_OPT_LEVEL=1
         cargo test --locked --target "$target" -Z build-std=std,panic_abort -- --skip kernel_ ) >"$logf" 2>&1; then
        pass "cargo test $target under qemu-user: $(grep -m1 -E '^test result:' "$logf") ($((SECONDS - t0)) s)"
    else
        tail -40 "$logf" >&2
        fail "cargo test $target under qemu-user (see $logf)"
    fi
}

# --- the wheel in a root of the target architecture, under qemu-user --------------------------
# ARCH WHEEL [decode]: with "decode", only the wheel itself is installed (the target's pip still
# judges its tag) and the CLI is not run, for wheels whose Python side another run has proven.
install_in_root() {
    local arch=$1 wheel=$2 only=${3:-}
    local root="$WORK_DIR/root-$arch"
    bash "$CROSS_DIR/make-root.sh" "$arch" || { fail "$arch: root (mmdebstrap)"; return 1; }
    cp "$wheel" "$root/tmp/"
    log "$arch: the target's pip installs $(basename "$wheel") (chroot, qemu-user)"
    # As a user would: the wheel and its dependencies from PyPI (pure Python wheels; PyYAML is
    # Debian's), binary only so nothing compiles under emulation. Debian marks its Python
    # externally managed; this root is a throwaway.
    local whl_in_root="/tmp/$(basename "$wheel")"
    if [ "$only" = decode ]; then
        if chroot "$root" /usr/bin/python3 -m pip install --no-index --no-deps --no-cache-dir \
                --no-compile --break-system-packages "$whl_in_root" >"$WORK_DIR/pip-$arch.log" 2>&1; then
            pass "$arch: pip $(chroot "$root" /usr/bin/python3 -m pip --version | cut -d' ' -f2) installed $(basename "$wheel") alone (--no-deps)"
        else
            tail -20 "$WORK_DIR/pip-$arch.log" >&2
            fail "$arch: pip install $(basename "$wheel")"
            return 1
        fi
    elif chroot "$root" /usr/bin/python3 -m pip install --no-cache-dir --no-compile --only-binary=:all: \
            --break-system-packages --disable-pip-version-check "$whl_in_root" \
            >"$WORK_DIR/pip-$arch.log" 2>&1; then
        pass "$arch: pip $(chroot "$root" /usr/bin/python3 -m pip --version | cut -d' ' -f2) installed $(basename "$wheel") and its dependencies: $(grep '^Successfully installed' "$WORK_DIR/pip-$arch.log" | cut -d' ' -f3-)"
    else
        tail -20 "$WORK_DIR/pip-$arch.log" >&2
        fail "$arch: pip install $(basename "$wheel") with its dependencies (see $WORK_DIR/pip-$arch.log)"
        # The wheel alone still shows whether the target's pip accepts its tag.
        if chroot "$root" /usr/bin/python3 -m pip install --no-index --no-deps --no-cache-dir \
                --break-system-packages "$whl_in_root" >>"$WORK_DIR/pip-$arch.log" 2>&1; then
            pass "$arch: pip installed $(basename "$wheel") alone (--no-deps)"
        else
            tail -20 "$WORK_DIR/pip-$arch.log" >&2
            fail "$arch: pip install $(basename "$wheel")"
            return 1
        fi
    fi
    if [ "$only" = decode ]; then
        :
    elif chroot "$root" /usr/local/bin/conntrack-event-collector --help >"$WORK_DIR/cli-$arch.log" 2>&1; then
        pass "$arch: conntrack-event-collector --help runs under qemu-user ($(grep -c -- '--amqp-' "$WORK_DIR/cli-$arch.log") --amqp-* options listed)"
    else
        tail -20 "$WORK_DIR/cli-$arch.log" >&2
        fail "$arch: conntrack-event-collector --help under qemu-user"
    fi
    # Import, and decode every golden capture as the reader would, against the manifest.
    mkdir -p "$root/tmp/testdata"
    cp rust/testdata/*.bin rust/testdata/manifest.json "$root/tmp/testdata/"
    cp "$CROSS_DIR/guest/import_check.py" "$root/tmp/"
    if chroot "$root" /usr/bin/python3 /tmp/import_check.py /tmp/testdata >"$WORK_DIR/import-$arch.log" 2>&1; then
        pass "$arch: import under qemu-user: $(tail -1 "$WORK_DIR/import-$arch.log")"
    else
        cat "$WORK_DIR/import-$arch.log" >&2
        fail "$arch: import under qemu-user"
    fi
    report "      $arch under qemu-user, $(grep '^socket:' "$WORK_DIR/import-$arch.log" || true)"
    local ours theirs
    ours=$(sed -n 's/^digest: //p' "$WORK_DIR/import-$arch.log")
    theirs=$(host_digest)
    if [ -n "$ours" ] && [ "$ours" = "$theirs" ]; then
        pass "$arch: every golden capture decodes to the same dicts and JSON bytes as the x86_64 wheel"
    else
        fail "$arch: decoded golden captures differ from the x86_64 wheel's ($ours != $theirs)"
    fi
}

# What the x86_64 wheel decodes from the golden captures, in a venv of the host's Python.
host_digest() {
    local venv="$WORK_DIR/venv-host"
    if [ ! -s "$WORK_DIR/host-digest" ]; then
        rm -rf "$venv"
        "$HOST_PYTHON" -m venv "$venv"
        "$venv/bin/pip" install --quiet --no-index --no-deps "$(wheel_for '*_x86_64.whl' "$OUT_DIR")"
        (cd / && "$venv/bin/python" "$CROSS_DIR/guest/import_check.py" "$REPO_DIR/rust/testdata") 2>/dev/null \
            | sed -n 's/^digest: //p' >"$WORK_DIR/host-digest" || true
    fi
    cat "$WORK_DIR/host-digest"
}

# --- real conntrack events under qemu-system ---------------------------------------------------
# The root (with the wheel installed) minus what the guest does not need, plus the netfilter
# modules and their dependencies, becomes the initramfs; /init runs guest_check.py.
# Keep it small: malta's 32-bit kernel has no highmem, so its 256 MB hold the kernel, the
# gzipped and the unpacked initramfs at once ("Initramfs unpacking failed: write error").
make_initramfs() {
    local arch=$1
    local root="$WORK_DIR/root-$arch" stage="$WORK_DIR/initramfs-$arch"
    local kver
    kver=$(cat "$root/.kernel-version")
    rm -rf "$stage"
    mkdir -p "$stage"
    tar -C "$root" -cf - \
        --exclude=./boot --exclude=./lib/modules --exclude=./usr/lib/linux-image-\* \
        --exclude=./usr/share/doc --exclude=./usr/share/man --exclude=./usr/share/locale \
        --exclude=./usr/share/info --exclude=./usr/share/perl5 --exclude=./lib/udev/hwdb.d \
        --exclude=./lib/firmware --exclude=./var/cache/apt --exclude=./var/lib/apt/lists \
        --exclude=./usr/lib/python3/dist-packages/pip --exclude=./tmp/testdata \
        --exclude=./usr/lib/python3/dist-packages/setuptools \
        --exclude=./usr/lib/python3/dist-packages/pkg_resources \
        --exclude=./usr/lib/python3.11/pydoc_data --exclude=./usr/lib/python3.11/lib2to3 \
        --exclude=./usr/lib/python3.11/test --exclude=./usr/lib/python3.11/ensurepip \
        --exclude=./usr/lib/\*-linux-gnu\*/gconv . \
        | tar -C "$stage" -xf -
    local moddir="lib/modules/$kver" wanted=(crc32c_generic nf_conntrack_netlink nft_ct) files=()
    local m line
    for m in "${wanted[@]}"; do
        line=$(grep -E "(^|/)$m\.ko(\.xz)?:" "$root/$moddir/modules.dep") || die "$arch: no module $m"
        files+=(${line/:/})
    done
    mkdir -p "$stage/$moddir"
    cp "$root/$moddir"/modules.order "$root/$moddir"/modules.builtin* "$stage/$moddir/"
    for m in $(printf '%s\n' "${files[@]}" | sort -u); do
        mkdir -p "$stage/$moddir/$(dirname "$m")"
        cp "$root/$moddir/$m" "$stage/$moddir/$m"
    done
    depmod -b "$stage" "$kver"
    cp "$CROSS_DIR/guest/init" "$stage/init"
    mkdir -p "$stage/cross-test"
    cp "$CROSS_DIR/guest/guest_check.py" "$stage/cross-test/"
    # The parser of `conntrack -E` output that the host's differential test uses.
    if [ -f tests/conntrack_text.py ]; then cp tests/conntrack_text.py "$stage/cross-test/"; fi
    cp tests/traffic.py "$stage/cross-test/"
    if [ "$arch" = mipsel ] && [ -x "$WORK_DIR/musl-probe-bin" ]; then
        cp "$WORK_DIR/musl-probe-bin" "$stage/cross-test/musl-probe"
    fi
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK_DIR/initrd-$arch.gz"
    cp "$root/boot/vmlinuz-$kver" "$WORK_DIR/vmlinuz-$arch"
    log "$arch: initramfs $(du -sh "$stage" | cut -f1) unpacked, $(du -h "$WORK_DIR/initrd-$arch.gz" | cut -f1) gzipped, $(printf '%s\n' "${files[@]}" | sort -u | wc -l) modules"
}

boot() {
    local arch=$1 wheel=$2
    local logf="$WORK_DIR/qemu-$arch.log"
    local qemu
    case $arch in
    armhf) qemu=(qemu-system-arm -M virt -cpu cortex-a15 -m 512 -append "console=ttyAMA0 panic=-1 loglevel=4") ;;
    mipsel) qemu=(qemu-system-mipsel -M malta -cpu 24Kf -m 256 -vga none -append "console=ttyS0 panic=-1 loglevel=4") ;;
    esac
    make_initramfs "$arch"
    log "$arch: booting ${qemu[0]} (timeout $BOOT_TIMEOUT_S s)"
    local t0=$SECONDS
    timeout "$BOOT_TIMEOUT_S" "${qemu[@]}" -smp 1 -kernel "$WORK_DIR/vmlinuz-$arch" \
        -initrd "$WORK_DIR/initrd-$arch.gz" -nographic -monitor none -nic none -no-reboot \
        </dev/null >"$logf" 2>&1 || true
    local took=$((SECONDS - t0))
    cp "$logf" "$WHEEL_DIR/qemu-$arch.log"
    grep -a '^guest:' "$logf" | grep -av '^guest: event ' | sed 's/^/    /' >&2 || true
    local verdict
    verdict=$(grep -a '^CONNTRACK-QEMU-RESULT:' "$logf" | tail -1 | tr -d '\r' || true)
    if [[ $verdict == "CONNTRACK-QEMU-RESULT: PASS "* ]]; then
        pass "$arch: qemu-system, $(basename "$wheel"): $(summary "${verdict#*PASS }") (boot to power-off $took s)"
    else
        tail -30 "$logf" >&2
        fail "$arch: qemu-system: ${verdict:-no verdict within $BOOT_TIMEOUT_S s} (log: $WHEEL_DIR/qemu-$arch.log)"
    fi
    if [ -f "$WORK_DIR/initramfs-$arch/cross-test/musl-probe" ]; then
        grep -a '^musl-probe:' "$logf" | sed 's/^/    /' >&2 || true
        verdict=$(grep -a '^MUSL-PROBE-RESULT:' "$logf" | tail -1 | tr -d '\r' || true)
        if [[ $verdict == "MUSL-PROBE-RESULT: PASS "* ]]; then
            pass "mipsel-musl: static soft-float musl build of the core under qemu-system $arch: ${verdict#*PASS }"
        else
            fail "mipsel-musl: probe under qemu-system $arch: ${verdict:-no verdict}"
        fi
    fi
}

summary() {
    "$HOST_PYTHON" - "$1" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
t, j = r.get("throughput", {}), r.get("throughput_json", {})
compared = (f"equal to the target's conntrack -E ({r['conntrack_E_events']})"
            if "conntrack_E_events" in r else "(no conntrack -E comparison)")
print(f"{r['events']} NEW/DESTROY events with correct fields, {compared},"
      f" kernel {r['kernel']} {r['machine']}; {t.get('flows')} flows: iterator"
      f" {t.get('iterator_per_s')}/s as dicts, {j.get('iterator_per_s')}/s as JSON; flush to"
      f" iterator {t.get('flush_destroy_per_s')}/s dicts, {j.get('flush_destroy_per_s')}/s JSON;"
      f" overruns {t.get('overruns')}+{j.get('overruns')}")
EOF
}

# --- mipsel-musl: no musl Python for MIPS is reachable here (Debian has none) -------------------
musl_checks() {
    local wheel=$1
    local dir="$WORK_DIR/musl-wheel"
    rm -rf "$dir"
    mkdir -p "$dir"
    "$HOST_PYTHON" -m zipfile -e "$wheel" "$dir"
    local so
    so=$(ls "$dir"/conntrack_collector/_native*.so)
    local header abi needed interp
    header=$(readelf -h "$so")
    abi=$(readelf -A "$so")
    needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    interp=$(readelf -l "$so" | grep -c 'Requesting program interpreter' || true)
    local ok=1
    grep -q 'Machine:.*MIPS' <<<"$header" || ok=0
    grep -q 'Class:.*ELF32' <<<"$header" || ok=0
    grep -q "little endian" <<<"$header" || ok=0
    grep -q 'ISA: MIPS32r2' <<<"$abi" || ok=0
    grep -q 'FP ABI: Soft float' <<<"$abi" || ok=0
    [ "$needed" = "libc.so " ] || ok=0   # musl: one libc.so; glibc would need libc.so.6 etc.
    grep -q 'o32' < <(readelf -h "$so" | grep Flags) || ok=0
    if [ $ok = 1 ]; then
        pass "mipsel-musl: $(basename "$wheel"): ELF32 LSB MIPS32r2 o32, soft-float, NEEDED only musl's libc.so, no glibc symbol versions ($(du -h "$so" | cut -f1) .so)"
    else
        echo "$header" "$abi" "NEEDED: $needed" >&2
        fail "mipsel-musl: ELF checks of $(basename "$wheel")"
    fi
    if readelf -V "$so" | grep -q GLIBC; then fail "mipsel-musl: references glibc symbol versions"; fi
}

# The crate's Rust core as a static musl soft-float binary (cross/musl-probe), for the mipsel
# guest to run against its real kernel: no musl Python for MIPS is reachable here.
build_musl_probe() {
    local src="$WORK_DIR/musl-probe" logf="$WORK_DIR/musl-probe-build.log"
    rm -rf "$src" "$WORK_DIR/musl-probe-bin"
    cp -r "$CROSS_DIR/musl-probe" "$src"
    sed -i "s#path = \"../..\"#path = \"$REPO_DIR\"#" "$src/Cargo.toml"
    cp Cargo.lock "$src/Cargo.lock"   # the same dependency versions as the wheels
    log "musl probe: cargo build --target mipsel-unknown-linux-musl (static, soft-float)"
    if ( use_debian_rust
         use_musl_executables
         cargo build --release --manifest-path "$src/Cargo.toml" --target mipsel-unknown-linux-musl \
             -Z build-std=std,panic_abort ) >"$logf" 2>&1; then
        cp "$CARGO_TARGET_DIR/mipsel-unknown-linux-musl/release/conntrack-musl-probe" "$WORK_DIR/musl-probe-bin"
        pass "mipsel-musl: probe built: $(file -b "$WORK_DIR/musl-probe-bin" | cut -d, -f1-5)"
    else
        tail -30 "$logf" >&2
        fail "mipsel-musl: probe build (see $logf)"
    fi
}

t_all=$SECONDS
for step in "${steps[@]}"; do
    case $step in
    cargo-test)
        cargo_test armv7-unknown-linux-gnueabihf "qemu-arm-static -L /usr/arm-linux-gnueabihf"
        cargo_test mipsel-unknown-linux-gnu "qemu-mipsel-static -L /usr/mipsel-linux-gnu"
        # Static and soft-float: the OpenWrt build's code generation.
        cargo_test mipsel-unknown-linux-musl qemu-mipsel-static
        ;;
    armhf)
        w=$(wheel_for '*_armv7l.whl')
        install_in_root armhf "$w" && boot armhf "$w"
        ;;
    mipsel)
        w=$(wheel_for '*-linux_mips.whl')
        install_in_root mipsel "$w" && boot mipsel "$w"
        ;;
    armhf-decode) install_in_root armhf "$(wheel_for '*_armv7l.whl')" decode ;;
    mipsel-decode) install_in_root mipsel "$(wheel_for '*-linux_mips.whl')" decode ;;
    musl)
        musl_checks "$(wheel_for '*-musllinux_1_2_mips.whl')"
        build_musl_probe
        ;;
    *) die "unknown step $step (cargo-test, armhf, mipsel, musl, armhf-decode, mipsel-decode)" ;;
    esac
done

report "emulated tests took $((SECONDS - t_all)) s"
ls -l "$WHEEL_DIR"/*.whl | awk '{print "wheel " $5 " bytes  " $9}' | tee -a "$REPORT" >&2
echo "--- summary ($REPORT)" >&2
cat "$REPORT" >&2
exit $failed
