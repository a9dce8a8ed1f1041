//! Registry of live testbed namespaces, deletion, signal handling and removal
//! of stale leftovers.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use crate::ip;
use crate::ns::NETNS_RUN_DIR;

/// Prefix of every namespace a testbed creates.
pub(crate) const PREFIX: &str = "ebtb-";

static LIVE: Mutex<BTreeMap<u64, Vec<String>>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<u64, Vec<String>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers the namespaces of testbed `id` for cleanup on a signal.
pub(crate) fn register(id: u64, names: Vec<String>) {
    live().insert(id, names);
}

/// Forgets testbed `id`.
pub(crate) fn unregister(id: u64) {
    live().remove(&id);
}

/// Prefix of the namespaces of this process: `ebtb-<pid>-`.
pub(crate) fn own_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

fn netns_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Lists the network namespaces created by testbeds of this process that
/// still exist (names starting with `ebtb-<pid>-`), e.g. to assert cleanup.
pub fn leftover_namespaces() -> Vec<String> {
    let prefix = own_prefix();
    netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Deletes the named namespaces with `ip netns del`, ignoring names that do not
/// exist; anything `ip` leaves behind is unmounted and unlinked directly.
pub(crate) fn delete_namespaces(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let lines: Vec<String> = names.iter().map(|n| format!("netns del {n}")).collect();
    let _ = ip::batch("ip", &lines, true, "deleting testbed namespaces");
    for n in names {
        let path = Path::new(NETNS_RUN_DIR).join(n);
        if !path.exists() {
            continue;
        }
        if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Deletes the namespaces of every live testbed of this process. Meant for a
/// program that installs its own SIGINT handler (then the testbed does not
/// install one) and wants to clean up before exiting. Testbeds cleaned up this
/// way are unusable afterwards; dropping them is harmless.
pub fn cleanup_all() {
    let names: Vec<String> = live().values().flatten().cloned().collect();
    delete_namespaces(&names);
}

/// Deletes namespaces `ebtb-<pid>-*` whose process no longer exists, and
/// namespaces of this process's pid that no live testbed owns (left behind
/// by an earlier process with the same pid).
pub(crate) fn remove_stale() {
    let own = std::process::id();
    let names = netns_names();
    let stale: Vec<String> = {
        // Testbeds register their names before creating them, so under the
        // lock every existing namespace of a live testbed is registered.
        let live = live();
        names
            .into_iter()
            .filter(|n| {
                let Some(rest) = n.strip_prefix(PREFIX) else {
                    return false;
                };
                let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                    return false;
                };
                if pid == own {
                    !live.values().any(|v| v.contains(n))
                } else {
                    !Path::new(&format!("/proc/{pid}")).exists()
                }
            })
            .collect()
    };
    delete_namespaces(&stale);
}

static SIGNAL_PIPE_WR: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE_WR.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `b` is a live one-byte buffer.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// True when `sig` currently has the default disposition.
fn has_default_disposition(sig: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into
    // `old`, a zeroed (valid) struct sigaction.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_DFL
    }
}

/// Installs (once per process) handlers for SIGINT, SIGTERM and SIGHUP that
/// delete the namespaces of all live testbeds and exit with 128 + signal
/// (130 for Ctrl-C). Signals that already have a handler are left alone.
pub(crate) fn install_signal_handlers() {
    INSTALL.call_once(|| {
        let sigs: Vec<libc::c_int> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .into_iter()
            .filter(|s| has_default_disposition(*s))
            .collect();
        if sigs.is_empty() {
            return;
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        let read_fd = fds[0];
        SIGNAL_PIPE_WR.store(fds[1], Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("ebtb-signals".into())
            .spawn(move || loop {
                let mut b = 0u8;
                // SAFETY: reads one byte into `b`, which lives across the call;
                // `read_fd` stays open for the life of the process.
                let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
                if n == 1 {
                    cleanup_all();
                    std::process::exit(128 + i32::from(b));
                }
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            });
        if spawned.is_err() {
            return;
        }
        for sig in sigs {
            // SAFETY: installs `on_signal`, which only calls the
            // async-signal-safe write(2), with an otherwise zeroed (valid)
            // struct sigaction and an empty signal mask.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}
