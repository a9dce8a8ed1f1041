//! I/O errors that say what failed.

use std::fmt::Display;
use std::io;

/// `e` with `what` in front of its message (`"{what}: {e}"`), its kind kept.
pub(crate) fn context(e: io::Error, what: impl Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The calling thread's last OS error (errno) with `what` in front of it.
pub(crate) fn last_os_error(what: impl Display) -> io::Error {
    context(io::Error::last_os_error(), what)
}
