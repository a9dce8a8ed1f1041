//! One interface of a [`Broadcaster`](super::Broadcaster): the program
//! attached to its egress (or the reason there is none), the tables its
//! destinations are resolved with, and the sockets registered with the
//! program; and one call's sends through it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::{check_destinations, check_family, max_payload, Mode, Part, Parts};
use crate::kernel::{Program, Tags};
use crate::send::call::{Call, Resume};
use crate::send::plan::Plan;
use crate::send::sockets::{lock, SocketState, Sockets};
use crate::send::{fan_out, headers, user_space, HEADERS, HEADERS6};
use crate::tables::Target;
use crate::tables::{ChangeSocket, Resolver, RouteSocket, Watcher};
use crate::Error;

/// What every call of one `send_each` shares.
struct Shared<'t, 'c> {
    tags: &'t Tags,
    socket: BorrowedFd<'c>,
    destinations: &'c [SocketAddr],
    always_report: bool,
}

/// One interface a broadcaster sends through.
pub(super) struct Link {
    pub(super) interface: String,
    pub(super) ifindex: u32,
    pub(super) fallback_reason: Option<Error>,
    pub(super) kernel: Option<Program>,
    pub(super) resolver: Arc<Resolver>,
    // Held for its Drop, which stops the thread (and for a test hook).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(super) watcher: Watcher,
    sockets: Sockets,
}

impl Link {
    /// Opens `interface`: attaches the program to it in `mode` (falling
    /// back to user space for `Mode::Auto`), and starts following its tables.
    pub(super) fn open(interface: &str, mode: Mode, force_clsact: bool) -> Result<Link, Error> {
        // Subscribe before reading anything, so that no change falls between.
        let changes = ChangeSocket::open().map_err(Error::io("subscribing to routing changes"))?;
        let netlink = RouteSocket::open().map_err(Error::io("opening a netlink socket"))?;
        let link = netlink.link(interface).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::InvalidInput => Error::UnknownInterface {
                name: interface.to_string(),
            },
            _ => Error::Io {
                context: "reading the interface",
                source: err,
            },
        })?;

        let kernel = match mode {
            Mode::UserSpace => Err(None),
            Mode::Auto | Mode::Kernel => {
                let attached = if link.mac.is_none_or(|mac| mac == [0; 6]) {
                    // Layer-3 devices have no MAC; loopback's is all zeros and
                    // everything it carries is local, so nothing could be cloned.
                    Err(Error::UnsupportedInterface {
                        name: interface.to_string(),
                        why: "it has no Ethernet address (a loopback or layer-3 device): \
                              use Mode::UserSpace there",
                    })
                } else {
                    Program::attach(interface, link.index, force_clsact)
                };
                match attached {
                    Ok(program) => Ok(program),
                    Err(err) if mode == Mode::Kernel => return Err(err),
                    Err(err) => {
                        log::warn!("elec-broadcast: using user-space sends on {interface}: {err}");
                        Err(Some(err))
                    }
                }
            }
        };
        let (kernel, fallback_reason) = match kernel {
            Ok(program) => (Some(program), None),
            Err(reason) => (None, reason),
        };
        let resolver = Arc::new(Resolver::new(netlink, link.index, link.mtu));
        resolver.keep_mtus(&link);
        let watcher = Watcher::start(Arc::clone(&resolver), changes).map_err(Error::io(
            "starting the thread that follows routing changes",
        ))?;
        Ok(Link {
            interface: interface.to_string(),
            ifindex: link.index,
            fallback_reason,
            kernel,
            resolver,
            watcher,
            sockets: Sockets::default(),
        })
    }

    /// The backend in use on this interface.
    pub(super) fn mode(&self) -> Mode {
        if self.kernel.is_some() {
            Mode::Kernel
        } else {
            Mode::UserSpace
        }
    }

    /// Largest payload through this interface (see
    /// `Broadcaster::max_payload`).
    pub(super) fn max_payload(&self) -> usize {
        max_payload(self.resolver.mtu(), HEADERS)
    }

    /// The sends of `payloads` (at most `MAX_BATCH`), each to every
    /// destination, sharing one plan and, per fan-out, one `sendmmsg` of
    /// their carriers; `from` as for `Broadcaster::send` (one payload
    /// only). With `always_report`, a payload that got nothing sent has a
    /// report like the others (else the call's error is returned).
    pub(super) fn send_each<'p, P: Parts>(
        &self,
        tags: &Tags,
        socket: BorrowedFd<'p>,
        payloads: &[&'p [u8]],
        destinations: &'p [SocketAddr],
        from: Option<Resume>,
        always_report: bool,
    ) -> Result<Option<P>, Error> {
        debug_assert!(from.is_none() || payloads.len() == 1);
        if from.is_none() {
            for payload in payloads {
                self.check_payload(payload, destinations)?;
            }
        }
        let entry = self.sockets.entry(self.kernel.as_ref(), socket)?;
        let mut state = lock(&entry);
        let plan = match (state.plan.take(), from) {
            (Some(plan), Some(from))
                if plan.id == from.plan && plan.is_current(&self.resolver, destinations) =>
            {
                plan
            }
            (plan, Some(_)) => {
                state.plan = plan;
                return Ok(None);
            }
            (Some(plan), None) if plan.is_current(&self.resolver, destinations) => plan,
            _ => self.plan(&mut state, destinations)?,
        };
        let longest = payloads.iter().map(|p| p.len()).max().unwrap_or(0);
        if let Some(limit) = plan.limit.filter(|&(max, _)| longest > max) {
            state.plan = Some(plan);
            return Err(self.payload_too_large(longest, limit));
        }

        let skipped = from.map_or(0, |from| {
            let chunks = &plan.chunks[..from.chunks];
            chunks.iter().map(|c| c.indices.len()).sum::<usize>() + from.user_space
        });
        let family = state.family;
        let call =
            |payload: &&'p [u8]| Call::new(socket, family, payload, destinations, from, skipped);
        let state = &mut *state;
        let shared = Shared {
            tags,
            socket,
            destinations,
            always_report,
        };
        // One payload (every `broadcast`): its call on the stack.
        match payloads {
            [payload] => self.send_calls(shared, state, plan, [call(payload)]),
            _ => {
                let calls: Vec<Call<'_>> = payloads.iter().map(call).collect();
                self.send_calls(shared, state, plan, calls)
            }
        }
    }

    /// A new plan for `destinations` on the socket of `state` (kept apart
    /// from `send_each`, whose path with a current plan it would otherwise
    /// spread over more cache lines).
    #[cold]
    #[inline(never)]
    fn plan(&self, state: &mut SocketState, destinations: &[SocketAddr]) -> Result<Plan, Error> {
        check_destinations(destinations)?;
        check_family(state.family, destinations)?;
        state.slot_holds = None;
        Plan::make(
            &self.resolver,
            &self.interface,
            destinations,
            state.slot.is_some(),
            state.any_source,
        )
    }

    /// Sends `calls` (one payload each) as `plan` says, through the
    /// kernel's fan-out where the socket has a slot, keeps the plan in
    /// `state` for the next call unless a send showed it stale, and makes
    /// each call's part (or the error of a call that sent nothing).
    fn send_calls<'c, C, P>(
        &self,
        shared: Shared<'_, 'c>,
        state: &mut SocketState,
        plan: Plan,
        mut calls: C,
    ) -> Result<Option<P>, Error>
    where
        C: AsMut<[Call<'c>]> + IntoIterator<Item = Call<'c>>,
        P: Parts,
    {
        let Shared {
            tags,
            socket,
            destinations,
            always_report,
        } = shared;
        let bypassed = match (&self.kernel, state.slot) {
            (Some(program), Some(slot)) => {
                fan_out::send(program, slot, tags, state, &plan, calls.as_mut())
            }
            _ => false,
        };
        user_space::send_planned(state, calls.as_mut(), &plan);

        if bypassed {
            // Look at the socket and the tables again before the next call.
            if let Err(err) = self.sockets.take_over(self.kernel.as_ref(), state, socket) {
                log::warn!("elec-broadcast: the socket behind the fd changed: {err}");
            }
        } else {
            state.plan = Some(plan);
        }
        let kept = state.plan.is_some();
        let mut parts = P::default();
        let mut first_error = None;
        for mut call in calls {
            call.always_report = always_report;
            // The MTU changed under us (the interface's, a route's, or one
            // the kernel learned for the path): learn it now, not at the
            // notification, and plan afresh.
            let too_large = call.too_large_to().map(|to| {
                state.plan = None;
                let mtu = self
                    .resolver
                    .path_mtu(Target::of(&to))
                    .unwrap_or_else(|_| self.resolver.mtu());
                (max_payload(mtu, headers(&to)), mtu)
            });
            let fan_outs = call.fan_outs;
            // Resumable only in the plan kept for the next call.
            let stopped = call.stopped.filter(|_| kept && state.plan.is_some());
            let len = call.payload.len();
            let failed_at = call.failed_indices();
            let limit = || too_large.unwrap_or_else(|| self.limit(destinations));
            match call.finish(|| self.payload_too_large(len, limit())) {
                Ok(report) => parts.extend([Part {
                    report,
                    failed_at,
                    fan_outs,
                    stopped,
                }]),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(Some(parts)),
        }
    }

    /// The family of `socket`, from its entry (made, and the socket
    /// inspected, on its first use here; a call through this link makes it
    /// anyway).
    pub(super) fn socket_family(
        &self,
        socket: BorrowedFd<'_>,
    ) -> Result<crate::send::Family, Error> {
        let entry = self.sockets.entry(self.kernel.as_ref(), socket)?;
        let family = lock(&entry).family;
        Ok(family)
    }

    /// Refuses a payload this interface's MTU does not take in a datagram
    /// to each of `destinations`.
    #[inline]
    pub(super) fn check_payload(
        &self,
        payload: &[u8],
        destinations: &[SocketAddr],
    ) -> Result<(), Error> {
        // Fits with the larger headers and the smaller MTU: no need to look
        // at the list.
        if payload.len() > max_payload(self.resolver.mtu6(), HEADERS6) {
            return self.check_large_payload(payload, destinations);
        }
        Ok(())
    }

    /// `check_payload` for a payload that may not fit.
    #[cold]
    #[inline(never)]
    fn check_large_payload(
        &self,
        payload: &[u8],
        destinations: &[SocketAddr],
    ) -> Result<(), Error> {
        if payload.len() > self.limit(destinations).0 {
            // The MTU may have grown since its notification was applied:
            // refuse only what the MTU refuses now.
            self.resolver
                .reread_mtu()
                .map_err(Error::io("reading the interface's MTU"))?;
            let limit = self.limit(destinations);
            if payload.len() > limit.0 {
                return Err(self.payload_too_large(payload.len(), limit));
            }
        }
        Ok(())
    }

    /// The largest payload this interface takes to every one of
    /// `destinations` (IPv4 ones: its MTU minus 28 bytes; IPv6 ones: its
    /// IPv6 MTU minus 48), and the MTU that sets it.
    fn limit(&self, destinations: &[SocketAddr]) -> (usize, u32) {
        let (mtu, mtu6) = (self.resolver.mtu(), self.resolver.mtu6());
        destinations
            .iter()
            .map(|to| match headers(to) {
                HEADERS => (max_payload(mtu, HEADERS), mtu),
                _ => (max_payload(mtu6, HEADERS6), mtu6),
            })
            .min()
            .unwrap_or((max_payload(mtu, HEADERS), mtu))
    }

    /// The error for a payload of `len` bytes over `limit`: the largest
    /// payload that fits, and the MTU that sets it.
    fn payload_too_large(&self, len: usize, (max, mtu): (usize, u32)) -> Error {
        Error::PayloadTooLarge {
            len,
            max,
            mtu,
            interface: self.interface.clone(),
        }
    }
}
