//! The copies sent from user space: one `sendmmsg(2)` for them all (for
//! every payload of a batch), each copy one whole datagram where the socket
//! allows it.

use std::io;
use std::net::SocketAddr;

use super::call::{Call, Resume};
use super::plan::Plan;
use super::refusal::{refusal, too_large_error, Refusal};
use super::sockets::SocketState;
use crate::sys;

/// Sends the plan's user-space destinations for every call of `calls` (one
/// payload each), in one `sendmmsg`, once their chunks are done; for a
/// single call, those after where it starts if it resumes another.
pub(crate) fn send_planned(state: &mut SocketState, calls: &mut [Call<'_>], plan: &Plan) {
    if plan.user_space.is_empty() {
        return;
    }
    if let [call] = calls {
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
        return;
    }
    let items: Vec<(usize, usize)> = (0..calls.len())
        .flat_map(|c| plan.user_space.iter().map(move |&i| (c, i)))
        .collect();
    send_items(state, calls, &items);
}

/// Sends to `indices` (into the destination list) from user space. Returns
/// the position in `indices` from which nothing was sent because a send
/// would have blocked, where it is that simple.
pub(crate) fn send(
    state: &mut SocketState,
    call: &mut Call<'_>,
    indices: &[usize],
) -> Option<usize> {
    let items: Vec<(usize, usize)> = indices.iter().map(|&i| (0, i)).collect();
    send_items(state, std::slice::from_mut(call), &items)
}

/// Sends the copies `items` (a call, by index into `calls`, and a
/// destination of its list, by index) from user space, with one `sendmmsg`
/// where nothing is refused. Returns the position in `items` from which
/// nothing was sent because a send would have blocked, where it is that
/// simple.
fn send_items(
    state: &mut SocketState,
    calls: &mut [Call<'_>],
    items: &[(usize, usize)],
) -> Option<usize> {
    // Calls a send would have blocked send nothing more.
    let items: Vec<(usize, usize)> = items
        .iter()
        .copied()
        .filter(|&(c, i)| {
            if calls[c].blocked {
                calls[c].not_sent(&[i]);
            }
            !calls[c].blocked
        })
        .collect();
    if items.is_empty() {
        return None;
    }
    let socket = calls[0].socket;
    let payloads: Vec<&[u8]> = calls.iter().map(|call| call.payload).collect();
    let sends: Vec<(usize, SocketAddr)> = items
        .iter()
        .map(|&(c, i)| (c, calls[c].destination(i)))
        .collect();
    let whole = state.whole_sends;
    let mut failed = sys::send_to_each(socket, &payloads, &sends, whole);
    // `send_to_each` stops at a send that would block: from there on,
    // nothing was sent.
    let mut stop = failed
        .iter()
        .find(|(_, err)| err.kind() == io::ErrorKind::WouldBlock)
        .map(|(at, _)| *at);
    let mut again = Vec::new();
    for (at, err) in &mut failed {
        let (c, i) = items[*at];
        let whole = whole && !calls[c].payload.is_empty();
        match refusal(state, socket, err, whole) {
            Refusal::NotWhole => again.push(*at),
            Refusal::TooLarge => {
                calls[c].too_large(calls[c].destination(i));
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
        let retried: Vec<(usize, SocketAddr)> = again.iter().map(|&at| sends[at]).collect();
        let failed_again = sys::send_to_each(socket, &payloads, &retried, false);
        failed.extend(failed_again.into_iter().map(|(at, err)| (again[at], err)));
        failed.sort_by_key(|(at, _)| *at);
    }
    let mut sent = vec![0; calls.len()];
    for &(c, _) in &items {
        sent[c] += 1;
    }
    for (at, err) in failed {
        let (c, i) = items[at];
        sent[c] -= 1;
        calls[c].failed(&[i], err);
    }
    for (call, sent) in calls.iter_mut().zip(sent) {
        call.report.user_space_copies += sent;
    }
    stop
}
