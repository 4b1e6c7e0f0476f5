#!/usr/bin/env bash
# Runs fraudgraph on this machine with its embedded defaults: set-up (idempotent, cached),
# a release build, then `fraudgraph ARGS...`.
#
# Without arguments it runs `fraudgraph serve`: the scoring service on the model artifact
# built into the binary and an in-memory graph warmed from simulated history, CPU when
# there is no GPU (gRPC on 127.0.0.1:50051, metrics on 127.0.0.1:9100/metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./deploy/setup.sh
cargo build --release --locked --bin fraudgraph
if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec ./target/release/fraudgraph "$@"
