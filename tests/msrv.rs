//! The declared minimum Rust version is true of what the committed
//! `Cargo.lock` builds: no package in it needs a newer Rust than
//! `rust-version` in Cargo.toml says.

use std::process::Command;

/// A version like "1.85" or "1.85.1" as comparable numbers.
fn parse(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().expect("a numeric Rust version"))
        .collect()
}

/// The host's target triple, as rustc says it (`host: ...` of `rustc -vV`).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// The crate builds for Linux only: the packages of this host's platform
/// are those of every build (the others, such as Android's or Windows',
/// are in the lockfile but never built, nor downloaded on a fresh machine,
/// which `--offline` would need without the filter).
#[test]
fn rust_version_covers_every_locked_package() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let declared = parse(env!("CARGO_PKG_RUST_VERSION"));
    let packages = metadata["packages"].as_array().expect("a package list");
    let too_new: Vec<String> = packages
        .iter()
        .filter_map(|p| {
            let needs = p["rust_version"].as_str()?;
            (parse(needs) > declared)
                .then(|| format!("{} {} needs Rust {needs}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version = {:?} in Cargo.toml, but the lockfile has: {}",
        env!("CARGO_PKG_RUST_VERSION"),
        too_new.join(", ")
    );
    assert!(packages.len() > 10, "the lockfile's packages were listed");
}
