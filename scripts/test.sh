#!/usr/bin/env bash
# The test suite: formatting, lints, unit and integration tests (the
# integration tests build network namespaces and load eBPF programs: run as
# root; set ELEC_BROADCAST_SKIP_ROOT_TESTS=1 to skip them explicitly instead).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The examples as programs: tests/cli.rs runs the `broadcast` example
# (`cargo test` builds examples only as test harnesses).
cargo build --workspace --examples
# deploy/: the Kubernetes manifests, the Dockerfile, the Paxos configuration.
scripts/validate-deploy.sh
# Benchmarks run once each in test mode, on a quick setting.
ELEC_BENCH_QUICK=1 cargo test --workspace --all-targets
cargo test --workspace --doc
# The package as a user gets it: verified, docs.rs, a build without clang.
scripts/package-check.sh
