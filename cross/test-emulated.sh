#!/usr/bin/env bash
# `make test-cross` (after `make wheels`): the proofs that the cross wheels work. Bash runs the
# tools (mmdebstrap, chroot, cpio, qemu) and keeps what they report as facts in DIR/facts/;
# pytest gives the verdicts on those facts (tests/cross/test_emulated.py), and the guests run the
# host's own kernel tests (cross/guest/kernel-tests.args).
#   cargo-test   the crate's Rust tests built for armv7, mipsel (glibc) and mipsel (musl,
#                static, soft-float), run under qemu-user
#   armhf        armv7 wheel: the target's pip installs it with its dependencies into a Debian
#                armhf root (qemu-user chroot), the CLI runs, Python imports it and decodes the
#                golden captures exactly as x86_64 does; then Debian's armmp kernel boots under
#                qemu-system-arm and runs the host's kernel tests (real NEW/UPDATE/DESTROY
#                events, field by field against the guest's own `conntrack -E`), and measures
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
# Writes DIR/facts/ and DIR/emulated-report.txt; exits non-zero if any proof failed.
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
# Absolute: the host's decoding runs from / and writes its facts here.
WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)
REPORT="$WHEEL_DIR/emulated-report.txt"
FACTS="$WHEEL_DIR/facts"
: >"$REPORT"
rm -rf "$FACTS"
mkdir -p "$FACTS"
printf '%s\n' "${steps[@]}" >"$FACTS/steps"
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
    # pytest for the guest's kernel tests (the same requirement as the host's).
    if [ "$only" != decode ] && ! chroot "$root" /usr/bin/python3 -m pip install --no-cache-dir \
            --no-compile --only-binary=:all: --break-system-packages --disable-pip-version-check \
            $(grep -E '^pytest' requirements-dev.txt) >"$WORK_DIR/pip-pytest-$arch.log" 2>&1; then
        tail -20 "$WORK_DIR/pip-pytest-$arch.log" >&2
        fail "$arch: pip install pytest for the guest's kernel tests (see $WORK_DIR/pip-pytest-$arch.log)"
    fi
    if [ "$only" = decode ]; then
        :
    elif chroot "$root" /usr/local/bin/conntrack-event-collector --help >"$WORK_DIR/cli-$arch.log" 2>&1; then
        pass "$arch: conntrack-event-collector --help runs under qemu-user ($(grep -c -- '--amqp-' "$WORK_DIR/cli-$arch.log") --amqp-* options listed)"
    else
        tail -20 "$WORK_DIR/cli-$arch.log" >&2
        fail "$arch: conntrack-event-collector --help under qemu-user"
    fi
    # Import, and decode every golden capture as the reader would: facts for pytest, which
    # compares them with the manifest and with the x86_64 wheel's.
    mkdir -p "$root/tmp/testdata"
    cp rust/testdata/*.bin rust/testdata/manifest.json "$root/tmp/testdata/"
    cp "$CROSS_DIR/guest/decode_captures.py" "$root/tmp/"
    if chroot "$root" /usr/bin/python3 /tmp/decode_captures.py /tmp/testdata /tmp/decoded.json \
            >"$WORK_DIR/decode-$arch.log" 2>&1; then
        cp "$root/tmp/decoded.json" "$FACTS/decoded-$arch.json"
        pass "$arch: import under qemu-user: $(tail -1 "$WORK_DIR/decode-$arch.log")"
    else
        cat "$WORK_DIR/decode-$arch.log" >&2
        fail "$arch: import under qemu-user"
    fi
    decode_on_host
}

# What the x86_64 wheel decodes from the golden captures, in a venv of the host's Python: the
# reference the targets' facts are compared with.
decode_on_host() {
    local venv="$WORK_DIR/venv-host"
    [ ! -s "$FACTS/decoded-x86_64.json" ] || return 0
    rm -rf "$venv"
    "$HOST_PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-index --no-deps "$(wheel_for '*_x86_64.whl' "$OUT_DIR")"
    (cd / && "$venv/bin/python" "$CROSS_DIR/guest/decode_captures.py" "$REPO_DIR/rust/testdata" \
        "$FACTS/decoded-x86_64.json") >&2 || fail "x86_64: decode_captures.py with the x86_64 wheel"
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
    # nft_chain_nat and nft_nat: the kernel tests' source NAT.
    local moddir="lib/modules/$kver" wanted=(crc32c_generic nf_conntrack_netlink nft_ct nft_chain_nat nft_nat) files=()
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
    # The host's tests and their pytest settings, at the same paths under /cross-test.
    mkdir -p "$stage/cross-test/tests"
    cp "$CROSS_DIR/guest/throughput.py" "$CROSS_DIR/guest/kernel-tests.args" pyproject.toml \
        "$stage/cross-test/"
    cp tests/*.py "$stage/cross-test/tests/"
    if [ "$arch" = mipsel ] && [ -x "$WORK_DIR/musl-probe-bin" ]; then
        cp "$WORK_DIR/musl-probe-bin" "$stage/cross-test/musl-probe"
        echo "$WORK_DIR/musl-probe-bin" >"$FACTS/mipsel-guest-runs-musl-probe"
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
    # The console is the guest's facts (pytest reads its JUnit and throughput lines).
    tr -d '\r' <"$logf" >"$FACTS/qemu-$arch.log"
    cp "$FACTS/qemu-$arch.log" "$WHEEL_DIR/qemu-$arch.log"
    grep -a -E '^(guest:|musl-probe:|(PASSED|FAILED|ERROR) )' "$FACTS/qemu-$arch.log" | sed 's/^/    /' >&2 || true
    report "      $arch: qemu-system, $(basename "$wheel"): boot to power-off $took s; $(throughput_summary "$FACTS/qemu-$arch.log")"
}

# One line of what the guest measured, for the report (informative; pytest judges).
throughput_summary() {
    "$HOST_PYTHON" - "$1" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1], errors="replace") if l.startswith("CONNTRACK-QEMU-THROUGHPUT: ")]
r = json.loads(line[-1].split(" ", 1)[1]) if line else {}
t, j = r.get("throughput", {}), r.get("throughput_json", {})
print(f"kernel {r.get('kernel')} {r.get('machine')}, import {r.get('import_s')} s; {t.get('flows')}"
      f" flows: iterator {t.get('iterator_per_s')}/s as dicts, {j.get('iterator_per_s')}/s as JSON;"
      f" flush to iterator {t.get('flush_destroy_per_s')}/s dicts,"
      f" {j.get('flush_destroy_per_s')}/s JSON")
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
    # The ELF facts pytest judges: header, MIPS ABI flags, dynamic section, program headers,
    # symbol versions.
    { echo "wheel: $(basename "$wheel")"; echo "size: $(stat -c %s "$so")"
      readelf -h -A -d -l -V "$so"; } >"$FACTS/musl-readelf.txt" 2>&1
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

# The verdicts on the facts gathered above, one report line each.
log "verdicts: pytest tests/cross"
verdicts="$WORK_DIR/verdicts.log"
CROSS_FACTS_DIR="$FACTS" "$HOST_PYTHON" -m pytest -p no:cacheprovider -q -rA tests/cross >"$verdicts" 2>&1 || true
sed -n -E 's/^PASSED tests\/cross\/[^:]*::/PASS  pytest /p; s/^(FAILED|ERROR) tests\/cross\/[^:]*::/FAIL  pytest /p' \
    "$verdicts" | tee -a "$REPORT" >&2
grep -q -E '^[0-9]+ passed' <(tail -1 "$verdicts") && ! grep -q -E '^(FAILED|ERROR) ' "$verdicts" \
    || { sed -n '/= FAILURES =/,$p' "$verdicts" | head -80 >&2; fail "pytest tests/cross (see $verdicts)"; }
report "emulated tests took $((SECONDS - t_all)) s"
ls -l "$WHEEL_DIR"/*.whl | awk '{print "wheel " $5 " bytes  " $9}' | tee -a "$REPORT" >&2
echo "--- summary ($REPORT)" >&2
cat "$REPORT" >&2
exit $failed
