# The two commands of the README. Both bootstrap first (idempotent, quick when done).
SHELL := /bin/bash
OCELLUS_CACHE ?= $(HOME)/.cache/ocellus
ENV := source $(OCELLUS_CACHE)/env.sh
CONFIG ?= configs/demo.toml

.PHONY: run test bootstrap build check bench lint

bootstrap:
	@scripts/bootstrap

run: bootstrap
	@$(ENV) && cargo build --release -p ocellus-pipelines --bin ocellus
	@./target/release/ocellus run $(CONFIG)

test: bootstrap
	@$(ENV) && scripts/test

lint: bootstrap
	@$(ENV) && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

bench: bootstrap
	@$(ENV) && cargo build --release -p ocellus-pipelines --bin ocellus && ./target/release/ocellus bench runtime
