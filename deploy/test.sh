#!/usr/bin/env bash
# Runs fraudgraph's whole test suite on a fresh Debian machine: set-up (idempotent, cached),
# then formatting, lints, and every test of every crate, CPU only.
# This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./deploy/setup.sh --with-tansu

echo "[test] cargo fmt --check" >&2
cargo fmt --all --check
echo "[test] cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo doc -D warnings (every doc link resolves)" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "[test] cargo test" >&2
cargo test --workspace --all-targets --locked
echo "[test] deploy/check.sh (Kubernetes manifests, dashboard, alert rules; no container engine)" >&2
./deploy/check.sh
