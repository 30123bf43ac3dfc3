# The two commands of the README. Both bootstrap first (idempotent, quick when done).
SHELL := /bin/bash
OCELLUS_CACHE ?= $(HOME)/.cache/ocellus
ENV := source $(OCELLUS_CACHE)/env.sh
CONFIG ?= configs/demo.toml

.PHONY: run test bootstrap bench lint install

PREFIX ?= /usr/local

bootstrap:
	@scripts/bootstrap

# Running needs only libtorch, ONNX Runtime, GStreamer and the Rerun viewer: no reference packages.
run:
	@scripts/bootstrap --runtime
	@$(ENV) && cargo run --release -q -p ocellus-pipelines --bin ocellus -- run $(CONFIG)

# A relocatable tree: PREFIX/bin/ocellus and the libraries it needs (no venv, no Python).
install:
	@scripts/package $(PREFIX)

# scripts/test bootstraps itself, so that its time summary includes the set-up.
test:
	@scripts/test

lint: bootstrap
	@$(ENV) && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

bench: bootstrap
	@$(ENV) && cargo run --release -q -p ocellus-bench --bin ocellus-bench -- runtime
