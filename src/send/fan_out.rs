//! The kernel's copies: each chunk of a plan through the socket's slot.
//!
//! Write the chunk's destinations into the slot (if it does not hold them
//! already), arm one of its arms per payload with a new tag, send the
//! carrier datagrams (one per payload, one `sendmmsg`) with those tags as
//! their transmit times, take the arms back, and read what the program did
//! for every destination. The protocol on the slot is in `kernel::slots`;
//! what the program does is in `bpf/fan_out.bpf.c`.

use std::io;

use super::call::{Call, Resume};
use super::plan::Plan;
use super::refusal::{refusal, too_large_error, Refusal};
use super::sockets::SocketState;
use super::{user_space, HEADERS, HEADERS6};
use crate::kernel::FAMILY_IPV4;
use crate::kernel::{Outcome, Program, SlotHandle, Tags, MAX_BATCH};
use crate::sys;

/// Sends the plan's fan-outs through slot `slot_index`, for every call of
/// `calls` (one payload each, at most `MAX_BATCH`, the same destinations):
/// per chunk, one carrier per call, in one `sendmmsg`. Returns true if one
/// of them was not fanned out (its other copies were then sent from user
/// space, and the socket and the plan want a second look).
pub(crate) fn send(
    program: &Program,
    slot_index: u32,
    tags: &Tags,
    state: &mut SocketState,
    plan: &Plan,
    calls: &mut [Call<'_>],
) -> bool {
    assert!(calls.len() <= MAX_BATCH);
    let mut bypassed = false;
    // Only a single call resumes (see `Resume`).
    let first = match calls {
        [call] => call.from.map_or(0, |from| from.chunks),
        _ => 0,
    };
    for (index, chunk) in plan.chunks.iter().enumerate().skip(first) {
        // The calls that go on sending (not those a send would have
        // blocked), and their payloads: on the stack, as everything on a
        // broadcast's hot path.
        let mut sending = [0usize; MAX_BATCH];
        let mut payloads: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let mut n = 0;
        for (c, call) in calls.iter_mut().enumerate() {
            if call.blocked {
                call.not_sent(&chunk.indices);
            } else {
                sending[n] = c;
                payloads[n] = call.payload;
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        let (sending, payloads) = (&sending[..n], &payloads[..n]);
        // SAFETY: slot `slot_index` belongs to this socket alone and the
        // caller holds the socket's lock for as long as `slot` lives.
        let mut slot = unsafe { program.slot(slot_index) };
        if state.slot_holds != Some(index) {
            slot.write_dests(chunk.family, &chunk.dests);
            state.slot_holds = Some(index);
        }
        let carrier = calls[0].destination(chunk.indices[0]);
        // As one whole UDP_SEGMENT datagram, a carrier is never fragmented,
        // the kernel keeps its payload in page fragments (un-sharing a clone
        // copies only its headers) and makes it CHECKSUM_PARTIAL, which lets
        // the program write each copy's headers at once.
        let whole = state.whole_sends;
        let headers = chunk_headers(chunk.family);
        if let Some(segment) = segment_size(state, payloads, headers) {
            let chunk_calls = ChunkCalls {
                plan,
                index,
                sending,
                payloads,
            };
            // None: refused, so one carrier per payload instead.
            if let Some(chunk_bypassed) =
                send_segmented(tags, state, &mut slot, calls, chunk_calls, segment)
            {
                bypassed |= chunk_bypassed;
                continue;
            }
        }
        let block = tags.next_block();
        for (i, payload) in payloads.iter().enumerate() {
            let partial = whole && !payload.is_empty();
            slot.arm(i, block + i as u64, ip_len(payload, headers), partial);
        }
        let sent = sys::send_carriers(calls[0].socket, payloads, &carrier, block, whole);
        let mut taken = [false; MAX_BATCH];
        for (i, taken) in taken[..n].iter_mut().enumerate() {
            *taken = slot.disarm(i);
        }
        for (i, (sent, taken)) in sent.into_iter().zip(taken).take(n).enumerate() {
            let call = &mut calls[sending[i]];
            let attempt = Attempt {
                arm: i,
                tag: block + i as u64,
                sent,
                taken,
                whole: whole && !call.payload.is_empty(),
            };
            bypassed |= finish_one(tags, state, &mut slot, plan, index, call, attempt);
        }
    }
    bypassed
}

// A batch always fits one UDP GSO send's segments.
const _: () = assert!(MAX_BATCH <= sys::GSO_MAX_SEGMENTS);

/// The segment size with which `payloads` can go as one UDP GSO carrier,
/// if they can: more than one (at most `MAX_BATCH`), none empty, all
/// of one size but the last (which may be shorter), together within one IP
/// datagram, on a socket and route that took such sends so far.
fn segment_size(state: &SocketState, payloads: &[&[u8]], headers: usize) -> Option<u16> {
    let (last, rest) = payloads.split_last()?;
    let size = rest.first()?.len();
    let total: usize = payloads.iter().map(|p| p.len()).sum();
    let fits = size > 0
        && rest.iter().all(|p| p.len() == size)
        && (1..=size).contains(&last.len())
        && total + headers <= usize::from(u16::MAX);
    (state.segmented_sends && state.whole_sends && fits).then_some(size as u16)
}

/// The calls of one chunk that go on sending: which chunk, the calls (by
/// index) and their payloads.
struct ChunkCalls<'p> {
    plan: &'p Plan,
    index: usize,
    sending: &'p [usize],
    payloads: &'p [&'p [u8]],
}

/// Sends the payloads of a chunk's calls as one UDP GSO carrier on arm 0,
/// fanned out whole: every clone carries every payload, and the device cuts
/// it into its datagrams. Returns whether the carrier was not fanned out
/// (as `send`), or None if the kernel refused such a send (then nothing was
/// sent, and the caller sends one carrier per payload).
#[inline(never)]
fn send_segmented(
    tags: &Tags,
    state: &mut SocketState,
    slot: &mut SlotHandle<'_>,
    calls: &mut [Call<'_>],
    chunk_calls: ChunkCalls<'_>,
    segment: u16,
) -> Option<bool> {
    let ChunkCalls {
        plan,
        index,
        sending,
        payloads,
    } = chunk_calls;
    let chunk = &plan.chunks[index];
    let socket = calls[0].socket;
    let carrier = calls[0].destination(chunk.indices[0]);
    let total: usize = payloads.iter().map(|p| p.len()).sum();
    let tag = tags.next_block();
    slot.arm(0, tag, (total + chunk_headers(chunk.family)) as u32, true);
    let sent = sys::send_segmented_carrier(socket, payloads, &carrier, tag, segment);
    let taken = slot.disarm(0);
    // The carrier went to its destination as sent (every payload): the
    // other copies go from user space.
    let as_sent = |state: &mut SocketState, calls: &mut [Call<'_>]| {
        for &c in sending {
            calls[c].report.user_space_copies += 1;
            user_space::send(state, &mut calls[c], &chunk.indices[1..]);
        }
        Some(true)
    };
    if !taken {
        return match sent {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let code = err.raw_os_error().unwrap_or(libc::EAGAIN);
                for &c in sending {
                    calls[c].failed(&chunk.indices, io::Error::from_raw_os_error(code));
                }
                Some(false)
            }
            Err(err) => {
                // This socket or route takes no UDP GSO sends of several
                // segments (checksums off, no offload, an old kernel): not
                // again on this socket.
                if let Some(
                    libc::EINVAL
                    | libc::EIO
                    | libc::ENOPROTOOPT
                    | libc::EMSGSIZE
                    | libc::EOPNOTSUPP,
                ) = err.raw_os_error()
                {
                    state.segmented_sends = false;
                }
                log::debug!("elec-broadcast: a segmented carrier was refused ({err})");
                None
            }
            // Not seen by the program (another route, a program before ours).
            Ok(()) => as_sent(state, calls),
        };
    }
    let Some(outcome) = slot.outcome(0, tag) else {
        // Taken but never finished: as in `finish_one`.
        log::error!("elec-broadcast: the fan-out of tag {tag} published no result");
        for &c in sending {
            calls[c].failed(
                &chunk.indices,
                io::Error::from_raw_os_error(libc::ETIMEDOUT),
            );
        }
        return Some(false);
    };
    if !outcome.fanned_out() {
        return as_sent(state, calls);
    }
    calls[sending[0]].fan_outs += 1;
    for &c in sending {
        count_outcome(&mut calls[c], &chunk.indices, &outcome);
    }
    Some(false)
}

/// The length of the IP packet carrying `payload` (IPv4 total length,
/// or 40 + IPv6 payload length), with `headers` of IP and UDP.
fn ip_len(payload: &[u8], headers: usize) -> u32 {
    (payload.len() + headers) as u32
}

/// The IP and UDP header bytes of a datagram of `family`.
fn chunk_headers(family: u32) -> usize {
    match family {
        FAMILY_IPV4 => HEADERS,
        _ => HEADERS6,
    }
}

/// One carrier's send: its arm and tag, the send's result, whether the
/// program took the arm.
struct Attempt {
    arm: usize,
    tag: u64,
    sent: io::Result<()>,
    taken: bool,
    whole: bool,
}

/// What became of one call's carrier of chunk `index`: its copies are
/// counted, or sent from user space, or failed. Returns true if the carrier
/// was not fanned out.
fn finish_one(
    tags: &Tags,
    state: &mut SocketState,
    slot: &mut SlotHandle<'_>,
    plan: &Plan,
    index: usize,
    call: &mut Call<'_>,
    mut attempt: Attempt,
) -> bool {
    let chunk = &plan.chunks[index];
    if !attempt.taken {
        if let Some(bypassed) = not_taken(tags, state, slot, plan, index, call, &mut attempt) {
            return bypassed;
        }
    }
    let Some(outcome) = slot.outcome(attempt.arm, attempt.tag) else {
        // Taken but never finished: cannot happen while the program runs
        // to completion; count the copies as lost rather than claim them.
        log::error!(
            "elec-broadcast: the fan-out of tag {} published no result",
            attempt.tag
        );
        call.failed(
            &chunk.indices,
            io::Error::from_raw_os_error(libc::ETIMEDOUT),
        );
        return false;
    };
    if !outcome.fanned_out() {
        // Taken, but not in a shape the program can fan out (IP options,
        // say): it went to the carrier as sent.
        call.report.user_space_copies += 1;
        user_space::send(state, call, &chunk.indices[1..]);
        return true;
    }
    call.fan_outs += 1;
    count_outcome(call, &chunk.indices, &outcome);
    false
}

/// `finish_one` for a carrier the program did not take: the send was
/// refused (sent again where a plain datagram may pass) or never reached
/// the program. Returns whether the carrier was not fanned out, or None if
/// it was taken after all (sent again), to be finished as any other.
#[cold]
#[inline(never)]
fn not_taken(
    tags: &Tags,
    state: &mut SocketState,
    slot: &mut SlotHandle<'_>,
    plan: &Plan,
    index: usize,
    call: &mut Call<'_>,
    attempt: &mut Attempt,
) -> Option<bool> {
    let chunk = &plan.chunks[index];
    let carrier = call.destination(chunk.indices[0]);
    if let (false, Err(err)) = (attempt.taken, &attempt.sent) {
        match refusal(state, call.socket, err, attempt.whole) {
            Refusal::SocketReplaced => {
                // The fd names a new socket now, which does not take
                // transmit times yet: all its copies go from user space,
                // and it is taken over after this call.
                user_space::send(state, call, &chunk.indices);
                return Some(true);
            }
            Refusal::NotWhole => {
                // Again, alone and as a plain datagram, on the same arm.
                state.whole_sends = false;
                attempt.tag = tags.next_block() + attempt.arm as u64;
                let headers = chunk_headers(chunk.family);
                slot.arm(
                    attempt.arm,
                    attempt.tag,
                    ip_len(call.payload, headers),
                    false,
                );
                let sent =
                    sys::send_carriers(call.socket, &[call.payload], &carrier, attempt.tag, false);
                attempt.sent = sent.into_iter().next().unwrap_or(Ok(()));
                attempt.taken = slot.disarm(attempt.arm);
            }
            Refusal::TooLarge => {
                call.too_large(carrier);
                call.failed(&chunk.indices, too_large_error());
                return Some(false);
            }
            Refusal::Other => {}
        }
    }
    if !attempt.taken {
        match std::mem::replace(&mut attempt.sent, Ok(())) {
            Err(err) => {
                if err.kind() == io::ErrorKind::WouldBlock && !call.blocked {
                    // Nothing of this chunk was sent: resume from it.
                    call.stopped = Some(Resume {
                        plan: plan.id,
                        chunks: index,
                        user_space: 0,
                    });
                }
                call.failed(&chunk.indices, err);
                return Some(false);
            }
            Ok(()) => {
                // The program did not see the datagram (another route, a
                // program before ours, the fd now names another socket):
                // the carrier reached its destination as sent; the rest
                // go from user space.
                call.report.user_space_copies += 1;
                user_space::send(state, call, &chunk.indices[1..]);
                return Some(true);
            }
        }
    }
    None
}

/// Counts what the program did for a chunk's destinations `indices` in
/// `call`'s report.
fn count_outcome(call: &mut Call<'_>, indices: &[usize], outcome: &Outcome) {
    if outcome.all_sent(indices.len()) {
        call.report.kernel_copies += indices.len();
        return;
    }
    for (i, &dest) in indices.iter().enumerate() {
        if let Some(reason) = outcome.lost(i) {
            call.lost(&[dest], reason);
        } else {
            call.report.kernel_copies += 1;
        }
    }
}
