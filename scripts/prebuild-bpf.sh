#!/usr/bin/env bash
# Rebuilds the compiled eBPF objects shipped in bpf/prebuilt/, which
# downstream builds without clang use (see build.rs), and records the
# SHA-256 of the sources they come from (bpf/prebuilt/SOURCES.sha256, the
# format of `sha256sum`). tests/prebuilt.rs fails until this has been run
# after a change to bpf/ or include/.
#
#   scripts/prebuild-bpf.sh        (needs clang, like any build from source)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v "${CLANG:-clang}" >/dev/null || {
    echo "prebuild-bpf: clang is needed to compile bpf/" >&2
    exit 1
}
# build.rs compiles every program into its OUT_DIR with the flags of every build.
ELEC_BROADCAST_PREBUILT=0 cargo build --lib --quiet
target=${CARGO_TARGET_DIR:-target}
# The OUT_DIR this build wrote: the one with the newest objects (a build
# with other features has an OUT_DIR of its own, and directories keep their
# times when files in them are rewritten).
out=$(dirname "$(ls -t "$target"/debug/build/elec-broadcast-*/out/fan_out.bpf.o | head -1)")
mkdir -p bpf/prebuilt
for name in fan_out quorum reply; do
    cp "$out/$name.bpf.o" "bpf/prebuilt/$name.bpf.o"
done
sha256sum $(ls bpf/*.bpf.c bpf/*.h include/*.h | LC_ALL=C sort) >bpf/prebuilt/SOURCES.sha256
echo "prebuild-bpf: bpf/prebuilt/ updated from $out"
cat bpf/prebuilt/SOURCES.sha256
