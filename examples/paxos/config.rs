//! The cluster configuration, in Electrode's format:
//!
//! ```text
//! f 1
//! replica 10.77.1.1:7000
//! replica 10.77.2.1:7000
//! replica 10.77.3.1:7000
//! ```
//!
//! A line `f <failures tolerated>`, then one line `replica <host>:<port>`
//! per replica, 2f + 1 of them; replica i is the i-th line. Blank lines and
//! lines starting with `#` are ignored.
//!
//! Hosts may be names. They are resolved once, when a replica or a client
//! starts ([`Layout::resolve`]), waiting up to a given time for names that
//! do not resolve yet (the pods of a Kubernetes StatefulSet get their DNS
//! records as they come up); a replica also resolves them again while it
//! runs, so that a peer that comes back with a new address is found
//! (see `shell.rs`). [`statefulset`] writes the configuration of a
//! StatefulSet from its pods' stable DNS names.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most failures a configuration may tolerate (replica ids are one byte).
pub const MAX_F: usize = 127;

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Failures tolerated.
    pub f: usize,
    /// Address of replica i, IPv4.
    pub replicas: Vec<SocketAddr>,
}

/// A configuration that cannot be used, with the line at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number, 0 for the file as a whole.
    pub line: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration as written: `f` and the replicas' `host:port`, checked
/// but not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Failures tolerated.
    pub f: usize,
    /// `host:port` of replica i, as written.
    pub replicas: Vec<String>,
    /// The line of each replica, for messages.
    lines: Vec<usize>,
}

impl Layout {
    /// Checks the text of a configuration file, without resolving names.
    pub fn parse(text: &str) -> Result<Layout, ConfigError> {
        let err = |line: usize, message: String| Err(ConfigError { line, message });
        let mut f = None;
        let mut replicas: Vec<String> = Vec::new();
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut words = content.split_whitespace();
            let directive = words.next().unwrap_or_default();
            let args: Vec<&str> = words.collect();
            match directive {
                "f" => {
                    if f.is_some() {
                        return err(line, "`f` given twice".into());
                    }
                    let [value] = args[..] else {
                        return err(
                            line,
                            format!("expected `f <failures tolerated>`, got `{content}`"),
                        );
                    };
                    let n: usize = match value.parse() {
                        Ok(n) => n,
                        Err(_) => {
                            return err(line, format!("`{value}` is not a number of failures"))
                        }
                    };
                    if !(1..=MAX_F).contains(&n) {
                        return err(
                            line,
                            format!("f must be between 1 and {MAX_F} (2f+1 replicas), got {n}"),
                        );
                    }
                    f = Some(n);
                }
                "replica" => {
                    if f.is_none() {
                        return err(
                            line,
                            "the first line must be `f <failures tolerated>`".into(),
                        );
                    }
                    let [address] = args[..] else {
                        return err(
                            line,
                            format!("expected `replica <host>:<port>`, got `{content}`"),
                        );
                    };
                    split(address).map_err(|message| ConfigError { line, message })?;
                    if let Some(first) = replicas.iter().position(|a| a == address) {
                        return err(
                            line,
                            format!("{address} is already replica {first}; every replica needs its own address"),
                        );
                    }
                    replicas.push(address.to_string());
                    lines.push(line);
                }
                other => {
                    return err(
                        line,
                        format!("unknown directive `{other}` (expected `f` or `replica`)"),
                    )
                }
            }
        }
        let Some(f) = f else {
            return err(0, "empty configuration: expected `f <failures tolerated>` and 2f+1 `replica <host>:<port>` lines".into());
        };
        if replicas.len() != 2 * f + 1 {
            return err(
                0,
                format!(
                    "f {f} needs {} replicas, the configuration lists {}",
                    2 * f + 1,
                    replicas.len()
                ),
            );
        }
        Ok(Layout { f, replicas, lines })
    }

    /// Resolves every replica's host to its IPv4 address. A name that does
    /// not resolve is tried again every second until `wait` has passed
    /// (zero: once).
    pub fn resolve(&self, wait: Duration) -> Result<Config, ConfigError> {
        let deadline = Instant::now() + wait;
        let mut replicas: Vec<SocketAddr> = Vec::with_capacity(self.replicas.len());
        for (address, &line) in self.replicas.iter().zip(&self.lines) {
            let addr = loop {
                match resolve(address) {
                    Ok(addr) => break addr,
                    Err(message) if Instant::now() >= deadline => {
                        return Err(ConfigError { line, message })
                    }
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            };
            if let Some(first) = replicas.iter().position(|a| *a == addr) {
                return Err(ConfigError {
                    line,
                    message: format!(
                        "{address} is {addr}, as is replica {first}; every replica needs its own address"
                    ),
                });
            }
            replicas.push(addr);
        }
        Ok(Config {
            f: self.f,
            replicas,
        })
    }
}

impl Config {
    /// Parses the text of a configuration file and resolves its names now.
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Layout::parse(text)?.resolve(Duration::ZERO)
    }

    /// Reads and parses a configuration file, waiting up to `wait` for
    /// names that do not resolve yet.
    pub fn load(path: &std::path::Path, wait: Duration) -> Result<Config, String> {
        let layout = Layout::load(path)?;
        layout
            .resolve(wait)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Number of replicas, 2f + 1.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// The configuration file text for these settings.
    pub fn to_text(&self) -> String {
        let mut text = format!("f {}\n", self.f);
        for r in &self.replicas {
            text.push_str(&format!("replica {r}\n"));
        }
        text
    }
}

impl Layout {
    /// Reads and checks a configuration file, without resolving names.
    pub fn load(path: &std::path::Path) -> Result<Layout, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Layout::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The configuration of the `replicas` pods of StatefulSet `name` behind
/// the headless Service `service`: pod i is replica i, named
/// `<name>-<i>.<service>`, which the pods' DNS search list completes in
/// their own namespace; with `namespace` (and the cluster's `domain`), the
/// full name `<name>-<i>.<service>.<namespace>.svc.<domain>`, for use from
/// elsewhere.
pub fn statefulset(
    name: &str,
    service: &str,
    namespace: Option<&str>,
    domain: &str,
    replicas: usize,
    port: u16,
) -> Result<String, String> {
    if replicas < 3 || replicas % 2 == 0 || replicas > 2 * MAX_F + 1 {
        return Err(format!(
            "a cluster needs an odd number of replicas, 3 to {} (2f+1), not {replicas}",
            2 * MAX_F + 1
        ));
    }
    let suffix = match namespace {
        Some(namespace) => format!(".{namespace}.svc.{domain}"),
        None => String::new(),
    };
    let mut text = format!(
        "# StatefulSet {name}, Service {service}: replica i is pod {name}-i\nf {}\n",
        replicas / 2
    );
    for i in 0..replicas {
        text.push_str(&format!("replica {name}-{i}.{service}{suffix}:{port}\n"));
    }
    Ok(text)
}

/// `host` and `port` of `host:port`, checked.
fn split(address: &str) -> Result<(&str, u16), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` has no port: expected <host>:<port>"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("`{port}` is not a port number (1-65535)")),
    };
    // `[::1]:7000`: brackets around an IPv6 literal.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    Ok((host, port))
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    let (host, port) = split(address)?;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    let v4 = addrs.into_iter().find(SocketAddr::is_ipv4);
    match v4 {
        Some(addr) if !addr.ip().is_unspecified() => Ok(addr),
        Some(_) => Err(format!(
            "`{host}` is the unspecified address, give the replica's own address"
        )),
        None => Err(format!(
            "`{host}` has no IPv4 address (the broadcast is IPv4 only)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn electrode_format_parses() {
        let text =
            "f 1\nreplica 10.0.0.1:7000\nreplica 10.0.0.2:7000\n\n# spare\nreplica 10.0.0.3:7001\n";
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.f, 1);
        assert_eq!(cfg.n(), 3);
        assert_eq!(cfg.replicas[2], "10.0.0.3:7001".parse().unwrap());
        assert_eq!(Config::parse(&cfg.to_text()).unwrap(), cfg);
    }

    #[test]
    fn hostnames_resolve_to_ipv4() {
        let cfg =
            Config::parse("f 1\nreplica localhost:1\nreplica localhost:2\nreplica localhost:3\n")
                .unwrap();
        assert!(cfg.replicas.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn a_statefulset_renders_its_pods_dns_names() {
        let text = statefulset("paxos", "paxos", Some("bench"), "cluster.local", 5, 7000).unwrap();
        let layout = Layout::parse(&text).unwrap();
        assert_eq!(layout.f, 2);
        assert_eq!(
            layout.replicas,
            (0..5)
                .map(|i| format!("paxos-{i}.paxos.bench.svc.cluster.local:7000"))
                .collect::<Vec<_>>()
        );
        for n in [0, 1, 2, 4, 257] {
            assert!(
                statefulset("p", "p", None, "cluster.local", n, 1).is_err(),
                "{n}"
            );
        }
        let short = statefulset("paxos", "paxos-hl", None, "cluster.local", 3, 7000).unwrap();
        assert_eq!(
            Layout::parse(&short).unwrap().replicas,
            [
                "paxos-0.paxos-hl:7000",
                "paxos-1.paxos-hl:7000",
                "paxos-2.paxos-hl:7000"
            ]
        );
    }

    #[test]
    fn names_that_do_not_resolve_are_waited_for_then_named() {
        let text =
            "f 1\nreplica localhost:1\nreplica no-such-host.invalid:2\nreplica localhost:3\n";
        let layout = Layout::parse(text).unwrap();
        let started = Instant::now();
        let err = layout.resolve(Duration::from_millis(1500)).unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "gave up early"
        );
        assert_eq!(err.line, 3, "{err}");
        assert!(err.message.contains("no-such-host.invalid"), "{err}");
    }

    #[test]
    fn two_names_for_one_address_are_refused_once_resolved() {
        let text = "f 1\nreplica localhost:5\nreplica 127.0.0.1:5\nreplica localhost:6\n";
        let err = Layout::parse(text)
            .unwrap()
            .resolve(Duration::ZERO)
            .unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert!(err.message.contains("as is replica 0"), "{err}");
    }

    fn error(text: &str) -> ConfigError {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "empty configuration"),
            ("replica 1.2.3.4:5\n", 1, "first line must be `f"),
            ("f x\n", 1, "not a number"),
            ("f 0\n", 1, "between 1 and"),
            ("f 1 2\n", 1, "expected `f <failures tolerated>`"),
            ("f 1\nf 1\n", 2, "given twice"),
            ("f 1\nreplica 1.2.3.4\n", 2, "has no port"),
            ("f 1\nreplica 1.2.3.4:0\n", 2, "not a port number"),
            ("f 1\nreplica 1.2.3.4:99999\n", 2, "not a port number"),
            ("f 1\nreplica :5\n", 2, "has no host"),
            (
                "f 1\nreplica 0.0.0.0:5\nreplica 1.1.1.2:5\nreplica 1.1.1.3:5\n",
                2,
                "unspecified",
            ),
            (
                "f 1\nreplica [::1]:5\nreplica 1.1.1.2:5\nreplica 1.1.1.3:5\n",
                2,
                "no IPv4 address",
            ),
            (
                "f 1\nreplica 1.1.1.1:5\nreplica 1.1.1.1:5\n",
                3,
                "already replica 0",
            ),
            (
                "f 1\nreplica 1.1.1.1:5 extra\n",
                2,
                "expected `replica <host>:<port>`",
            ),
            ("f 1\nnode 1.1.1.1:5\n", 2, "unknown directive `node`"),
            (
                "f 1\nreplica 1.1.1.1:5\nreplica 1.1.1.2:5\n",
                0,
                "needs 3 replicas, the configuration lists 2",
            ),
            ("f 1\nreplica 1.1.1.1:5\nf 2\n", 3, "given twice"),
        ];
        for (text, line, needle) in cases {
            let e = error(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }
}
