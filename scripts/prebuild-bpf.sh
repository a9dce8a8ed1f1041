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
# build.rs compiles every program into its OUT_DIR with the flags of every
# build; cargo says which OUT_DIR this build's script wrote. Cleaned first,
# so that the build script surely runs (and is itself rebuilt).
cargo clean --quiet -p elec-broadcast
out=$(ELEC_BROADCAST_PREBUILT=0 cargo build --lib --quiet --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "elec-broadcast" in m["package_id"]:
        print(m["out_dir"])
')
[ -n "$out" ] && [ -f "$out/fan_out.bpf.o" ] || {
    echo "prebuild-bpf: cargo did not say where the programs were compiled" >&2
    exit 1
}
mkdir -p bpf/prebuilt
for name in fan_out quorum reply bare; do
    cp "$out/$name.bpf.o" "bpf/prebuilt/$name.bpf.o"
done
sha256sum $(ls bpf/*.bpf.c bpf/*.h include/*.h | LC_ALL=C sort) >bpf/prebuilt/SOURCES.sha256
echo "prebuild-bpf: bpf/prebuilt/ updated from $out"
cat bpf/prebuilt/SOURCES.sha256
