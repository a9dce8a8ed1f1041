#!/bin/sh
# The gossip demo: a cluster of gossip nodes (16 by default), each in its own
# network namespace behind a bridge, run with the kernel fan-out and then
# with user-space sends; prints convergence, update and failure-detection
# times, CPU and transmitted packets side by side, and how each is measured.
#
#   scripts/gossip-demo.sh [--nodes 16] [--period 200ms] [--fan-out 3]
#                          [--window 10s] [--large 1024] [--modes kernel,user]
#
# (--large must fit one datagram: about 1300 bytes with the nodes' default
# 1400-byte packets.)
#
# Needs root (network namespaces, the eBPF program). Everything it creates
# (namespaces, links, programs, node processes) is removed at the end, also
# on Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "gossip-demo: needs root (network namespaces and eBPF); try: sudo $0 $*" >&2
    exit 1
fi
cargo build --release --quiet --example gossip
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/examples/gossip" demo "$@"
