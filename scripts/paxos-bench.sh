#!/usr/bin/env bash
# Benchmark of the Multi-Paxos example (examples/paxos, see docs/paxos.md).
#
# For 3, 5, 7 and 9 replicas, each replica in its own network namespace
# behind a bridge and the clients in another, runs the same workload with
# each set of in-kernel mechanisms of Electrode's ablation (--accel: none,
# broadcast, quorum, reply, all), in four scenarios: no faults, a follower
# killed (SIGKILL) half-way through, 5% of the frames dropped on every
# bridge port (nftables `numgen random`), and a single client (latency).
# Every run checks its history for linearizability. The sets run one after
# another in an order that rotates every repetition, REPS times, and the
# table reports medians and ratios of neighbouring runs.
#
#   sudo scripts/paxos-bench.sh
#   sudo SIZES="3 7" REPS=5 SCENARIOS=normal ACCELS="none all" scripts/paxos-bench.sh
#
# Settings (environment): SIZES ("3 5 7 9"), REPS (3), N measured requests
# (20000), W warm-up requests (2000), T concurrent clients (16), LOSS
# percent (5), LOSS_N requests in the loss scenario (5000), LAT_N requests
# of the single client (5000), SCENARIOS ("normal kill loss latency"),
# ACCELS ("none broadcast quorum reply all"; the fault and latency
# scenarios use LAT_ACCELS, "none all"), LEADER_CPU (unset; a CPU number
# runs every cluster with --leader-cpu, see docs/paxos.md), OUT
# (target/paxos-bench). Results: $OUT/results.jsonl (one JSON line per run),
# $OUT/table.md, $OUT/paxos-bench.svg, $OUT/environment.txt.
set -euo pipefail

SIZES=${SIZES:-"3 5 7 9"}
REPS=${REPS:-3}
N=${N:-20000}
W=${W:-2000}
T=${T:-16}
LOSS=${LOSS:-5}
LOSS_N=${LOSS_N:-5000}
LAT_N=${LAT_N:-5000}
SCENARIOS=${SCENARIOS:-"normal kill loss latency"}
ACCELS=${ACCELS:-"none broadcast quorum reply all"}
LAT_ACCELS=${LAT_ACCELS:-"none all"}

cd "$(dirname "$0")/.."
OUT=${OUT:-target/paxos-bench}

if [[ $EUID -ne 0 ]]; then
    echo "paxos-bench: needs root (network namespaces, eBPF, nftables)" >&2
    exit 1
fi
command -v nft >/dev/null || echo "paxos-bench: nft not found, the loss scenario will fail" >&2

cargo build --release --example paxos
bin=${CARGO_TARGET_DIR:-target}/release/examples/paxos

mkdir -p "$OUT"
results=$OUT/results.jsonl
: >"$results"
{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: SIZES=$SIZES REPS=$REPS N=$N W=$W T=$T LOSS=$LOSS LOSS_N=$LOSS_N LAT_N=$LAT_N ACCELS=$ACCELS LAT_ACCELS=$LAT_ACCELS LEADER_CPU=${LEADER_CPU:-}"
} >"$OUT/environment.txt"

failures=0
run() {
    local line
    if [[ -n ${LEADER_CPU:-} ]]; then set -- "$@" --leader-cpu "$LEADER_CPU"; fi
    if line=$("$bin" cluster "$@"); then
        echo "$line" >>"$results"
    else
        failures=$((failures + 1))
        echo "paxos-bench: FAILED: paxos cluster $*" >&2
        [[ $line == "{"* ]] && echo "$line" >>"$results"
    fi
    if command -v jq >/dev/null && [[ $line == "{"* ]]; then
        jq -r '"\(.replicas) replicas \(.accel | (. + "          ")[:10]) loss \(.loss_percent)% killed \(.killed_follower | tostring | (. + " ")[:5]) \(.throughput) req/s  p50 \(.p50_us) p99 \(.p99_us) us  leader \(.leader_cpu_us_per_request) us/req  linearizable \(.linearizable)"' <<<"$line"
    fi
}

# The list rotated left by $2 places.
rotate() {
    local -a a=($1)
    local k=$(($2 % ${#a[@]}))
    echo "${a[@]:k}" "${a[@]:0:k}"
}

for rep in $(seq "$REPS"); do
    for scenario in $SCENARIOS; do
        # Rotate which set goes first, so drift in the machine's load
        # does not favour one of them.
        if [[ $scenario == normal ]]; then accels=$(rotate "$ACCELS" "$rep"); else accels=$(rotate "$LAT_ACCELS" "$rep"); fi
        for n in $SIZES; do
            for accel in $accels; do
                case $scenario in
                normal) run --replicas "$n" --accel "$accel" -n "$N" -w "$W" -t "$T" ;;
                kill) run --replicas "$n" --accel "$accel" -n "$N" -w "$W" -t "$T" \
                    --kill-follower-after $((N / 2)) ;;
                loss) run --replicas "$n" --accel "$accel" -n "$LOSS_N" -w 500 -t "$T" \
                    --loss "$LOSS" ;;
                latency) run --replicas "$n" --accel "$accel" -n "$LAT_N" -w 500 -t 1 ;;
                *)
                    echo "paxos-bench: unknown scenario $scenario" >&2
                    exit 2
                    ;;
                esac
            done
        done
    done
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/environment.txt"
"$bin" report "$results" --svg "$OUT/paxos-bench.svg" | tee "$OUT/table.md"
echo
echo "results in $OUT/ ($failures failed runs)"
exit $((failures > 0))
