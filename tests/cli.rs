//! The `broadcast` example reports what it did in one JSON line, also when a
//! call fails, and can run across a fault with `--keep-going`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::*;
use elec_testbed::{Counters, Testbed, TestbedConfig};
use serde_json::Value;

/// The `broadcast` example, as `cargo build --examples` leaves it in
/// `target/<profile>/examples/` (scripts/test.sh builds the examples before
/// the tests; `cargo test` alone builds them as test harnesses only).
fn example() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let path = me
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("broadcast"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example broadcast` (scripts/test.sh \
         builds the examples before running the tests)",
        path.display()
    );
    path
}

/// Runs the example in the sender namespace; returns its exit status and
/// its JSON line.
fn run(tb: &Testbed, args: &[String]) -> (Output, Value) {
    let mut cmd = Command::new(example());
    cmd.args(args);
    let out = tb.run_in_sender(&mut cmd).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no JSON line; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (out, json)
}

fn args(
    tb: &Testbed,
    mode: &str,
    count: u64,
    size: usize,
    extra: &[&str],
    dests: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--iface",
        "eth0",
        "--bind",
        &format!("{}:5000", tb.sender_addr()),
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
        "--mode",
        mode,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(dests.iter().cloned());
    args
}

fn u(json: &Value, field: &str) -> u64 {
    json[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {json}"))
}

fn per_destination(json: &Value) -> Vec<u64> {
    json["failed_per_destination"]
        .as_array()
        .unwrap_or_else(|| panic!("no failed_per_destination in {json}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn the_json_line_counts_failures_per_destination_in_every_mode() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 3,
        ..Default::default()
    });
    let reachable = tb.destinations(3, 7000);
    // The second destination has no route: every copy to it fails.
    let mut dests: Vec<String> = reachable.iter().map(|d| d.to_string()).collect();
    dests.insert(1, "192.0.2.1:7000".into());
    for mode in ["kernel", "sendmmsg", "sendto"] {
        let rx = tb.counting_receivers(&reachable, None).unwrap();
        let (out, json) = run(
            &tb,
            &args(&tb, mode, 20, 300, &["--pace-us", "200"], &dests),
        );
        assert!(out.status.success(), "{mode}: {json}");
        assert_eq!(json["mode"], mode);
        assert!(json.get("error").is_none(), "{json}");
        assert_eq!(u(&json, "broadcasts"), 20);
        assert_eq!(u(&json, "calls_failed"), 0);
        assert_eq!(u(&json, "copies_sent"), 60, "{json}");
        assert_eq!(u(&json, "copies_failed"), 20, "{json}");
        assert_eq!(per_destination(&json), [0, 20, 0, 0], "{mode}");
        rx.wait_for_total(60, WAIT);
        let counts = rx.stop();
        assert_eq!(counts.counts, [20, 20, 20], "{mode}");
        assert_eq!(counts.total_mismatches(), 0);
    }
}

/// Lowers the sender's MTU below a 1400-byte payload once `rx` has counted
/// `after` datagrams (so that the run is well under way whatever the load),
/// and raises it again after `for_how_long` (if given).
fn mtu_dip(tb: &Testbed, rx: &Counters, after: u64, for_how_long: Option<Duration>) {
    let ip = |mtu: &str| {
        let ok = Command::new("ip")
            .args(["-n", tb.sender_ns(), "link", "set", "eth0", "mtu", mtu])
            .status()
            .unwrap()
            .success();
        assert!(ok, "setting the MTU to {mtu}");
    };
    assert!(
        rx.wait_for_total(after, WAIT) >= after,
        "the run never got going"
    );
    ip("1000");
    if let Some(d) = for_how_long {
        thread::sleep(d);
        ip("1500");
    }
}

#[test]
fn a_failed_call_ends_the_run_with_the_json_line_and_an_error() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    let reachable = tb.destinations(2, 7000);
    let dests: Vec<String> = reachable.iter().map(|d| d.to_string()).collect();
    let rx = tb.counting_receivers(&reachable, None).unwrap();
    let (out, json) = thread::scope(|scope| {
        scope.spawn(|| mtu_dip(&tb, &rx, 100, None));
        run(
            &tb,
            &args(&tb, "kernel", 2000, 1400, &["--pace-us", "500"], &dests),
        )
    });
    assert!(!out.status.success(), "{json}");
    let error = json["error"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(error.contains("MTU 1000"), "{error}");
    let broadcasts = u(&json, "broadcasts");
    assert!(broadcasts > 1 && broadcasts < 2000, "{json}");
    assert_eq!(u(&json, "calls_failed"), 1);
    assert_eq!(u(&json, "copies_sent"), 2 * (broadcasts - 1), "{json}");
    assert_eq!(per_destination(&json), [1, 1]);
    rx.wait_for_total(2 * (broadcasts - 1), WAIT);
    assert_eq!(rx.stop().total(), 2 * (broadcasts - 1));
}

#[test]
fn keep_going_measures_a_run_across_a_fault_end_to_end() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    let reachable = tb.destinations(2, 7000);
    let dests: Vec<String> = reachable.iter().map(|d| d.to_string()).collect();
    for mode in ["kernel", "sendmmsg"] {
        let rx = tb.counting_receivers(&reachable, None).unwrap();
        let (out, json) = thread::scope(|scope| {
            scope.spawn(|| mtu_dip(&tb, &rx, 100, Some(Duration::from_millis(100))));
            run(
                &tb,
                &args(
                    &tb,
                    mode,
                    1000,
                    1400,
                    &["--pace-us", "500", "--keep-going"],
                    &dests,
                ),
            )
        });
        assert!(out.status.success(), "{json}");
        assert!(json.get("error").is_none(), "{json}");
        assert_eq!(u(&json, "broadcasts"), 1000);
        let failed = u(&json, "calls_failed");
        assert!(failed > 0 && failed < 1000, "{mode}: {json}");
        // A call can also lose one copy and send the other, when the MTU
        // changes between its two sends.
        let sent = u(&json, "copies_sent");
        let per = per_destination(&json);
        assert_eq!(sent + u(&json, "copies_failed"), 2000, "{json}");
        assert_eq!(per.iter().sum::<u64>(), u(&json, "copies_failed"), "{json}");
        assert!(
            per.iter().all(|&f| f >= failed && f <= failed + 2),
            "{json}"
        );
        rx.wait_for_total(sent, WAIT);
        let counts = rx.stop();
        assert_eq!(counts.total(), sent, "{mode}");
        assert_eq!(counts.total_mismatches(), 0);
        eprintln!("{mode}: {failed} of 1000 calls failed while the MTU was 1000");
    }
}

#[test]
fn user_space_mode_on_another_interface_than_the_route_refuses() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    let reachable = tb.destinations(2, 7000);
    let dests: Vec<String> = reachable.iter().map(|d| d.to_string()).collect();
    let rx = tb.counting_receivers(&reachable, None).unwrap();
    let mut a = args(&tb, "sendmmsg", 5, 1400, &[], &dests);
    a[1] = "lo".into();
    let (out, json) = run(&tb, &a);
    assert!(!out.status.success(), "{json}");
    let error = json["error"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(
        error.contains("routed through eth0, not through lo"),
        "{error}"
    );
    assert_eq!(u(&json, "copies_sent"), 0);
    thread::sleep(SETTLE);
    assert_eq!(rx.stop().total(), 0);
}

#[test]
fn the_cli_takes_ipv6_bind_addresses_and_destinations() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 3,
        addrs_per_receiver: 2,
        ipv6: true,
        ..Default::default()
    });
    let dests = tb.destinations6(6, 7100);
    let listed: Vec<String> = dests.iter().map(|d| d.to_string()).collect();
    assert!(listed[0].starts_with("[fd77::"), "{listed:?}");
    for mode in ["kernel", "sendmmsg", "sendto"] {
        let rx = tb.counting_receivers(&dests, None).unwrap();
        let mut cli = args(&tb, mode, 30, 1452, &["--pace-us", "200"], &listed);
        cli[3] = format!("[{}]:5000", elec_testbed::SENDER_ADDR6);
        let (out, json) = run(&tb, &cli);
        assert!(out.status.success(), "{mode}: {json}");
        assert_eq!(json["mode"], mode);
        assert_eq!(u(&json, "copies_sent"), 180, "{json}");
        assert_eq!(u(&json, "copies_failed"), 0, "{json}");
        assert_eq!(per_destination(&json), [0; 6], "{mode}");
        rx.wait_for_total(180, WAIT);
        let counts = rx.stop();
        // Every byte of every copy matched the pattern, 30 per destination.
        assert_eq!(counts.counts, [30; 6], "{mode}");
        assert_eq!(counts.total_mismatches(), 0, "{mode}");
    }
}
