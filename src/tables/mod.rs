//! The system's tables: routes, neighbours, links and addresses, read from
//! the kernel over rtnetlink and followed through its change notifications.
//!
//! - `netlink`: the rtnetlink client (route lookups, neighbour and link
//!   reads) and the socket of change notifications;
//! - `resolve`: which path each destination takes (a MAC to fan out to, a
//!   user-space send, another interface), and the generation number that
//!   tells a current answer from a stale one;
//! - `watch`: the thread that applies the notifications.

pub(crate) mod netlink;
pub(crate) mod resolve;
pub(crate) mod watch;

pub(crate) use netlink::{ChangeSocket, RouteSocket};
pub(crate) use resolve::{PathTo, Resolver, Target};
pub(crate) use watch::Watcher;
