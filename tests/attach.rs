//! Attaching and detaching: TCX where the kernel has it, clsact otherwise;
//! other TC programs and filters on the interface are left alone, and after
//! drop nothing of ours is left (as `bpftool` and `tc` see it).

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use elec_broadcast::{Broadcaster, Mode};
use elec_testbed::{in_namespace, pattern, Testbed, TestbedConfig};

fn run(tb: &Testbed, program: &str, args: &[&str]) -> String {
    let out = tb
        .run_in_sender(Command::new(program).args(args))
        .unwrap_or_else(|e| panic!("running {program} (install it: scripts/setup.sh): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of the programs on the sender's eth0 egress that are ours: TCX
/// programs (bpftool 7.1 predates TCX, so they are queried the way newer
/// bpftool does, with BPF_PROG_QUERY) and tc filters (from `bpftool net`),
/// both filtered by the program name `fan_out`.
fn our_program_ids(tb: &Testbed) -> Vec<u64> {
    let mut ids: Vec<u64> = in_namespace(tb.sender_ns(), || {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        let mut prog_ids = [0u32; 64];
        let mut opts = libbpf_sys::bpf_prog_query_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as libbpf_sys::size_t,
            prog_ids: prog_ids.as_mut_ptr(),
            __bindgen_anon_1: libbpf_sys::bpf_prog_query_opts__bindgen_ty_1 {
                count: prog_ids.len() as u32,
            },
            ..Default::default()
        };
        // SAFETY: `opts` is initialised with its size and points at
        // `prog_ids`, which holds `count` entries and outlives the call.
        let err = unsafe {
            libbpf_sys::bpf_prog_query_opts(ifindex as i32, libbpf_sys::BPF_TCX_EGRESS, &mut opts)
        };
        assert_eq!(err, 0, "BPF_PROG_QUERY on eth0 egress failed");
        // SAFETY: both union fields are the same u32 count.
        let count = unsafe { opts.__bindgen_anon_1.count } as usize;
        prog_ids[..count].iter().map(|&id| u64::from(id)).collect()
    })
    .unwrap();
    ids.retain(|&id| program_name(id).as_deref() == Some("fan_out"));
    // {"devname":"eth0","ifindex":2,"kind":"clsact/egress","name":"fan_out:[42]","id":42}
    let json = run(tb, "bpftool", &["-j", "net", "show", "dev", "eth0"]);
    ids.extend(
        json.split('{')
            .filter(|entry| entry.contains("\"name\":\"fan_out:"))
            .filter_map(|entry| {
                let rest = entry.split("\"id\":").nth(1)?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            }),
    );
    ids
}

fn program_name(id: u64) -> Option<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool (install it: scripts/setup.sh)");
    let json = String::from_utf8_lossy(&out.stdout);
    let rest = json.split("\"name\":\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool (install it: scripts/setup.sh)")
        .status
        .success()
}

/// Programs are freed after an RCU grace period once their last reference
/// (link, filter, fd) is gone: give that a moment.
fn program_gone(id: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while program_exists(id) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn qdiscs(tb: &Testbed) -> String {
    run(tb, "tc", &["qdisc", "show", "dev", "eth0"])
}

fn egress_filters(tb: &Testbed) -> String {
    run(tb, "tc", &["filter", "show", "dev", "eth0", "egress"])
}

/// Broadcasts one message to 16 receivers and checks every copy.
fn check_delivery(tb: &Testbed, broadcaster: &Broadcaster, socket: &UdpSocket, seq: u64) {
    let dests = tb.destinations(16, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let message = pattern(seq, 500);
    let report = broadcaster
        .broadcast(socket, &message, &addrs(&dests))
        .unwrap();
    assert_complete(&report, dests.len());
    assert_eq!(report.kernel_copies, dests.len(), "{report:?}");
    rx.wait_for_total(dests.len(), WAIT);
    rx.finish(SETTLE)
        .check_exactly_once(&dests, &[message])
        .unwrap();
}

fn small_testbed() -> Testbed {
    testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        ..Default::default()
    })
}

#[test]
fn tcx_attachment_is_gone_after_drop() {
    if !root_available() {
        return;
    }
    let tb = small_testbed();
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    assert_eq!(
        broadcaster.uses_tcx(),
        Some(true),
        "this kernel has TCX (6.6+)"
    );
    let ids = our_program_ids(&tb);
    assert_eq!(ids.len(), 1, "bpftool net show: {ids:?}");
    assert!(program_exists(ids[0]));
    check_delivery(&tb, &broadcaster, &sender_socket(&tb, 0), 1);

    drop(broadcaster);
    assert!(our_program_ids(&tb).is_empty());
    assert!(program_gone(ids[0]), "program {} still loaded", ids[0]);
    assert!(!qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
}

#[test]
fn clsact_attachment_removes_the_qdisc_it_created() {
    if !root_available() {
        return;
    }
    let tb = small_testbed();
    assert!(!qdiscs(&tb).contains("clsact"));
    let broadcaster = in_namespace(tb.sender_ns(), || Broadcaster::with_clsact("eth0"))
        .unwrap()
        .unwrap();
    assert_eq!(broadcaster.uses_tcx(), Some(false));
    assert!(qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
    assert!(
        egress_filters(&tb).contains("fan_out"),
        "{}",
        egress_filters(&tb)
    );
    let ids = our_program_ids(&tb);
    assert_eq!(ids.len(), 1, "bpftool net show: {ids:?}");
    check_delivery(&tb, &broadcaster, &sender_socket(&tb, 0), 2);

    drop(broadcaster);
    assert!(!qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
    assert!(ids.iter().all(|&id| program_gone(id)));
}

#[test]
fn clsact_attachment_leaves_a_qdisc_and_filters_it_did_not_create() {
    if !root_available() {
        return;
    }
    let tb = small_testbed();
    // A qdisc and a filter of someone else's (matching only the discard
    // port, so that it does not take our traffic).
    run(&tb, "tc", &["qdisc", "add", "dev", "eth0", "clsact"]);
    let foreign = [
        "filter", "add", "dev", "eth0", "egress", "prio", "7", "protocol", "ip",
    ];
    run(
        &tb,
        "tc",
        &[
            &foreign[..],
            &[
                "u32", "match", "ip", "dport", "9", "0xffff", "classid", "1:1",
            ],
        ]
        .concat(),
    );
    let before = egress_filters(&tb);

    let broadcaster = in_namespace(tb.sender_ns(), || Broadcaster::with_clsact("eth0"))
        .unwrap()
        .unwrap();
    check_delivery(&tb, &broadcaster, &sender_socket(&tb, 0), 3);
    drop(broadcaster);

    assert!(
        qdiscs(&tb).contains("clsact"),
        "our drop removed a qdisc we did not create"
    );
    assert_eq!(egress_filters(&tb), before, "the foreign filter changed");
}

#[test]
fn two_broadcasters_on_one_interface_coexist() {
    if !root_available() {
        return;
    }
    let tb = small_testbed();
    // A TCX program and a clsact one on the same interface, plus a second
    // TCX program: each fans out only its own sockets, and clones of one pass
    // the others untouched.
    let first = broadcaster(&tb, Mode::Kernel);
    let second = in_namespace(tb.sender_ns(), || Broadcaster::with_clsact("eth0"))
        .unwrap()
        .unwrap();
    let third = broadcaster(&tb, Mode::Kernel);
    assert_eq!(our_program_ids(&tb).len(), 3);
    let sockets: Vec<UdpSocket> = (0..3).map(|_| sender_socket(&tb, 0)).collect();
    for (seq, b) in [&first, &second, &third].into_iter().enumerate() {
        check_delivery(&tb, b, &sockets[seq], 10 + seq as u64);
    }
    drop(first);
    check_delivery(&tb, &second, &sockets[1], 20);
    check_delivery(&tb, &third, &sockets[2], 21);
    drop(third);
    check_delivery(&tb, &second, &sockets[1], 22);
    assert_eq!(our_program_ids(&tb).len(), 1);
    drop(second);
    assert!(our_program_ids(&tb).is_empty());
    assert!(!qdiscs(&tb).contains("clsact"));
}
