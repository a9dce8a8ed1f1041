//! The copies sent from user space: one `sendmmsg(2)` for them all, each
//! copy one whole datagram where the socket allows it.

use std::io;

use super::call::{Call, Resume};
use super::plan::Plan;
use super::refusal::{refusal, too_large_error, Refusal};
use super::sockets::SocketState;

/// Sends the plan's user-space destinations (those after where a resumed
/// call starts), once its chunks are done.
pub(crate) fn send_planned(state: &mut SocketState, call: &mut Call<'_>, plan: &Plan) {
    let first = call
        .from
        .filter(|from| from.chunks == plan.chunks.len())
        .map_or(0, |from| from.user_space);
    let was_blocked = call.blocked;
    let stop = send(state, call, &plan.user_space[first..]);
    if let (false, Some(at)) = (was_blocked, stop) {
        call.stopped = Some(Resume {
            plan: plan.id,
            chunks: plan.chunks.len(),
            user_space: first + at,
        });
    }
}

/// Sends to `indices` (into the destination list) from user space. Returns
/// the position in `indices` from which nothing was sent because a send
/// would have blocked, where it is that simple.
pub(crate) fn send(
    state: &mut SocketState,
    call: &mut Call<'_>,
    indices: &[usize],
) -> Option<usize> {
    if indices.is_empty() {
        return None;
    }
    if call.blocked {
        call.not_sent(indices);
        return None;
    }
    let whole = state.whole_sends && !call.payload.is_empty();
    let mut failed = call.send_to_each(indices, whole);
    // `send_to_each` stops at a send that would block: from there on,
    // nothing was sent.
    let mut stop = failed
        .iter()
        .find(|(_, err)| err.kind() == io::ErrorKind::WouldBlock)
        .map(|(at, _)| *at);
    let mut again = Vec::new();
    for (at, err) in &mut failed {
        match refusal(state, call.socket, err, whole) {
            Refusal::NotWhole => again.push(*at),
            Refusal::TooLarge => {
                call.too_large(call.destination(indices[*at]));
                *err = too_large_error();
            }
            Refusal::SocketReplaced | Refusal::Other => {}
        }
    }
    if !again.is_empty() {
        // Sent again: where it would block is not simple any more.
        stop = None;
        // UDP_SEGMENT is not for this socket: plain sends from now on.
        state.whole_sends = false;
        failed.retain(|(at, _)| !again.contains(at));
        let retried: Vec<usize> = again.iter().map(|&at| indices[at]).collect();
        let failed_again = call.send_to_each(&retried, false);
        failed.extend(failed_again.into_iter().map(|(at, err)| (again[at], err)));
        failed.sort_by_key(|(at, _)| *at);
    }
    call.report.user_space_copies += indices.len() - failed.len();
    for (at, err) in failed {
        call.failed(&[indices[at]], err);
    }
    stop
}
