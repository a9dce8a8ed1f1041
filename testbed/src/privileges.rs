//! Privileges: the capability check of [`crate::Testbed::new`], and the root
//! check that every test needing root makes first ([`require_root`], or the
//! [`require_root!`](crate::require_root!) macro that names the test itself).

use std::io::{self, Write};

use caps::{CapSet, Capability};

/// Set to 1 to skip (not fail) the tests that need root. CI runs as root and
/// must not set it.
pub const SKIP_ROOT_TESTS_ENV: &str = "ELEC_BROADCAST_SKIP_ROOT_TESTS";

/// The capabilities of `need` that the effective set of the calling thread
/// lacks (capabilities are per thread), in the order of `need`.
pub fn missing_capabilities(need: &[Capability]) -> io::Result<Vec<Capability>> {
    let effective = caps::read(None, CapSet::Effective).map_err(|e| {
        io::Error::other(format!(
            "reading the effective capabilities of this thread: {e}"
        ))
    })?;
    Ok(need
        .iter()
        .copied()
        .filter(|c| !effective.contains(c))
        .collect())
}

/// Clears the effective capability set of the calling thread only: the
/// process's other threads keep theirs, and the permitted set is left as it
/// is. For tests of what a program does without privileges.
pub fn drop_effective_capabilities() -> io::Result<()> {
    caps::clear(None, CapSet::Effective).map_err(|e| {
        io::Error::other(format!(
            "clearing the effective capabilities of this thread: {e}"
        ))
    })
}

fn names(capabilities: &[Capability]) -> String {
    capabilities
        .iter()
        .map(Capability::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks CAP_SYS_ADMIN and CAP_NET_ADMIN (network namespaces, links) in the
/// effective set.
pub(crate) fn check_privileges() -> io::Result<()> {
    let missing = missing_capabilities(&[Capability::CAP_SYS_ADMIN, Capability::CAP_NET_ADMIN])?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "testbed needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; \
             this thread lacks {}",
            names(&missing)
        ),
    ))
}

/// What keeps a test that needs root from running (`euid is 1000, lacks
/// CAP_SYS_ADMIN, ...`), or None when nothing does: root itself (namespace
/// files and sysctls belong to uid 0), CAP_SYS_ADMIN and CAP_NET_ADMIN
/// (namespaces, links, qdiscs) and CAP_BPF (the eBPF program; CAP_SYS_ADMIN
/// stands in for it, as bpf(2) and kernels before 5.8, which have no
/// CAP_BPF, accept).
fn missing_for_root_tests() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mut missing = Vec::new();
    if euid != 0 {
        missing.push(format!("euid is {euid}"));
    }
    let need = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_BPF,
    ];
    match missing_capabilities(&need) {
        Ok(lacks) => {
            let bpf_capable = !lacks.contains(&Capability::CAP_BPF)
                || !lacks.contains(&Capability::CAP_SYS_ADMIN);
            let lacks: Vec<Capability> = lacks
                .into_iter()
                .filter(|&c| c != Capability::CAP_BPF || !bpf_capable)
                .collect();
            if !lacks.is_empty() {
                missing.push(format!("lacks {}", names(&lacks)));
            }
        }
        Err(e) => missing.push(e.to_string()),
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// True when the test `test` may go on: it runs as root with CAP_SYS_ADMIN,
/// CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN in its stead) in effect.
///
/// Otherwise, when [`SKIP_ROOT_TESTS_ENV`] is `1`, returns false after
/// writing `SKIPPED <test>: needs root (...)` straight to the process's
/// stderr, so that the skip shows in `cargo test` output (libtest captures
/// only what `print!`/`eprint!` write), and the caller returns; without the
/// variable, panics with a message naming what is missing.
///
/// [`require_root!`](crate::require_root!) calls this with the path of the
/// calling function and returns from it.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    let Some(missing) = missing_for_root_tests() else {
        return true;
    };
    if std::env::var(SKIP_ROOT_TESTS_ENV).is_ok_and(|v| v == "1") {
        let line =
            format!("SKIPPED {test}: needs root ({missing}); {SKIP_ROOT_TESTS_ENV}=1 is set\n");
        // One write of the whole line, past libtest's capture; a failed
        // write to stderr has nowhere to be reported.
        let _ = io::stderr().lock().write_all(line.as_bytes());
        return false;
    }
    panic!(
        "{test} needs root ({missing}; CAP_SYS_ADMIN and CAP_NET_ADMIN are for network \
         namespaces, CAP_BPF for the eBPF program): run it as root, or set \
         {SKIP_ROOT_TESTS_ENV}=1 to skip it"
    );
}

/// The path of the function whose item `_here` is (see [`require_root!`]):
/// `std::any::type_name` of a function item declared inside it, less that
/// item's name and any closures around it.
#[doc(hidden)]
pub fn __function_path<F>(_here: F) -> &'static str {
    let mut name = std::any::type_name::<F>();
    name = name.strip_suffix("::__here").unwrap_or(name);
    while let Some(outer) = name.strip_suffix("::{{closure}}") {
        name = outer;
    }
    name
}

/// Returns from the calling test (a function returning `()`) unless it may
/// run as root: `if !require_root("<crate>::<test>") { return; }`, with the
/// test's path filled in. See [`require_root`](fn@crate::require_root) for
/// what is checked, the skip and the failure.
///
/// ```no_run
/// // A #[test] function:
/// fn creates_namespaces() {
///     elec_testbed::require_root!();
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {{
        fn __here() {}
        if !$crate::require_root($crate::__function_path(__here)) {
            return;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_path_names_the_caller() {
        fn __here() {}
        assert_eq!(
            __function_path(__here),
            "elec_testbed::privileges::tests::function_path_names_the_caller"
        );
        let in_closure = || {
            fn __here() {}
            __function_path(__here)
        };
        assert_eq!(
            in_closure(),
            "elec_testbed::privileges::tests::function_path_names_the_caller"
        );
    }

    #[test]
    fn dropped_capabilities_are_missing_on_this_thread_only() {
        let before = caps::read(None, CapSet::Effective).unwrap();
        let need = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN];
        std::thread::spawn(move || {
            drop_effective_capabilities().unwrap();
            assert_eq!(missing_capabilities(&need).unwrap(), need);
        })
        .join()
        .unwrap();
        assert_eq!(caps::read(None, CapSet::Effective).unwrap(), before);
    }

    #[test]
    fn missing_capabilities_follow_the_effective_set() {
        let effective = caps::read(None, CapSet::Effective).unwrap();
        let all = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN];
        let missing = missing_capabilities(&all).unwrap();
        for c in all {
            assert_eq!(missing.contains(&c), !effective.contains(&c), "{c}");
        }
    }
}
