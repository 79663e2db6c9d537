#!/usr/bin/env bash
# Runs the whole test suite: formatting, crate boundaries, lints, unit,
# property, storage conformance and end-to-end tests (real agentd processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> crate boundaries (scripts/check-layers.sh)"
bash scripts/check-layers.sh
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace --no-fail-fast -- --test-threads=2
