//! Integration tests: these create real network namespaces and need root.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

use elec_testbed::{
    in_namespace, is_pattern, mac_address, pattern, snmp_counter, tx_checksum_offload, Testbed,
    TestbedConfig,
};

fn netns_list() -> HashSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that none of the namespaces `names` exists any more.
fn assert_gone(names: &[String], after: &str) {
    let listed = netns_list();
    for n in names {
        assert!(!listed.contains(n), "{n} still exists after {after}");
    }
}

fn small() -> TestbedConfig {
    TestbedConfig {
        receivers: 3,
        addrs_per_receiver: 2,
        ..Default::default()
    }
}

/// Sends every message to every destination and checks exactly-once delivery.
fn exchange(tb: &Testbed, dests: &[SocketAddrV4], msgs: &[Vec<u8>]) {
    let before = tb.udp_in_datagrams().unwrap();
    let rx = tb.receivers(dests).unwrap();
    let sock = tb.sender_socket().unwrap();
    for m in msgs {
        for d in dests {
            sock.send_to(m, d).unwrap();
        }
    }
    let want = dests.len() * msgs.len();
    assert_eq!(rx.wait_for_total(want, Duration::from_secs(5)), want);
    let got = rx.finish(Duration::from_millis(20));
    got.check_exactly_once(dests, msgs).unwrap();
    assert_eq!(got.total(), want);
    for d in dests {
        assert!(got
            .sources(d)
            .iter()
            .all(|s| s.ip() == tb.sender_addr() && s.port() == sock.local_addr().unwrap().port()));
    }
    assert_eq!(
        tb.udp_in_csum_errors().unwrap(),
        vec![0; tb.num_receivers()]
    );
    let after = tb.udp_in_datagrams().unwrap();
    let delivered: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert_eq!(delivered, want as u64);
}

#[test]
fn comes_up_and_tears_down() {
    elec_testbed::require_root!();
    let tb = Testbed::new(small()).unwrap();
    let names = tb.namespaces();
    assert_eq!(names.len(), 5);
    let pid = std::process::id();
    for n in &names {
        assert!(n.starts_with(&format!("ebtb-{pid}-")), "{n}");
    }
    let listed = netns_list();
    for n in &names {
        assert!(listed.contains(n), "{n} not in ip netns list");
    }

    // Addresses, MACs, bridge membership.
    let s = ip_in(tb.sender_ns(), &["-o", "addr", "show", "dev", "eth0"]);
    assert!(s.contains("inet 10.77.0.1/16"), "{s}");
    assert_eq!(tb.receiver_addrs(1).len(), 2);
    assert_eq!(tb.receiver_addrs(1)[0].to_string(), "10.77.2.1");
    assert_eq!(tb.receiver_addrs(1)[1].to_string(), "10.77.2.2");
    for i in 0..tb.num_receivers() {
        let a = ip_in(tb.receiver_ns(i), &["-o", "addr", "show", "dev", "eth0"]);
        for addr in tb.receiver_addrs(i) {
            assert!(a.contains(&format!("inet {addr}/16")), "{a}");
        }
        assert_eq!(
            mac_address(tb.receiver_ns(i), "eth0").unwrap(),
            tb.receiver_mac(i)
        );
        let port = ip_in(
            tb.hub_ns(),
            &["-o", "link", "show", "dev", &tb.receiver_port(i)],
        );
        assert!(
            port.contains("master br0") && port.contains("state UP"),
            "{port}"
        );
    }
    assert_eq!(
        mac_address(tb.sender_ns(), "eth0").unwrap(),
        tb.sender_mac()
    );
    let s0 = ip_in(tb.hub_ns(), &["-o", "link", "show", "dev", "s0"]);
    assert!(s0.contains("master br0") && s0.contains("state UP"), "{s0}");
    assert!(ip_in(tb.hub_ns(), &["-o", "addr"])
        .lines()
        .all(|l| !l.contains("inet ") || l.contains("127.0.0.1")));
    let neigh = ip_in(tb.sender_ns(), &["neigh", "show", "dev", "eth0"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        6,
        "{neigh}"
    );

    // IPv6 is disabled inside, and only inside, the testbed.
    let inside = in_namespace(tb.receiver_ns(0), || {
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
    })
    .unwrap();
    if let Ok(v) = inside {
        assert_eq!(v.trim(), "1");
    }

    drop(tb);
    assert_gone(&names, "drop");
}

#[test]
fn torn_down_when_a_thread_panics() {
    elec_testbed::require_root!();
    let names = std::thread::spawn(|| {
        let mut names = Vec::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tb = Testbed::new(small()).unwrap();
            names = tb.namespaces();
            assert!(netns_list().contains(tb.hub_ns()));
            panic!("test panic while holding the testbed");
        }));
        assert!(r.is_err());
        names
    })
    .join()
    .unwrap();
    assert_eq!(names.len(), 5);
    assert_gone(&names, "a panic");
}

#[test]
fn plain_udp_exactly_once() {
    elec_testbed::require_root!();
    let tb = Testbed::new(small()).unwrap();
    let dests = tb.destinations(6, 7000);
    let unique: HashSet<_> = dests.iter().collect();
    assert_eq!(unique.len(), 6);
    // 6 destinations = 3 receivers x 2 addresses, all on port 7000.
    assert!(dests.iter().all(|d| d.port() == 7000));
    let msgs = vec![
        pattern(0, 100),
        pattern(1, 1400),
        pattern(2, 0),
        pattern(3, 4000),
    ];
    exchange(&tb, &dests, &msgs);
}

#[test]
fn software_checksums_and_arp() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        addrs_per_receiver: 2,
        sender_tx_checksum_offload: false,
        neighbours_prefilled: false,
        ..Default::default()
    })
    .unwrap();
    assert!(!tx_checksum_offload(tb.sender_ns(), "eth0").unwrap());
    let neigh = ip_in(tb.sender_ns(), &["neigh", "show", "dev", "eth0"]);
    assert!(!neigh.contains("PERMANENT"), "{neigh}");
    let dests = tb.destinations(8, 9000);
    exchange(&tb, &dests, &[pattern(7, 33), pattern(8, 1472)]);
}

#[test]
fn checksum_offload_off_on_hub_ports_facing_receivers() {
    elec_testbed::require_root!();
    let tb = Testbed::new(small()).unwrap();
    for i in 0..tb.num_receivers() {
        assert!(!tx_checksum_offload(tb.hub_ns(), &tb.receiver_port(i)).unwrap());
    }
    assert!(tx_checksum_offload(tb.hub_ns(), tb.hub_port_facing_sender()).unwrap());
    assert!(tx_checksum_offload(tb.sender_ns(), tb.sender_iface()).unwrap());
}

#[test]
fn parallel_testbeds_do_not_collide() {
    elec_testbed::require_root!();
    let handles: Vec<_> = (0..2)
        .map(|k| {
            std::thread::spawn(move || {
                let tb = Testbed::new(TestbedConfig {
                    receivers: 4,
                    ..Default::default()
                })
                .unwrap();
                let dests = tb.destinations(12, 6000);
                exchange(&tb, &dests, &[pattern(k, 200), pattern(k + 1, 1000)]);
                tb.namespaces()
            })
        })
        .collect();
    let all: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let a: HashSet<_> = all[0].iter().collect();
    assert!(all[1].iter().all(|n| !a.contains(n)));
}

#[test]
fn destinations_spread_and_scale() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 4,
        ..Default::default()
    })
    .unwrap();
    let dests = tb.destinations(300, 7000);
    let unique: HashSet<_> = dests.iter().collect();
    assert_eq!(unique.len(), 300);
    // Round-robin over receivers first.
    for (j, d) in dests.iter().take(8).enumerate() {
        assert_eq!(tb.receiver_of(*d.ip()), Some(j));
        assert_eq!(d.port(), 7000);
    }
    assert_eq!(dests[32].port(), 7001);
    let msgs = [pattern(5, 64)];
    exchange(&tb, &dests, &msgs);
}

#[test]
fn check_exactly_once_reports_problems() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        ..Default::default()
    })
    .unwrap();
    let dests = tb.destinations(3, 7100);
    let rx = tb.receivers(&dests).unwrap();
    let sock = tb.sender_socket().unwrap();
    let good = pattern(0, 50);
    let mut bad = good.clone();
    bad[17] ^= 0xff;
    sock.send_to(&good, dests[0]).unwrap();
    sock.send_to(&good, dests[0]).unwrap();
    sock.send_to(&bad, dests[1]).unwrap();
    rx.wait_for_total(3, Duration::from_secs(5));
    let got = rx.finish(Duration::from_millis(20));
    assert_eq!(got.count(&dests[0]), 2);
    let err = got
        .check_exactly_once(&dests, std::slice::from_ref(&good))
        .unwrap_err();
    assert!(
        err.contains(&format!(
            "{}: message #0 (50 bytes): expected 1 copy, got 2",
            dests[0]
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}: message #0 (50 bytes): expected 1 copy, got 0",
            dests[1]
        )),
        "{err}"
    );
    assert!(err.contains("first difference at byte 17"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: message #0 (50 bytes): expected 1 copy, got 0",
            dests[2]
        )),
        "{err}"
    );
    assert!(got.check_silent(&dests[2..]).is_ok());
    assert!(got.check_silent(&dests[..1]).is_err());
    // Destinations that are not receiver addresses are refused.
    assert!(tb
        .receivers(&["10.77.200.1:1".parse::<SocketAddrV4>().unwrap()])
        .is_err());
}

#[test]
fn counting_receivers_count_and_verify() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 3,
        ..Default::default()
    })
    .unwrap();
    let dests = tb.destinations(6, 7200);
    let counters = tb.counting_receivers(&dests, Some(0)).unwrap();
    let sock = tb.sender_socket().unwrap();
    let n_per = 200u64;
    for seq in 0..n_per {
        for d in &dests {
            sock.send_to(&pattern(seq, 300 + seq as usize), d).unwrap();
        }
    }
    let mut bad = pattern(1, 100);
    bad[99] = 0;
    assert!(!is_pattern(&bad));
    sock.send_to(&bad, dests[4]).unwrap();
    let want = n_per * dests.len() as u64 + 1;
    assert_eq!(counters.wait_for_total(want, Duration::from_secs(10)), want);
    let mut expect = vec![n_per; dests.len()];
    expect[4] += 1;
    assert_eq!(counters.counts(), expect);
    let report = counters.stop();
    assert_eq!(report.total(), want);
    assert_eq!(report.total_mismatches(), 1);
    assert_eq!(report.mismatches[4], 1);
    assert_eq!(tb.udp_rcvbuf_errors().unwrap(), vec![0; 3]);
}

#[test]
fn commands_and_counters_in_sender() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 1,
        mtu: Some(9000),
        rps_cpu: Some(0),
        ..Default::default()
    })
    .unwrap();
    let out = tb
        .run_in_sender(Command::new("ip").args(["-o", "addr", "show", "dev", "eth0"]))
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.1/16"));
    let link = ip_in(tb.receiver_ns(0), &["-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 9000"), "{link}");
    let rps = Command::new("ip")
        .args([
            "netns",
            "exec",
            tb.hub_ns(),
            "cat",
            "/sys/class/net/s0/queues/rx-0/rps_cpus",
        ])
        .output()
        .unwrap();
    assert!(rps.status.success(), "{rps:?}");
    let mask = String::from_utf8_lossy(&rps.stdout);
    assert_eq!(
        u64::from_str_radix(mask.trim().replace(',', "").as_str(), 16).unwrap(),
        1
    );

    let before = snmp_counter(tb.sender_ns(), "Udp", "OutDatagrams").unwrap();
    let dests = tb.destinations(1, 7300);
    exchange(&tb, &dests, &[pattern(9, 8500)]);
    let after = snmp_counter(tb.sender_ns(), "Udp", "OutDatagrams").unwrap();
    assert_eq!(after - before, 1);

    let mut child = tb
        .spawn_in(
            tb.receiver_ns(0),
            Command::new("ip")
                .args(["-o", "addr", "show", "dev", "eth0"])
                .stdout(std::process::Stdio::piped()),
        )
        .unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut s).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(s.contains("10.77.1.1/16"), "{s}");
}

/// Received packets of `eth0` in namespace `ns` (from /proc/net/dev).
fn rx_packets(ns: &str) -> u64 {
    let text = in_namespace(ns, || std::fs::read_to_string("/proc/thread-self/net/dev"))
        .unwrap()
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .unwrap();
    line.split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn unicast_is_not_flooded_to_other_receivers() {
    elec_testbed::require_root!();
    let tb = Testbed::new(small()).unwrap();
    let before: Vec<u64> = (0..3).map(|i| rx_packets(tb.receiver_ns(i))).collect();
    let dest = SocketAddrV4::new(tb.receiver_addrs(0)[0], 7500);
    let rx = tb.receivers(&[dest]).unwrap();
    let sock = tb.sender_socket().unwrap();
    for _ in 0..50 {
        sock.send_to(b"x", dest).unwrap();
    }
    assert_eq!(rx.wait_for_total(50, Duration::from_secs(5)), 50);
    let got = rx.finish(Duration::from_millis(20));
    assert_eq!(got.count(&dest), 50);
    let after: Vec<u64> = (0..3).map(|i| rx_packets(tb.receiver_ns(i))).collect();
    assert_eq!(after[0] - before[0], 50, "{before:?} {after:?}");
    assert_eq!(&after[1..], &before[1..], "frames were flooded");
}
