//! Small helpers for programs that report on testbed runs (benches,
//! the benchmark matrix, the demo).

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

/// Reads a numeric field of a one-line JSON object, such as the line the
/// `broadcast` example prints.
pub fn json_u64(json: &str, name: &str) -> Result<u64, String> {
    let key = format!("\"{name}\":");
    json.split(&key)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("no numeric {name} in {json:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_read_by_name() {
        let line = r#"{"mode":"kernel","broadcasts":10,"cpu_sys_us":345}"#;
        assert_eq!(json_u64(line, "cpu_sys_us"), Ok(345));
        assert_eq!(json_u64(line, "broadcasts"), Ok(10));
        assert!(json_u64(line, "wall_us").is_err());
        assert!(json_u64(line, "mode").is_err());
    }
}
