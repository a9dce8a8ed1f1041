//! Cleanup: leftovers, stale namespaces of dead processes, signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use elec_testbed::{leftover_namespaces, Testbed, TestbedConfig, NETNS_RUN_DIR};

fn exists(ns: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(ns).exists()
}

#[test]
fn no_leftovers_and_stale_namespaces_are_removed() {
    elec_testbed::require_root!();
    // A namespace that looks like it was left behind by a killed run.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{dead_pid}")).exists());
    let stale = format!("ebtb-{dead_pid}-0-s");
    let st = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(exists(&stale));

    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        ..Default::default()
    })
    .unwrap();
    assert!(!exists(&stale), "stale namespace {stale} was not removed");
    let mut mine = tb.namespaces();
    mine.sort();
    assert_eq!(leftover_namespaces(), mine);
    let tb2 = Testbed::new(TestbedConfig {
        receivers: 1,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(leftover_namespaces().len(), 4 + 3);
    drop(tb);
    drop(tb2);
    assert_eq!(leftover_namespaces(), Vec::<String>::new());

    // Errors during construction clean up as well.
    let err = Testbed::new(TestbedConfig {
        receivers: 2,
        mtu: Some(70_000),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(leftover_namespaces(), Vec::<String>::new());
}

/// Child half of `signals_clean_up`: only acts when started by it.
#[test]
fn signal_child() {
    if std::env::var_os("EBTB_SIGNAL_CHILD").is_none() {
        return;
    }
    // Started by `signals_clean_up`, which checked for root.
    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        ..Default::default()
    })
    .unwrap();
    println!("READY {}", tb.namespaces().join(" "));
    std::thread::sleep(Duration::from_secs(30));
    panic!("no signal arrived");
}

#[test]
fn signals_clean_up() {
    elec_testbed::require_root!();
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["signal_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("EBTB_SIGNAL_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut names = Vec::new();
        for line in out.lines() {
            let line = line.unwrap();
            // libtest prints "test signal_child ... " before the line.
            if let Some((_, rest)) = line.split_once("READY ") {
                names = rest.split(' ').map(str::to_string).collect::<Vec<_>>();
                break;
            }
        }
        assert_eq!(names.len(), 4, "child did not report its testbed");
        assert!(names.iter().all(|n| exists(n)));
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {sig}");
        for n in &names {
            assert!(!exists(n), "{n} survived signal {sig}");
        }
    }
}
