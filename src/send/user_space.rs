//! The copies sent from user space: one `sendmmsg(2)` for them all, each
//! copy one whole datagram where the socket allows it.

use super::call::Call;
use super::refusal::{refusal, too_large_error, Refusal};
use super::sockets::SocketState;

/// Sends to `indices` (into the destination list) from user space.
pub(crate) fn send(state: &mut SocketState, call: &mut Call<'_>, indices: &[usize]) {
    if indices.is_empty() {
        return;
    }
    let whole = state.whole_sends && !call.payload.is_empty();
    let mut failed = call.send_to_each(indices, whole);
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
}
