#!/usr/bin/env bash
# Installs what the tests and the collector need on a fresh Debian machine; quick when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(conntrack nftables iproute2 rabbitmq-server openssl procps libcap2-bin util-linux systemd coreutils)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Building the extension needs Rust 1.82 or later: rustup's if present, else Debian's
# rustc-web (bookworm-security carries a current one).
if ! command -v cargo >/dev/null && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc-web cargo-web
fi

python3 -m pip install --quiet --disable-pip-version-check maturin -r requirements-dev.txt

# The integration tests publish to a RabbitMQ on 127.0.0.1:5672 (guest/guest).
if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
    rabbitmq-server -detached
    rabbitmqctl -q await_startup --timeout 120 >/dev/null
fi
