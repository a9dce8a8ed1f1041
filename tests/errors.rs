//! Bad input gets a typed error, and a call that returns one sent nothing.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::thread;

use common::*;
use elec_broadcast::{Broadcaster, Error, Mode};
use elec_testbed::{drop_effective_capabilities, in_namespace, pattern};

#[test]
fn bad_input_is_rejected_before_anything_is_sent() {
    elec_testbed::require_root!();
    let tb = small_testbed(2, 1);
    for mode in [Mode::Kernel, Mode::UserSpace] {
        let broadcaster = broadcaster(&tb, mode);
        let socket = sender_socket(&tb, 0);
        let dests = tb.destinations(2, 7000);
        let good = addrs(&dests);
        let rx = tb.receivers(&dests).unwrap();
        let message = pattern(0, 10);
        let with = |extra: &str| {
            let mut list = good.clone();
            list.push(extra.parse::<SocketAddr>().unwrap());
            list
        };

        let err = broadcaster.broadcast(&socket, &message, &[]).unwrap_err();
        assert!(matches!(err, Error::NoDestinations), "{err}");

        let err = broadcaster
            .broadcast(&socket, &message, &with("[fd00::1]:7000"))
            .unwrap_err();
        // An IPv6 destination on an IPv4 socket.
        assert!(
            matches!(err, Error::FamilyMismatch { socket: "IPv4", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("IPv4 socket"), "{err}");

        for bad in ["10.77.1.1:0", "0.0.0.0:7000", "255.255.255.255:7000"] {
            let err = broadcaster
                .broadcast(&socket, &message, &with(bad))
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidDestination { .. }),
                "{bad}: {err}"
            );
        }

        let too_big = vec![7u8; broadcaster.max_payload() + 1];
        let err = broadcaster.broadcast(&socket, &too_big, &good).unwrap_err();
        match err {
            Error::PayloadTooLarge { len, max, mtu, .. } => {
                assert_eq!((len, max, mtu), (1473, 1472, 1500));
            }
            other => panic!("{other}"),
        }

        let tcp = in_namespace(tb.sender_ns(), || TcpListener::bind("10.77.0.1:0"))
            .unwrap()
            .unwrap();
        let err = broadcaster.broadcast(&tcp, &message, &good).unwrap_err();
        assert!(matches!(err, Error::NotUdp { .. }), "{err}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let err = broadcaster.broadcast(&file, &message, &good).unwrap_err();
        assert!(matches!(err, Error::NotUdp { .. }), "{err}");

        let unbound = in_namespace(tb.sender_ns(), || {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        })
        .unwrap()
        .unwrap();
        let err = broadcaster
            .broadcast(&unbound, &message, &good)
            .unwrap_err();
        assert!(matches!(err, Error::Unbound), "{err}");
        assert!(err.to_string().contains("bind it"), "{err}");

        // IPv4 destinations on an IPv6-only socket.
        let v6 = in_namespace(tb.sender_ns(), || {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
            socket.set_only_v6(true)?;
            socket.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())?;
            Ok::<_, std::io::Error>(socket)
        })
        .unwrap()
        .unwrap();
        let err = broadcaster.broadcast(&v6, &message, &good).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FamilyMismatch {
                    socket: "IPv6-only",
                    ..
                }
            ),
            "{err}"
        );

        // None of the calls above sent a thing.
        let got = rx.finish(SETTLE);
        got.check_silent(&dests).unwrap();
        assert_eq!(broadcaster.stats().broadcasts, 0);
        drop(socket);
    }
}

#[test]
fn unknown_interface_is_named_in_the_error() {
    // Needs no privileges: the lookup fails before anything is loaded.
    for mode in [Mode::Auto, Mode::Kernel, Mode::UserSpace] {
        let err = Broadcaster::with_mode("no-such-if0", mode).unwrap_err();
        assert!(matches!(err, Error::UnknownInterface { .. }), "{err}");
        assert!(err.to_string().contains("no-such-if0"), "{err}");
    }
    let err = Broadcaster::new("this-name-is-far-too-long-for-linux").unwrap_err();
    assert!(matches!(err, Error::UnknownInterface { .. }), "{err}");
}

#[test]
fn loopback_cannot_carry_a_kernel_fan_out() {
    elec_testbed::require_root!();
    let err = Broadcaster::with_mode("lo", Mode::Kernel).unwrap_err();
    assert!(matches!(err, Error::UnsupportedInterface { .. }), "{err}");
    let auto = Broadcaster::new("lo").unwrap();
    assert_eq!(auto.mode(), Mode::UserSpace);
    assert!(matches!(
        auto.fallback_reason(),
        Some(Error::UnsupportedInterface { .. })
    ));
}

#[test]
fn missing_capabilities_are_named_and_auto_mode_falls_back() {
    elec_testbed::require_root!();
    let tb = small_testbed(2, 1);
    let dests = tb.destinations(2, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let socket = sender_socket(&tb, 0);
    let raw = socket.as_raw_fd();
    let sender_ns = tb.sender_ns().to_string();
    let message = pattern(3, 30);
    let targets = addrs(&dests);
    // Capabilities are per thread: this thread gives its up, the test's
    // other threads keep theirs.
    let report = thread::scope(|s| {
        s.spawn(|| {
            in_namespace(&sender_ns, || {
                drop_effective_capabilities().unwrap();
                let err = Broadcaster::with_mode("eth0", Mode::Kernel).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::MissingCapability {
                            capability: "CAP_BPF"
                        }
                    ),
                    "{err}"
                );
                assert!(err.to_string().contains("Mode::UserSpace"), "{err}");

                let auto = Broadcaster::new("eth0").unwrap();
                assert_eq!(auto.mode(), Mode::UserSpace);
                assert!(matches!(
                    auto.fallback_reason(),
                    Some(Error::MissingCapability { .. })
                ));
                // SAFETY: `raw` is the fd of `socket`, which outlives this scope.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
                auto.broadcast(&fd, &message, &targets).unwrap()
            })
            .unwrap()
        })
        .join()
        .unwrap()
    });
    assert_complete(&report, 2);
    expect_exactly_once(rx, &dests, &[message]);
}

/// Keeps only `keep` in the calling thread's effective capability set.
fn keep_only(keep: &[caps::Capability]) {
    let set = keep.iter().copied().collect();
    caps::set(None, caps::CapSet::Effective, &set).expect("setting the effective capabilities");
}

#[test]
fn the_kernel_fan_out_needs_cap_bpf_cap_perfmon_and_cap_net_admin_and_no_more() {
    elec_testbed::require_root!();
    use caps::Capability::{CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON};
    let tb = small_testbed(2, 1);
    let dests = tb.destinations(2, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let targets = addrs(&dests);
    let message = pattern(4, 300);
    let socket = sender_socket(&tb, 0);
    let raw = socket.as_raw_fd();
    let sender_ns = tb.sender_ns().to_string();
    // Each attempt on a thread of its own, inside the sender's namespace
    // (entering it needs CAP_SYS_ADMIN, so the capabilities go after).
    let attempt = |keep: &'static [caps::Capability]| {
        let sender_ns = sender_ns.clone();
        thread::spawn(move || {
            in_namespace(&sender_ns, || {
                keep_only(keep);
                Broadcaster::with_mode("eth0", Mode::Kernel)
            })
            .unwrap()
        })
        .join()
        .unwrap()
    };
    for (keep, missing) in [
        (&[CAP_NET_ADMIN, CAP_PERFMON][..], "CAP_BPF"),
        (&[CAP_BPF, CAP_NET_ADMIN][..], "CAP_PERFMON"),
        (&[CAP_BPF, CAP_PERFMON][..], "CAP_NET_ADMIN"),
    ] {
        let err = attempt(keep).unwrap_err();
        assert!(
            matches!(err, Error::MissingCapability { capability } if capability == missing),
            "with {keep:?}: {err}"
        );
    }
    // With exactly the three: the program loads (the verifier accepts it
    // without CAP_SYS_ADMIN), and broadcasts from that thread fan out.
    let report = thread::scope(|scope| {
        scope
            .spawn(|| {
                in_namespace(&sender_ns, || {
                    keep_only(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]);
                    let broadcaster = Broadcaster::with_mode("eth0", Mode::Kernel).unwrap();
                    assert_eq!(broadcaster.mode(), Mode::Kernel);
                    // SAFETY: `raw` is the fd of `socket`, which outlives this scope.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
                    broadcaster.broadcast(&fd, &message, &targets).unwrap()
                })
                .unwrap()
            })
            .join()
            .unwrap()
    });
    assert_complete(&report, 2);
    assert_eq!(report.kernel_copies, 2, "{report:?}");
    expect_exactly_once(rx, &dests, &[message]);
}
