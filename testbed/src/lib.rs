//! Network-namespace testbeds for elec-broadcast's tests, benchmarks,
//! examples and demo.
//!
//! A [`Testbed`] is one sender namespace and R receiver namespaces, each
//! connected by a veth pair to a Linux bridge that lives in its own hub
//! namespace:
//!
//! ```text
//!  sender ns            hub ns (br0)             receiver ns i
//!  eth0 10.77.0.1 ---- s0 [br0] r<i> ---- eth0 10.77.(1+i).(1+k)
//! ```
//!
//! With [`TestbedConfig::ipv6`] the sender also has fd77::1/64 and the
//! link-local fe80::77:1, receiver i fd77::(1 + i):(1 + k)/64 and
//! fe80::77:(100 + i) (hex).
//!
//! Receivers ([`Testbed::receivers`], [`Testbed::counting_receivers`]) bind
//! UDP sockets inside the receiver namespaces and record or count every
//! datagram, so tests can check that every destination got exactly one
//! intact copy ([`Received::check_exactly_once`]). Destinations are IPv4 or
//! IPv6 ([`Testbed::destinations`], [`Testbed::destinations6`], link-local
//! ones too), sent to from [`Testbed::sender_socket`],
//! [`Testbed::sender_socket6`] or [`Testbed::sender_socket_dual`].
//!
//! Traffic never leaves the testbed's own namespaces. Everything is deleted
//! when the [`Testbed`] is dropped (also during a panic), on SIGINT/SIGTERM/
//! SIGHUP (exit status 128 + signal, 130 for Ctrl-C), and namespaces left
//! behind by killed processes are removed by the next [`Testbed::new`].
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2. Tests that
//! need root start with [`require_root!`], which fails them with a message
//! naming what is missing, or skips them visibly when
//! `ELEC_BROADCAST_SKIP_ROOT_TESTS=1` ([`SKIP_ROOT_TESTS_ENV`]) is set.
//!
//! ```no_run
//! use elec_testbed::{pattern, Testbed, TestbedConfig};
//! use std::time::Duration;
//!
//! let tb = Testbed::new(TestbedConfig { receivers: 3, ..Default::default() })?;
//! let dests = tb.destinations(6, 7000);
//! let rx = tb.receivers(&dests)?;
//! let sock = tb.sender_socket()?;
//! let msg = pattern(0, 100);
//! for d in &dests {
//!     sock.send_to(&msg, d)?;
//! }
//! rx.wait_for_total(dests.len(), Duration::from_secs(2));
//! let got = rx.finish(Duration::from_millis(20));
//! got.check_exactly_once(&dests, &[msg]).unwrap();
//! assert!(tb.udp_in_csum_errors()?.iter().all(|&e| e == 0));
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

mod cleanup;
mod error;
mod ethtool;
mod ip;
mod ns;
mod pattern;
mod privileges;
mod recv;
mod report;
mod snmp;
mod sock;
mod testbed;
mod wait;

pub use caps::Capability;
pub use cleanup::{cleanup_all, leftover_namespaces};
pub use ethtool::{format_mac, mac_address, set_tx_checksum_offload, tx_checksum_offload};
pub use ns::{
    in_namespace, output_in, spawn_in, spawn_in_namespace, udp_socket_in, NsThread, NETNS_RUN_DIR,
};
pub use pattern::{is_pattern, pattern, PATTERN_MODULUS};
#[doc(hidden)]
pub use privileges::__function_path;
pub use privileges::{
    drop_effective_capabilities, missing_capabilities, require_root, SKIP_ROOT_TESTS_ENV,
};
pub use recv::{pin_current_thread, CountReport, Counters, Received, Receivers, RECEIVER_RCVBUF};
pub use report::{backlog_drops, backlog_note};
pub use snmp::{link_counters, snmp6_counter, snmp_counter, LinkCounters};
pub use testbed::{
    Testbed, TestbedConfig, BRIDGE, HUB_PORT_SECOND, HUB_PORT_SENDER, IFACE,
    MAX_ADDRS_PER_RECEIVER, MAX_RECEIVERS, PREFIX_LEN, PREFIX_LEN6, SECOND_IFACE,
    SECOND_SENDER_ADDR, SENDER_ADDR, SENDER_ADDR6, SENDER_LINK_LOCAL,
};
pub use wait::wait_until;
