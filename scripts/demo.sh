#!/usr/bin/env bash
# The demos, as root. Installs what is missing, builds, then runs:
#  1. the gossip cluster: 64 gossip nodes, each in its own network namespace
#     behind a bridge, with the kernel fan-out and with user-space sends, at
#     fan-outs 3 and 8, 5 trials each (about 5 minutes): convergence, update
#     and failure-detection times, per-node CPU and packets, medians and
#     ranges side by side (scripts/gossip-demo.sh says more);
#  2. the fan-out itself: a sender and 8 receiver namespaces, the same
#     broadcasts in kernel, sendmmsg and sendto modes, every copy counted and
#     checked at the receivers, sender CPU side by side.
# Everything they create is removed at the end, also on Ctrl-C.
#
#   scripts/demo.sh                 both
#   scripts/demo.sh gossip [ARGS]   the gossip cluster only (ARGS: --help)
#   scripts/demo.sh fanout [ARGS]   the fan-out demo only (ARGS: --help)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --examples
bin=target/release/examples
what=${1:-all}
[ $# -gt 0 ] && shift
case "$what" in
    gossip) exec "$bin/gossip" demo "$@" ;;
    fanout) exec "$bin/demo" "$@" ;;
    all)
        echo "=== 1. gossip cluster ==="
        "$bin/gossip" demo
        echo
        echo "=== 2. the fan-out: kernel vs user space ==="
        "$bin/demo"
        ;;
    *)
        echo "usage: scripts/demo.sh [all|gossip|fanout] [ARGS...]" >&2
        exit 2
        ;;
esac
