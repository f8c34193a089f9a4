# One task runner for developers, CI and hooks. Run as root: the tests build network namespaces.
PYTHON ?= python3
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup install run test test-rust test-python soak fuzz lint bench bench-details wheels wheels-cross test-cross test-cross-rs clean

# Debian packages, Python tools and the package itself; safe to run again.
setup:
	bash scripts/setup.sh

install:
	$(PYTHON) -m pip install --quiet .

# The collector, installed first; flags in ARGS, e.g. make run ARGS="--output stdout -v".
run: setup install
	conntrack-event-collector $(ARGS)

test: setup install test-rust test-python

test-rust:
	cargo test --locked

test-python:
	$(PYTHON) -m pytest -ra tests

# The fault soak (tests/test_soak.py) for longer than the test suite's 3 minutes: a private
# three-node RabbitMQ cluster, faults on a schedule, then every event accounted for.
soak: install
	SOAK_SECONDS=$(or $(SOAK_SECONDS),900) $(PYTHON) -m pytest -ra tests/test_soak.py

# A short fuzzing run of the decoder (nightly-free: cargo-fuzz runs under RUSTC_BOOTSTRAP).
fuzz:
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),60)

lint:
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check python tests bench scripts
	$(PYTHON) -m mypy

# The hard cases first, default flags, one run (about 7 minutes): bare iterator, collector into
# an instant-ack sink and into RabbitMQ, 60/s to the kernel's maximum and a 200k burst.
bench: setup install
	$(PYTHON) bench/bench.py

# The older, narrower benchmarks: beside `conntrack -E`, rate phases into RabbitMQ, the filter;
# and start-up and idle memory.
bench-details: setup install
	$(PYTHON) bench/bench_iterator.py
	$(PYTHON) bench/bench_publish.py
	$(PYTHON) bench/bench_filter.py
	$(PYTHON) bench/bench_idle.py

wheels:
	bash cross/build-wheels.sh

# The armv7 and mipsel wheels again, built by cross-rs under podman: cross/out/cross-rs/.
wheels-cross:
	bash cross/cross-wheels.sh

test-cross: wheels
	bash cross/test-emulated.sh

# The same proofs for cross-rs's wheels (the x86_64 reference wheel comes from make wheels).
test-cross-rs: wheels-cross
	CROSS_WHEEL_DIR=cross/out/cross-rs bash cross/test-emulated.sh armhf mipsel

clean:
	cargo clean
	rm -rf dist cross/out cross/work
