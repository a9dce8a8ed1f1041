#!/usr/bin/env bash
# The sender-CPU benchmark matrix behind docs/benchmarks.md: kernel fan-out
# vs sendmmsg vs a sendto loop, N in {4..256}, 64 B and 1200 B, 5 repeats,
# every run checked for loss at the receivers. Writes
# docs/benchmarks/{results.json,results.md,sender-cpu.svg,ratio.svg} and
# prints the table. Takes about 8 minutes. Run as root.
#
#   scripts/bench.sh                      # the full matrix
#   scripts/bench.sh --repeats 1 --ns 16,64 --count 500   # a smaller one
#   scripts/bench.sh syscalls             # system calls per broadcast (strace)
#   scripts/bench.sh batch                # broadcast_batch against single broadcasts and sendmmsg
#   scripts/bench.sh overhead             # kernel mode against the bare fan-out program
#   scripts/bench.sh interleaved          # the same, call by call in one thread
#   scripts/bench.sh profile --n 64       # perf record -a -g, kernel mode (--mode bare: the bare program)
#   scripts/bench.sh --families 4,6       # the matrix over IPv4 and IPv6 side by side
#   scripts/bench.sh criterion            # cargo bench (criterion, ~8 min)
#
# Arguments other than a leading subcommand go to `bench_matrix matrix`
# (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: needs root (network namespaces, eBPF)" >&2
    exit 1
fi
if [ -x scripts/setup.sh ]; then
    scripts/setup.sh
fi

target_dir="${CARGO_TARGET_DIR:-target}"
case "${1:-}" in
    criterion)
        shift
        exec cargo bench --bench fan_out -- "$@"
        ;;
    syscalls | profile | matrix | batch | compare | overhead | interleaved)
        command="$1"
        shift
        ;;
    *)
        command=matrix
        ;;
esac

if [ "$command" = syscalls ] && ! command -v strace >/dev/null 2>&1; then
    echo "bench: installing strace"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
fi

cargo build --release --example broadcast --example bench_matrix
exec "$target_dir/release/examples/bench_matrix" "$command" "$@"
