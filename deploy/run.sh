#!/usr/bin/env bash
# Runs fraudgraph on this machine with its embedded defaults: set-up (idempotent, cached),
# a release build, then `fraudgraph ARGS...`.
#
# Without arguments it runs `fraudgraph doctor` for now: `fraudgraph serve` (the scoring
# service on the bundled model artifact and an in-memory graph) arrives with issue #5 and
# will become the default here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./deploy/setup.sh
cargo build --release --locked --bin fraudgraph
if [ "$#" -eq 0 ]; then
    set -- doctor
fi
exec ./target/release/fraudgraph "$@"
