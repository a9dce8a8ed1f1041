//! One `broadcast` call: its input, and what became of every destination,
//! from which its [`Report`] is made.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use super::Family;
use crate::{Error, Failure, FailureReason, Report};

/// Where a call stopped because a send would have blocked, in its plan's
/// order (every chunk, then the user-space destinations): what a resumed
/// call on the same plan starts from. Everything before it was sent (or
/// failed for good), nothing after it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// The plan's `id`.
    pub(crate) plan: u64,
    /// Chunks done.
    pub(crate) chunks: usize,
    /// User-space destinations done (once every chunk is).
    pub(crate) user_space: usize,
}

/// The sends of one call and what became of them.
pub(crate) struct Call<'a> {
    pub(crate) socket: BorrowedFd<'a>,
    /// The socket's family, which says how destinations are named to it.
    family: Family,
    pub(crate) payload: &'a [u8],
    pub(crate) destinations: &'a [SocketAddr],
    pub(crate) report: Report,
    /// Fan-outs the kernel made.
    pub(crate) fan_outs: usize,
    /// Destinations that got nothing (by index), and why.
    failed: Vec<(usize, FailureReason)>,
    /// A send would have blocked: nothing more is sent in this call (the
    /// rest is reported as would-block, to be resumed).
    pub(crate) blocked: bool,
    /// Where this call starts in its plan (a resumed call), and where it
    /// stopped, where that can be said (else the caller resumes with the
    /// list of the destinations not sent).
    pub(crate) from: Option<Resume>,
    pub(crate) stopped: Option<Resume>,
    /// Destinations before `from`: not part of this call's report.
    skipped: usize,
    /// Report even when nothing was sent (a payload of a batch).
    pub(crate) always_report: bool,
    first_error: Option<io::Error>,
    /// A destination whose copy the kernel refused as too large for its
    /// path's MTU.
    too_large_to: Option<SocketAddr>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        socket: BorrowedFd<'a>,
        family: Family,
        payload: &'a [u8],
        destinations: &'a [SocketAddr],
        from: Option<Resume>,
        skipped: usize,
    ) -> Call<'a> {
        Call {
            socket,
            family,
            payload,
            destinations,
            report: Report::default(),
            fan_outs: 0,
            failed: Vec::new(),
            blocked: false,
            from,
            stopped: None,
            skipped,
            always_report: false,
            first_error: None,
            too_large_to: None,
        }
    }

    /// Destination `index` of the list, as a send on the socket names it.
    pub(crate) fn destination(&self, index: usize) -> SocketAddr {
        self.family.wire(&self.destinations[index])
    }

    /// Destinations `indices` got nothing, because of `err`.
    pub(crate) fn failed(&mut self, indices: &[usize], err: io::Error) {
        let reason = FailureReason::of(&err);
        self.lost(indices, reason);
        if reason == FailureReason::WouldBlock {
            // The error a call that sent nothing returns: say would-block
            // whenever it is part of the story, so that a caller waiting
            // for writability (tokio's `try_io`) waits.
            self.blocked = true;
            self.first_error = Some(err);
        } else {
            self.first_error.get_or_insert(err);
        }
    }

    /// Destinations `indices` got nothing, for `reason` (no error of a send
    /// of ours says so: a clone the device dropped, say).
    pub(crate) fn lost(&mut self, indices: &[usize], reason: FailureReason) {
        self.failed.extend(indices.iter().map(|&i| (i, reason)));
    }

    /// Destinations `indices` are not sent in this call, because an earlier
    /// send would have blocked.
    pub(crate) fn not_sent(&mut self, indices: &[usize]) {
        self.lost(indices, FailureReason::WouldBlock);
    }

    /// The destinations (indices into the list) that got nothing, in the
    /// order of the list: the order of [`Report::failed`].
    pub(crate) fn failed_indices(&self) -> Vec<usize> {
        let mut at: Vec<usize> = self.failed.iter().map(|&(index, _)| index).collect();
        at.sort_unstable();
        at
    }

    /// The kernel refused the copy to `to` as too large for its path.
    pub(crate) fn too_large(&mut self, to: SocketAddr) {
        self.too_large_to.get_or_insert(to);
    }

    /// Where a copy was refused as too large, if one was.
    pub(crate) fn too_large_to(&self) -> Option<SocketAddr> {
        self.too_large_to
    }

    /// The report, or the error that kept anything from being sent
    /// (`too_large` makes the error for a payload the MTU refused). A
    /// resumed call always reports: what it stopped short of is known.
    pub(crate) fn finish(mut self, too_large: impl FnOnce() -> Error) -> Result<Report, Error> {
        self.report.copies_sent = self.report.kernel_copies + self.report.user_space_copies;
        debug_assert_eq!(
            self.report.copies_sent + self.failed.len() + self.skipped,
            self.destinations.len()
        );
        // In the order the destinations were given.
        self.failed.sort_by_key(|&(index, _)| index);
        let destinations = self.destinations;
        self.report.failed = self
            .failed
            .iter()
            .map(|&(index, reason)| Failure {
                destination: destinations[index],
                reason,
            })
            .collect();
        match self.first_error {
            Some(err)
                if self.report.copies_sent == 0 && self.from.is_none() && !self.always_report =>
            {
                if err.raw_os_error() == Some(libc::EMSGSIZE) {
                    Err(too_large())
                } else {
                    Err(Error::Send(err))
                }
            }
            _ => Ok(self.report),
        }
    }
}
