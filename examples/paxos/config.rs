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

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

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

impl Config {
    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let err = |line: usize, message: String| Err(ConfigError { line, message });
        let mut f = None;
        let mut replicas: Vec<SocketAddr> = Vec::new();
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
                    let addr = resolve(address).map_err(|message| ConfigError { line, message })?;
                    if let Some(first) = replicas.iter().position(|a| *a == addr) {
                        return err(
                            line,
                            format!("{addr} is already replica {first}; every replica needs its own address"),
                        );
                    }
                    replicas.push(addr);
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
        Ok(Config { f, replicas })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
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

fn resolve(address: &str) -> Result<SocketAddr, String> {
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
            ("f 1\nreplica 0.0.0.0:5\n", 2, "unspecified"),
            ("f 1\nreplica [::1]:5\n", 2, "no IPv4 address"),
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
