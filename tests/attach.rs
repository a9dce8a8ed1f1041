//! Attaching and detaching: TCX where the kernel has it, clsact otherwise;
//! other TC programs and filters on the interface are left alone, and after
//! drop nothing of ours is left (as the kernel's BPF queries, `bpftool net`
//! and `tc` see it).

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::*;
use elec_broadcast::{Broadcaster, Mode};
use elec_testbed::{in_namespace, pattern, wait_until, Testbed};
use libbpf_rs::query::{LinkInfoIter, LinkTypeInfo, ProgInfoIter, TcxLinkInfo};
use libbpf_rs::ProgramAttachType;

/// The name of our program as the kernel reports it.
const PROGRAM: &str = "fan_out";

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

/// Index of the sender's eth0 (in the sender namespace).
fn sender_ifindex(tb: &Testbed) -> u32 {
    let ifindex = tb
        .in_sender(|| {
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }
        })
        .unwrap();
    assert_ne!(ifindex, 0, "no eth0 in the sender namespace");
    ifindex
}

/// Names of every loaded BPF program, by id.
fn program_names() -> HashMap<u32, String> {
    ProgInfoIter::default()
        .map(|p| (p.id, p.name.to_string_lossy().into_owned()))
        .collect()
}

fn program_exists(id: u32) -> bool {
    ProgInfoIter::default().any(|p| p.id == id)
}

/// Ids of the TCX programs on the sender's eth0 egress. No libbpf-rs API
/// wraps BPF_PROG_QUERY, and TCX link infos carry an ifindex but no
/// namespace (every testbed's eth0 has the same index), so this asks the
/// kernel with libbpf's `bpf_prog_query_opts` inside the sender namespace.
fn tcx_program_ids(tb: &Testbed) -> Vec<u32> {
    let ifindex = sender_ifindex(tb);
    tb.in_sender(|| {
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
        prog_ids[..count].to_vec()
    })
    .unwrap()
}

/// Ids of the clsact filters' programs on the sender's eth0, from
/// `bpftool net`: cls_bpf filters are only listed by a netlink dump of the
/// TC filters, which neither libbpf-rs's query module nor libbpf's
/// `bpf_tc_query` (it needs the handle and priority, chosen by the kernel)
/// provides.
fn clsact_program_ids(tb: &Testbed) -> Vec<u32> {
    // [{"xdp":[],"tc":[{"devname":"eth0","ifindex":2,"kind":"clsact/egress",
    //   "name":"fan_out:[42]","prog_id":42,...}],...}]
    let json = run(tb, "bpftool", &["-j", "net", "show", "dev", "eth0"]);
    let parsed: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("bpftool net show printed no JSON ({e}): {json}"));
    let mut ids = Vec::new();
    for section in parsed.as_array().into_iter().flatten() {
        for filter in section["tc"].as_array().into_iter().flatten() {
            let ours = filter["name"]
                .as_str()
                .is_some_and(|name| name.starts_with(&format!("{PROGRAM}:")));
            let id = filter["prog_id"].as_u64().or_else(|| filter["id"].as_u64());
            if let (true, Some(id)) = (ours, id) {
                ids.push(u32::try_from(id).expect("a program id fits in u32"));
            }
        }
    }
    ids
}

/// Ids of the programs on the sender's eth0 egress that are ours (named
/// `fan_out`): TCX programs and clsact filters.
fn our_program_ids(tb: &Testbed) -> Vec<u32> {
    let names = program_names();
    let mut ids = tcx_program_ids(tb);
    ids.retain(|id| names.get(id).map(String::as_str) == Some(PROGRAM));
    ids.extend(clsact_program_ids(tb));
    ids
}

/// The TCX links that attach program `id` (from the kernel's list of links).
fn tcx_links_of(id: u32) -> Vec<TcxLinkInfo> {
    LinkInfoIter::default()
        .filter(|l| l.prog_id == id)
        .filter_map(|l| match l.info {
            LinkTypeInfo::Tcx(tcx) => Some(tcx),
            _ => None,
        })
        .collect()
}

/// Programs are freed after an RCU grace period once their last reference
/// (link, filter, fd) is gone: give that a moment.
fn program_gone(id: u32) -> bool {
    wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        !program_exists(id)
    })
    .is_some()
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
    expect_exactly_once(rx, &dests, &[message]);
}

fn clsact_broadcaster(tb: &Testbed) -> Broadcaster {
    in_namespace(tb.sender_ns(), || Broadcaster::with_clsact("eth0"))
        .unwrap()
        .unwrap()
}

#[test]
fn tcx_attachment_is_gone_after_drop() {
    elec_testbed::require_root!();
    let tb = small_testbed(4, 2);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    assert_eq!(
        broadcaster.uses_tcx(),
        Some(true),
        "this kernel has TCX (6.6+)"
    );
    let ids = our_program_ids(&tb);
    assert_eq!(ids.len(), 1, "our programs on eth0: {ids:?}");
    assert!(program_exists(ids[0]));
    let links = tcx_links_of(ids[0]);
    assert_eq!(links.len(), 1, "TCX links of program {}: {links:?}", ids[0]);
    assert_eq!(links[0].ifindex, sender_ifindex(&tb));
    assert!(
        matches!(links[0].attach_type, ProgramAttachType::TcxEgress),
        "{links:?}"
    );
    check_delivery(&tb, &broadcaster, &sender_socket(&tb, 0), 1);

    drop(broadcaster);
    assert!(our_program_ids(&tb).is_empty());
    assert!(program_gone(ids[0]), "program {} still loaded", ids[0]);
    assert!(!qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
}

#[test]
fn clsact_attachment_removes_the_qdisc_it_created() {
    elec_testbed::require_root!();
    let tb = small_testbed(4, 2);
    assert!(!qdiscs(&tb).contains("clsact"));
    let broadcaster = clsact_broadcaster(&tb);
    assert_eq!(broadcaster.uses_tcx(), Some(false));
    assert!(qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
    assert!(
        egress_filters(&tb).contains("fan_out"),
        "{}",
        egress_filters(&tb)
    );
    let ids = our_program_ids(&tb);
    assert_eq!(ids.len(), 1, "our programs on eth0: {ids:?}");
    assert!(
        tcx_links_of(ids[0]).is_empty(),
        "a clsact filter is no link"
    );
    check_delivery(&tb, &broadcaster, &sender_socket(&tb, 0), 2);

    drop(broadcaster);
    assert!(!qdiscs(&tb).contains("clsact"), "{}", qdiscs(&tb));
    assert!(ids.iter().all(|&id| program_gone(id)));
}

#[test]
fn clsact_attachment_leaves_a_qdisc_and_filters_it_did_not_create() {
    elec_testbed::require_root!();
    let tb = small_testbed(4, 2);
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

    let broadcaster = clsact_broadcaster(&tb);
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
    elec_testbed::require_root!();
    let tb = small_testbed(4, 2);
    // A TCX program and a clsact one on the same interface, plus a second
    // TCX program: each fans out only its own sockets, and clones of one pass
    // the others untouched.
    let first = broadcaster(&tb, Mode::Kernel);
    let second = clsact_broadcaster(&tb);
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

/// The verifier inlines a `bpf_loop()` whose call always has the same
/// callback (a direct call per copy instead of the helper's indirect one).
/// Two calls with two callbacks, which clang merged into one call of either,
/// were not inlined: about 30 ns more per copy, found in a profile.
#[test]
fn the_fan_outs_loop_is_inlined_by_the_verifier() {
    elec_testbed::require_root!();
    let tb = small_testbed(1, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let id = broadcaster
        .program_id()
        .expect("kernel mode")
        .expect("the program's id");
    let xlated = run(
        &tb,
        "bpftool",
        &["prog", "dump", "xlated", "id", &id.to_string()],
    );
    assert!(
        xlated.contains("_clone_to"),
        "the loop body is called directly:\n{xlated}"
    );
    let helper_calls: Vec<&str> = xlated
        .lines()
        .filter(|line| line.contains("call bpf_loop"))
        .collect();
    assert!(
        helper_calls.is_empty(),
        "bpf_loop is not inlined: {helper_calls:?}"
    );
}
