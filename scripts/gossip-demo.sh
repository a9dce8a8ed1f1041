#!/bin/sh
# The gossip demo: a cluster of gossip nodes (64 by default, up to 250), each
# in its own network namespace behind a bridge, started afresh for every
# trial; for each broadcast mode (kernel fan-out, user-space sendmmsg) and
# fan-out it measures convergence, update and failure-detection times,
# per-node CPU and packets (idle, and while the nodes gossip every round),
# checks that no datagram was lost and that the kernel's neighbour table did
# not overflow, and prints medians and ranges over the trials, in tables of
# kernel against user space per fan-out, with what each figure means and how
# it is measured. A default run (2 modes x 2 fan-outs x 5 trials at 64 nodes)
# takes about 5 minutes on two CPUs.
#
#   scripts/gossip-demo.sh [--nodes 64] [--trials 5] [--fan-outs 3,8]
#                          [--modes kernel,user] [--period 200ms]
#                          [--window 25] [--load 1] [--value-size 1024]
#                          [--neighbours static|arp|arp-unraised]
#                          [--recv-compare] [--json FILE] [--timeout 30s]
#
# (--window is in periods; --value-size must fit one datagram: about 1300
# bytes with the nodes' default 1400-byte packets. --neighbours static, the
# default, installs permanent neighbour entries in every namespace, so no
# ARP; arp raises net.ipv4.neigh.default.gc_thresh1/2/3 for the run where
# N x (N - 1) entries would not fit, and restores them.)
#
# Needs root (network namespaces, the eBPF program). Everything it creates
# (namespaces, links, programs, node processes, raised sysctls) is removed or
# restored at the end, also on an error and on Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "gossip-demo: needs root (network namespaces and eBPF); try: sudo $0 $*" >&2
    exit 1
fi
cargo build --release --quiet --example gossip
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/examples/gossip" demo "$@"
