//! Small helpers for programs that report on testbed runs (benches and
//! the benchmark matrix).

/// Packets each CPU's receive backlog dropped so far (second column of
/// `/proc/net/softnet_stat`), to tell an overflowing backlog apart from
/// other losses when a run loses packets.
pub fn backlog_drops() -> Vec<u64> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .collect()
}

/// Says which CPUs' receive backlogs dropped packets since `before` (a
/// [`backlog_drops`] reading).
pub fn backlog_note(before: &[u64]) -> String {
    let grown: Vec<String> = backlog_drops()
        .iter()
        .zip(before)
        .enumerate()
        .filter(|(_, (now, then))| now > then)
        .map(|(cpu, (now, then))| format!("CPU {cpu}: +{}", now - then))
        .collect();
    if grown.is_empty() {
        "no receive-backlog drops on any CPU since the start".into()
    } else {
        format!(
            "receive-backlog drops since the start: {} (the backlogs are shared by every \
             network namespace: other traffic on the machine counts too)",
            grown.join(", ")
        )
    }
}
