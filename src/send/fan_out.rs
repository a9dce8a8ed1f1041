//! The kernel's copies: each chunk of a plan through the socket's slot.
//!
//! Write the chunk's destinations into the slot (if it does not hold them
//! already), arm it with a new tag, send the one carrier datagram with that
//! tag as its transmit time, take the arm back, and read what the program
//! did for every destination. The protocol on the slot is in
//! `kernel::slots`; what the program does is in `bpf/fan_out.bpf.c`.

use std::io;

use super::call::{Call, Resume};
use super::plan::Plan;
use super::refusal::{refusal, too_large_error, Refusal};
use super::sockets::SocketState;
use super::{user_space, HEADERS};
use crate::kernel::{Program, Tags};
use crate::sys;

/// Sends the plan's fan-outs through slot `slot_index`. Returns true if one
/// of them was not fanned out (its other copies were then sent from user
/// space, and the socket and the plan want a second look).
pub(crate) fn send(
    program: &Program,
    slot_index: u32,
    tags: &Tags,
    state: &mut SocketState,
    plan: &Plan,
    call: &mut Call<'_>,
) -> bool {
    let ip_len = (call.payload.len() + HEADERS) as u32;
    let mut bypassed = false;
    let first = call.from.map_or(0, |from| from.chunks);
    for (index, chunk) in plan.chunks.iter().enumerate().skip(first) {
        if call.blocked {
            call.not_sent(&chunk.indices);
            continue;
        }
        // SAFETY: slot `slot_index` belongs to this socket alone and the
        // caller holds the socket's lock for as long as `slot` lives.
        let mut slot = unsafe { program.slot(slot_index) };
        if state.slot_holds != Some(index) {
            slot.write_dests(&chunk.dests);
            state.slot_holds = Some(index);
        }
        let count = chunk.dests.len() as u32;
        let carrier = call.destination(chunk.indices[0]);
        // As one whole UDP_SEGMENT datagram, the carrier is never
        // fragmented, the kernel keeps its payload in page fragments
        // (un-sharing a clone copies only its headers) and makes it
        // CHECKSUM_PARTIAL, which lets the program write each copy's headers
        // at once.
        let whole = state.whole_sends && !call.payload.is_empty();
        let mut tag = tags.next();
        slot.arm(tag, count, ip_len, whole);
        let mut sent = sys::send_carrier(call.socket, call.payload, &carrier, tag, whole);
        let mut taken = slot.disarm();
        if let (false, Err(err)) = (taken, &sent) {
            match refusal(state, call.socket, err, whole) {
                Refusal::SocketReplaced => {
                    // The fd names a new socket now, which does not take
                    // transmit times yet: all its copies go from user space,
                    // and it is taken over after this call.
                    bypassed = true;
                    user_space::send(state, call, &chunk.indices);
                    continue;
                }
                Refusal::NotWhole => {
                    state.whole_sends = false;
                    tag = tags.next();
                    slot.arm(tag, count, ip_len, false);
                    sent = sys::send_carrier(call.socket, call.payload, &carrier, tag, false);
                    taken = slot.disarm();
                }
                Refusal::TooLarge => {
                    call.too_large(carrier);
                    call.failed(&chunk.indices, too_large_error());
                    continue;
                }
                Refusal::Other => {}
            }
        }
        if !taken {
            match sent {
                Err(err) => {
                    if err.kind() == io::ErrorKind::WouldBlock && !call.blocked {
                        // Nothing of this chunk was sent: resume from it.
                        call.stopped = Some(Resume {
                            plan: plan.id,
                            chunks: index,
                            user_space: 0,
                        });
                    }
                    call.failed(&chunk.indices, err)
                }
                Ok(_) => {
                    // The program did not see the datagram (another route, a
                    // program before ours, the fd now names another socket):
                    // the carrier reached its destination as sent; the rest
                    // go from user space.
                    bypassed = true;
                    call.report.user_space_copies += 1;
                    user_space::send(state, call, &chunk.indices[1..]);
                }
            }
            continue;
        }
        let Some(outcome) = slot.outcome(tag) else {
            // Taken but never finished: cannot happen while the program runs
            // to completion; count the copies as lost rather than claim them.
            log::error!("elec-broadcast: the fan-out of tag {tag} published no result");
            call.failed(
                &chunk.indices,
                io::Error::from_raw_os_error(libc::ETIMEDOUT),
            );
            continue;
        };
        if !outcome.fanned_out() {
            // Taken, but not in a shape the program can fan out (IP options,
            // say): it went to the carrier as sent.
            bypassed = true;
            call.report.user_space_copies += 1;
            user_space::send(state, call, &chunk.indices[1..]);
            continue;
        }
        call.fan_outs += 1;
        for (i, &dest) in chunk.indices.iter().enumerate() {
            if let Some(reason) = outcome.lost(i) {
                call.lost(&[dest], reason);
            } else {
                call.report.kernel_copies += 1;
            }
        }
    }
    bypassed
}
