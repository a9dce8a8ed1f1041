#!/usr/bin/env bash
# Installs what the build, the tests and the demos need, where it is missing
# (Debian/Ubuntu, as root): clang compiles the eBPF program, libelf and zlib
# are libbpf's dependencies, bpftool and iproute2 are used by the tests.
set -euo pipefail

packages=(clang libelf-dev zlib1g-dev pkg-config bpftool iproute2 nftables)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
fi
echo "setup: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
