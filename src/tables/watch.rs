//! The thread that follows the kernel's table changes for a broadcaster.
//!
//! It sleeps in `poll(2)` on a [`ChangeSocket`] and hands every datagram of
//! notifications to the [`Resolver`], which drops what the change could make
//! wrong and moves to a new generation. Broadcasts never wait for it and
//! never make a netlink call while their plan is current.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::thread::{self, JoinHandle};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::netlink::ChangeSocket;
use super::resolve::Resolver;

/// Forks of this process so far, as seen by the child: a child inherits
/// the broadcasters but not their watching threads, so its plans must not
/// be trusted to be followed.
static FORKS: AtomicU64 = AtomicU64::new(0);
static COUNT_FORKS: Once = Once::new();

pub(crate) extern "C" fn forked_child() {
    // Async-signal-safe: one atomic add.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// How many times this process (or its ancestors, since the first
/// broadcaster) was forked; counted once a broadcaster has started.
pub(crate) fn forks() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Runs the watching thread; stops and joins it on drop.
pub(crate) struct Watcher {
    /// [`forks`] when started: the thread exists in that process only.
    forks: u64,
    stop: Arc<EventFd>,
    /// Held by the thread while it reads and applies a datagram; held by
    /// `Watcher::hold` (a test hook) to keep it from doing so.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pause: Arc<Mutex<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts following `socket` for `resolver`. The socket must have been
    /// opened before the resolver first reads the tables, so that no change
    /// falls between the read and the subscription.
    pub(crate) fn start(resolver: Arc<Resolver>, socket: ChangeSocket) -> io::Result<Watcher> {
        COUNT_FORKS.call_once(|| {
            // SAFETY: registers a handler that only does an atomic add, which
            // is allowed in a forked child of a threaded process.
            let done = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
            if done != 0 {
                log::warn!("elec-broadcast: cannot count forks (pthread_atfork: {done})");
            }
        });
        let stop = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?);
        let pause = Arc::new(Mutex::new(()));
        let thread = thread::Builder::new()
            .name("elec-broadcast-watch".into())
            .spawn({
                let (stop, pause) = (Arc::clone(&stop), Arc::clone(&pause));
                move || watch(&resolver, socket, &stop, &pause)
            })?;
        Ok(Watcher {
            forks: forks(),
            stop,
            pause,
            thread: Some(thread),
        })
    }

    /// Keeps the thread from reading notifications while the guard lives:
    /// they pile up in the socket, which overflows at last (for tests of
    /// what follows).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        lock(&self.pause)
    }
}

fn lock(mutex: &Mutex<()>) -> MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.forks != forks() {
            // A forked child: the thread is its parent's, and so is the
            // eventfd's other end. Stopping it would stop the parent's.
            return;
        }
        if self.stop.write(1).is_err() {
            log::warn!("elec-broadcast: could not stop the watching thread");
            return; // Leave it running rather than wait forever.
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(resolver: &Resolver, mut socket: ChangeSocket, stop: &EventFd, pause: &Mutex<()>) {
    loop {
        let (changes, stopping) = {
            let mut fds = [
                PollFd::new(socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return give_up(resolver, &err.into()),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if stopping {
            // Whatever asked, plans are no longer followed from here on.
            resolver.unwatched();
            return;
        }
        if !changes {
            continue;
        }
        let _running = lock(pause);
        match socket.read() {
            Ok(changes) => resolver.apply(&changes),
            // The socket's buffer overflowed: some changes are lost, so
            // nothing derived from the tables can be trusted.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => resolver.changes_lost(),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A notification this code cannot parse: treat it as a change
            // of anything.
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                log::warn!("elec-broadcast: {err}");
                resolver.changes_lost();
            }
            Err(err) => return give_up(resolver, &err),
        }
    }
}

fn give_up(resolver: &Resolver, err: &io::Error) {
    log::error!(
        "elec-broadcast: cannot follow routing changes any more ({err}); \
         every broadcast now reads the tables afresh"
    );
    resolver.unwatched();
}
