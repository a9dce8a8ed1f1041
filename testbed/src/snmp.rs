//! Reading `/proc/net/snmp`, `/proc/net/snmp6` and `/proc/net/dev`
//! counters of a network namespace.

use std::io;

use crate::error::context;
use crate::ns::in_namespace;

/// Finds `field` of protocol `proto` (e.g. `"Udp"`) in the text of
/// `/proc/net/snmp` (a header line and a value line per protocol).
pub(crate) fn parse_snmp(text: &str, proto: &str, field: &str) -> Option<u64> {
    let tag = format!("{proto}:");
    let mut lines = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(tag.as_str()));
    let header = lines.next()?;
    let values = lines.next()?;
    let pos = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(pos)?.parse().ok()
}

/// Reads a counter of the calling thread's network namespace (through
/// `/proc/thread-self`, which follows the thread's namespace).
pub(crate) fn read_snmp_here(proto: &str, field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    parse_snmp(&text, proto, field).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {proto} field {field:?} in /proc/net/snmp"),
        )
    })
}

/// Reads `field` of protocol `proto` (e.g. `("Udp", "OutDatagrams")`) from
/// `/proc/net/snmp` of the network namespace `ns`.
pub fn snmp_counter(ns: &str, proto: &str, field: &str) -> io::Result<u64> {
    in_namespace(ns, || read_snmp_here(proto, field))?
}

/// Finds the counter `name` (e.g. `"Udp6InCsumErrors"`) in the text of
/// `/proc/net/snmp6` (one `name value` line per counter).
pub(crate) fn parse_snmp6(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == name).then(|| words.next()?.parse().ok())?
    })
}

/// Reads an IPv6 counter of the calling thread's network namespace (through
/// `/proc/thread-self`, which follows the thread's namespace).
pub(crate) fn read_snmp6_here(name: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6").map_err(|e| {
        context(
            e,
            "cannot read /proc/net/snmp6 (is IPv6 built into the kernel?)",
        )
    })?;
    parse_snmp6(&text, name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no counter {name:?} in /proc/net/snmp6"),
        )
    })
}

/// Reads the counter `name` (e.g. `"Udp6InCsumErrors"`, `"Udp6InDatagrams"`)
/// from `/proc/net/snmp6` of the network namespace `ns`: the IPv6
/// counterpart of [`snmp_counter`].
pub fn snmp6_counter(ns: &str, name: &str) -> io::Result<u64> {
    in_namespace(ns, || read_snmp6_here(name))?
}

/// Packet counters of one interface, from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets dropped on receive (a full backlog, for a veth's peer).
    pub rx_dropped: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Packets dropped on transmit (for a veth: its peer could not take them).
    pub tx_dropped: u64,
}

/// Finds interface `iface` in the text of `/proc/net/dev`.
pub(crate) fn parse_dev(text: &str, iface: &str) -> Option<LinkCounters> {
    let line = text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == iface).then_some(rest)
    })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
    Some(LinkCounters {
        rx_packets: *v.get(1)?,
        rx_dropped: *v.get(3)?,
        tx_packets: *v.get(9)?,
        tx_dropped: *v.get(11)?,
    })
}

/// The counters of interface `iface` in the network namespace `ns`.
pub fn link_counters(ns: &str, iface: &str) -> io::Result<LinkCounters> {
    in_namespace(ns, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        parse_dev(&text, iface).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {iface} in /proc/net/dev of {ns}"),
            )
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let t = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 Udp: 10 1 2 30 0 0 7 0 0\n\
                 UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 UdpLite: 0 0 0 0 0 0 99 0 0\n";
        assert_eq!(parse_snmp(t, "Udp", "InCsumErrors"), Some(7));
        assert_eq!(parse_snmp(t, "Udp", "InDatagrams"), Some(10));
        assert_eq!(parse_snmp(t, "UdpLite", "InCsumErrors"), Some(99));
        assert_eq!(parse_snmp(t, "Udp", "Nope"), None);
    }

    #[test]
    fn parses_snmp6() {
        let t = "Ip6InReceives                   \t12\n\
                 Udp6InDatagrams                 \t5\n\
                 Udp6NoPorts                     \t0\n\
                 Udp6InCsumErrors                \t3\n\
                 UdpLite6InCsumErrors            \t9\n";
        assert_eq!(parse_snmp6(t, "Udp6InDatagrams"), Some(5));
        assert_eq!(parse_snmp6(t, "Udp6InCsumErrors"), Some(3));
        assert_eq!(parse_snmp6(t, "UdpLite6InCsumErrors"), Some(9));
        assert_eq!(parse_snmp6(t, "Udp6"), None);
        assert_eq!(parse_snmp6(t, "Udp6Nope"), None);
    }

    #[test]
    fn parses_dev() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
                 eth0: 5000      40    0    3    0     0          0         0     9000      70    0    7    0     0       0          0\n";
        let c = parse_dev(t, "eth0").unwrap();
        assert_eq!(
            c,
            LinkCounters {
                rx_packets: 40,
                rx_dropped: 3,
                tx_packets: 70,
                tx_dropped: 7
            }
        );
        assert_eq!(parse_dev(t, "eth1"), None);
    }
}
