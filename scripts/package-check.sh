#!/usr/bin/env bash
# The crate as a downstream user gets it: `cargo package` with verification
# (the package builds from what it ships), then, from the unpacked package,
# a docs.rs-style documentation build and a new binary project that depends
# on it and builds with no clang on the PATH (it takes the compiled eBPF
# programs shipped in bpf/prebuilt/) and runs a broadcast on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}

cargo package --allow-dirty --quiet 2>&1 | grep -v "^warning: ignoring" || true
crate=$(ls -t "$target"/package/elec-broadcast-*.crate | head -1)
# `cargo package` fails above with a message if verification fails:
test -s "$crate"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
package=$(ls -d "$work"/elec-broadcast-*)

# No clang: a directory of links to every tool on the PATH but clang.
mkdir "$work/bin"
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
    for tool in "$dir"/*; do
        name=$(basename "$tool")
        case $name in clang|clang-*) continue ;; esac
        [ -e "$work/bin/$name" ] || ln -s "$tool" "$work/bin/$name"
    done
done
if PATH="$work/bin" command -v clang >/dev/null; then
    echo "package-check: clang is still on the PATH" >&2
    exit 1
fi

echo "package-check: docs.rs build of the package"
(cd "$package" && DOCS_RS=1 CARGO_TARGET_DIR="$target/package-check" \
    cargo doc --no-deps --quiet --features tokio)

echo "package-check: a downstream project, built without clang"
mkdir -p "$work/downstream/src"
cat >"$work/downstream/Cargo.toml" <<TOML
[package]
name = "downstream"
version = "0.1.0"
edition = "2021"

[dependencies]
elec-broadcast = { path = "$package", features = ["tokio"] }
TOML
cat >"$work/downstream/src/main.rs" <<'RUST'
use std::net::{SocketAddr, UdpSocket};

use elec_broadcast::{Broadcaster, Mode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    let receivers: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let peers: Vec<SocketAddr> = receivers
        .iter()
        .map(|r| r.local_addr())
        .collect::<Result<_, _>>()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let report = broadcaster.broadcast(&socket, b"from downstream", &peers)?;
    assert!(report.is_complete(), "{report:?}");
    for receiver in &receivers {
        let mut buf = [0; 64];
        let (len, from) = receiver.recv_from(&mut buf)?;
        assert_eq!(&buf[..len], b"from downstream");
        assert_eq!(from, socket.local_addr()?);
    }
    println!("downstream: {} copies, {:?}", report.copies_sent, broadcaster.mode());
    Ok(())
}
RUST
log="$work/build.log"
start=$(date +%s)
(cd "$work/downstream" && PATH="$work/bin" CARGO_TARGET_DIR="$target/package-check" \
    cargo build 2>&1) | tee "$log" | grep -E "warning: elec-broadcast|^error" || true
grep -q "using the compiled eBPF programs" "$log" || {
    echo "package-check: the build did not say it took the compiled programs" >&2
    tail -30 "$log" >&2
    exit 1
}
echo "package-check: built in $(( $(date +%s) - start )) s without clang"
"$target/package-check/debug/downstream"
