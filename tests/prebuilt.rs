//! The compiled eBPF objects shipped in `bpf/prebuilt/` (used by builds
//! without clang, see build.rs) belong to the sources in `bpf/` and
//! `include/`, and the kernel accepts them.

mod common;

use std::path::Path;

use sha2::{Digest, Sha256};

const PROGRAMS: [&str; 4] = ["fan_out", "quorum", "reply", "bare"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `sha256sum`'s lines for the sources, sorted by path.
fn source_hashes() -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for (dir, suffixes) in [("bpf", [".bpf.c", ".h"]), ("include", [".h", ".h"])] {
        for entry in std::fs::read_dir(root().join(dir)).expect("reading the sources") {
            let name = entry.expect("a directory entry").file_name();
            let name = name.to_string_lossy();
            if suffixes.iter().any(|s| name.ends_with(s)) {
                paths.push(format!("{dir}/{name}"));
            }
        }
    }
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(root().join(path)).expect("reading a source");
            let hash: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{hash}  {path}")
        })
        .collect()
}

#[test]
fn shipped_objects_belong_to_the_sources() {
    let recorded = std::fs::read_to_string(root().join("bpf/prebuilt/SOURCES.sha256"))
        .expect("reading bpf/prebuilt/SOURCES.sha256");
    let recorded: Vec<&str> = recorded.lines().collect();
    assert_eq!(
        recorded,
        source_hashes(),
        "bpf/ or include/ changed since the shipped objects were built: \
         run scripts/prebuild-bpf.sh and commit bpf/prebuilt/"
    );
    for name in PROGRAMS {
        let object = std::fs::read(root().join(format!("bpf/prebuilt/{name}.bpf.o")))
            .expect("reading a shipped object");
        // An ELF relocatable object for eBPF (e_machine 247), little-endian.
        assert_eq!(&object[..4], b"\x7fELF", "{name}");
        assert_eq!(object[5], 1, "{name}: little-endian");
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247, "{name}");
    }
}

#[test]
fn the_kernel_accepts_the_shipped_objects() {
    elec_testbed::require_root!();
    for name in PROGRAMS {
        let path = root().join(format!("bpf/prebuilt/{name}.bpf.o"));
        let open = libbpf_rs::ObjectBuilder::default()
            .open_file(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let object = open
            .load()
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
        assert!(object.progs().count() >= 1, "{name}");
    }
}
