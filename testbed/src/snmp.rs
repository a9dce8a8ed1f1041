//! Reading `/proc/net/snmp` counters of a network namespace.

use std::io;

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
}
