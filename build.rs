//! Compiles `bpf/fan_out.bpf.c` with clang and generates its libbpf-rs
//! skeleton in `OUT_DIR` (included by `src/kernel.rs`).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

use libbpf_cargo::SkeletonBuilder;

const PROGRAM: &str = "bpf/fan_out.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang"));
    if Command::new(&clang).arg("--version").output().is_err() {
        fail(&format!(
            "`{}` was not found. The eBPF program in bpf/ is compiled with clang: \
             install it with `apt-get install -y clang` (Debian/Ubuntu; scripts/setup.sh \
             installs everything the build needs), or point CLANG at a clang binary.",
            Path::new(&clang).display()
        ));
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut args: Vec<OsString> = vec!["-Iinclude".into(), "-Wall".into(), "-Werror".into()];
    // Atomic exchange and compare-and-swap need BPF ISA v3 (kernel 5.12+).
    args.push("-mcpu=v3".into());
    // <linux/types.h> pulls in <asm/types.h>, which Debian keeps in the
    // multiarch directory that `clang -target bpf` does not search.
    if let Some(dir) = multiarch_include_dir() {
        args.push(format!("-I{}", dir.display()).into());
    }

    if let Err(err) = SkeletonBuilder::new()
        .source(PROGRAM)
        .clang(&clang)
        .clang_args(args)
        .build_and_generate(out_dir.join("fan_out.skel.rs"))
    {
        fail(&format!("building {PROGRAM} failed: {err:#}"));
    }
}

fn multiarch_include_dir() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let dir = PathBuf::from(format!("/usr/include/{arch}-linux-gnu"));
    dir.join("asm").is_dir().then_some(dir)
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    println!("cargo:warning={message}");
    exit(1);
}
