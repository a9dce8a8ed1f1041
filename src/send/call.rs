//! One `broadcast` call: its input, and what became of every destination,
//! from which its [`Report`] is made.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::BorrowedFd;

use super::v4;
use crate::{sys, Error, Report};

/// The sends of one call and what became of them.
pub(crate) struct Call<'a> {
    pub(crate) socket: BorrowedFd<'a>,
    pub(crate) payload: &'a [u8],
    pub(crate) destinations: &'a [SocketAddr],
    pub(crate) report: Report,
    /// Fan-outs the kernel made.
    pub(crate) fan_outs: usize,
    first_error: Option<io::Error>,
    /// A destination whose copy the kernel refused as too large for its
    /// path's MTU.
    too_large_to: Option<SocketAddrV4>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        socket: BorrowedFd<'a>,
        payload: &'a [u8],
        destinations: &'a [SocketAddr],
    ) -> Call<'a> {
        Call {
            socket,
            payload,
            destinations,
            report: Report::default(),
            fan_outs: 0,
            first_error: None,
            too_large_to: None,
        }
    }

    /// Destination `index` of the list.
    pub(crate) fn destination(&self, index: usize) -> SocketAddrV4 {
        v4(&self.destinations[index])
    }

    /// Destinations `indices` got nothing, because of `err`.
    pub(crate) fn failed(&mut self, indices: &[usize], err: io::Error) {
        self.report
            .failed
            .extend(indices.iter().map(|&i| self.destinations[i]));
        self.first_error.get_or_insert(err);
    }

    /// The kernel refused the copy to `to` as too large for its path.
    pub(crate) fn too_large(&mut self, to: SocketAddrV4) {
        self.too_large_to.get_or_insert(to);
    }

    /// Where a copy was refused as too large, if one was.
    pub(crate) fn too_large_to(&self) -> Option<SocketAddrV4> {
        self.too_large_to
    }

    /// Sends to `indices` from user space, with `sendmmsg`; returns the
    /// positions in `indices` that got nothing, with their errors.
    pub(crate) fn send_to_each(&self, indices: &[usize], whole: bool) -> Vec<(usize, io::Error)> {
        let addrs: Vec<SocketAddrV4> = indices.iter().map(|&i| self.destination(i)).collect();
        sys::send_to_each(self.socket, self.payload, &addrs, whole)
    }

    /// The report, or the error that kept anything from being sent
    /// (`too_large` makes the error for a payload the MTU refused).
    pub(crate) fn finish(mut self, too_large: impl FnOnce() -> Error) -> Result<Report, Error> {
        self.report.copies_sent = self.report.kernel_copies + self.report.user_space_copies;
        match self.first_error {
            Some(err) if self.report.copies_sent == 0 => {
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
