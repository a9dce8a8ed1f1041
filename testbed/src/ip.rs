//! Running iproute2 (`ip`, `bridge`) in batch mode with helpful errors.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::error::context;

/// Runs `PROGRAM [-force] -batch -` in the caller's network namespace with
/// `lines` on stdin. `what` names the context for error messages.
pub(crate) fn batch(program: &str, lines: &[String], force: bool, what: &str) -> io::Result<()> {
    let mut cmd = Command::new(program);
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    let input = lines.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        // A failing batch may exit before reading everything: ignore EPIPE.
        match stdin.write_all(input.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e),
        }
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(batch_error(program, lines, &stderr, what))
}

/// Runs one command (not batched), returning an error with its stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(&program, e))?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(io::Error::other(format!(
        "{what}: `{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn spawn_error(program: &str, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("the `{program}` command was not found: install iproute2 (e.g. `apt-get install iproute2`)"),
        )
    } else {
        context(e, format_args!("cannot run `{program}`"))
    }
}

fn batch_error(program: &str, lines: &[String], stderr: &str, what: &str) -> io::Error {
    // iproute2 reports "Command failed -:N" with the 1-based input line.
    let failed_line = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .and_then(|n| lines.get(n.wrapping_sub(1)));
    let cmd = match failed_line {
        Some(l) => format!("`{program} {l}`"),
        None => format!("`{program} -batch -`"),
    };
    let mut msg = format!("{what}: {cmd} failed: {stderr}");
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("unknown device type") || lower.contains("not supported") {
        msg.push_str(
            " (the kernel lacks veth or bridge support: load the modules with `modprobe veth bridge`)",
        );
    } else if lower.contains("operation not permitted") || lower.contains("permission denied") {
        msg.push_str(
            " (testbed needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces)",
        );
    }
    let kind = if lower.contains("operation not permitted") || lower.contains("permission denied") {
        io::ErrorKind::PermissionDenied
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_errors_name_the_failing_line() {
        let lines = vec![
            "netns add a".to_string(),
            "link add x type veth".to_string(),
        ];
        let e = batch_error(
            "ip",
            &lines,
            "Error: Unknown device type.\nCommand failed -:2",
            "creating",
        );
        let m = e.to_string();
        assert!(m.contains("`ip link add x type veth` failed"), "{m}");
        assert!(m.contains("modprobe veth bridge"), "{m}");
        let e = batch_error(
            "ip",
            &lines,
            "mount failed: Operation not permitted",
            "creating",
        );
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("CAP_SYS_ADMIN and CAP_NET_ADMIN"));
        let e = spawn_error("ip", io::Error::from(io::ErrorKind::NotFound));
        assert!(e.to_string().contains("install iproute2"));
    }
}
