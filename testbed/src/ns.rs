//! Running code and processes inside named network namespaces.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::error::{context, last_os_error};

/// Where `ip netns add` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Opens the handle of the named namespace (`/run/netns/NAME`).
pub(crate) fn open_namespace(ns: &str) -> io::Result<OwnedFd> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {ns:?}"),
        ));
    }
    let path: PathBuf = [NETNS_RUN_DIR, ns].iter().collect();
    File::open(&path).map(OwnedFd::from).map_err(|e| {
        context(
            e,
            format_args!("cannot open network namespace {ns:?} ({})", path.display()),
        )
    })
}

/// Moves the calling thread (only it) into the namespace behind `fd`.
pub(crate) fn enter(fd: &OwnedFd, ns: &str) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `fd` keeps open for the
    // duration of the call; with CLONE_NEWNET it changes only the calling
    // thread's network namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(last_os_error(format_args!(
            "setns into network namespace {ns:?} failed"
        )));
    }
    Ok(())
}

fn join_or_resume<T>(h: thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Runs `f` on a fresh thread that first entered the network namespace `ns`
/// (a name as listed by `ip netns list`), and waits for it.
///
/// Only that helper thread changes namespace; the caller stays where it is.
/// Sockets that `f` creates belong to `ns` for their whole life and may be
/// used from any thread afterwards; child processes spawned by `f` start in
/// `ns`. A panic in `f` is propagated to the caller.
pub fn in_namespace<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let fd = open_namespace(ns)?;
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name("ebtb-netns".into())
            .spawn_scoped(s, move || -> io::Result<R> {
                enter(&fd, ns)?;
                drop(fd);
                Ok(f())
            })?;
        join_or_resume(h)
    })
}

/// Runs `f(i)` for every namespace `names[i]`, in order, on one helper thread
/// that moves from namespace to namespace. Stops at the first error.
pub(crate) fn for_each_namespace<T: Send>(
    names: &[&str],
    mut f: impl FnMut(usize) -> io::Result<T> + Send,
) -> io::Result<Vec<T>> {
    let fds = names
        .iter()
        .map(|n| open_namespace(n))
        .collect::<io::Result<Vec<_>>>()?;
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name("ebtb-netns".into())
            .spawn_scoped(s, move || -> io::Result<Vec<T>> {
                let mut out = Vec::with_capacity(fds.len());
                for (i, fd) in fds.iter().enumerate() {
                    enter(fd, names[i])?;
                    out.push(f(i)?);
                }
                Ok(out)
            })?;
        join_or_resume(h)
    })
}

/// A long-lived thread running inside a network namespace; see
/// [`spawn_in_namespace`].
#[derive(Debug)]
pub struct NsThread<R> {
    handle: JoinHandle<Option<R>>,
}

impl<R> NsThread<R> {
    /// Waits for the thread and returns its result; a panic in the thread is
    /// propagated to the caller.
    pub fn join(self) -> R {
        match self.handle.join() {
            Ok(Some(v)) => v,
            // The thread returns None only when entering the namespace failed,
            // and then spawn_in_namespace returned that error instead of an
            // NsThread.
            Ok(None) => unreachable!("namespace thread failed after reporting success"),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }

    /// True once the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// The thread's handle, e.g. for its id.
    pub fn thread(&self) -> &thread::Thread {
        self.handle.thread()
    }
}

/// Spawns a long-lived thread named `name` that enters the network namespace
/// `ns` and then runs `f`. Returns once the thread is inside the namespace
/// (or with the error that prevented it).
pub fn spawn_in_namespace<R: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> io::Result<NsThread<R>> {
    let fd = open_namespace(ns)?;
    let ns_owned = ns.to_string();
    let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let handle = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let entered = enter(&fd, &ns_owned);
            drop(fd);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            drop(tx);
            if ok {
                Some(f())
            } else {
                None
            }
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NsThread { handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(_) => Err(io::Error::other("namespace thread vanished")),
        },
    }
}

/// Spawns `cmd` as a child process inside the network namespace `ns` (the
/// child inherits the namespace of the helper thread that spawns it).
pub fn spawn_in(ns: &str, cmd: &mut Command) -> io::Result<Child> {
    in_namespace(ns, || cmd.spawn())?
}

/// Runs `cmd` to completion inside the network namespace `ns`, capturing its
/// output (like [`Command::output`]).
pub fn output_in(ns: &str, cmd: &mut Command) -> io::Result<Output> {
    in_namespace(ns, || cmd.output())?
}

/// Creates a UDP socket bound to `addr` inside the network namespace `ns`.
pub fn udp_socket_in(ns: &str, addr: std::net::SocketAddrV4) -> io::Result<std::net::UdpSocket> {
    in_namespace(ns, || std::net::UdpSocket::bind(addr))?
}
