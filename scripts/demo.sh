#!/usr/bin/env bash
# The demo: builds everything, brings up a local testbed (a sender and 8
# receiver network namespaces behind a bridge), broadcasts in kernel and
# user-space modes, prints delivery and sender CPU side by side, tears down.
# Run as root. Arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --examples
exec target/release/examples/demo "$@"
