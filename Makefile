# The two commands of the README. Both bootstrap first (idempotent, quick when done).
SHELL := /bin/bash
OCELLUS_CACHE ?= $(HOME)/.cache/ocellus
ENV := source $(OCELLUS_CACHE)/env.sh
CONFIG ?= configs/demo.toml

.PHONY: run test bootstrap bench lint

bootstrap:
	@scripts/bootstrap

run: bootstrap
	@$(ENV) && cargo run --release -q -p ocellus-pipelines --bin ocellus -- run $(CONFIG)

# scripts/test bootstraps itself, so that its time summary includes the set-up.
test:
	@scripts/test

lint: bootstrap
	@$(ENV) && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

bench: bootstrap
	@$(ENV) && cargo run --release -q -p ocellus-bench --bin ocellus-bench -- runtime
