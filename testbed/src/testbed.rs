//! The testbed: a sender namespace and R receiver namespaces joined by a
//! bridge in a hub namespace.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cleanup::{self, PREFIX};
use crate::error::context;
use crate::ethtool::{format_mac, set_tx_csum_here};
use crate::ip;
use crate::ns::{for_each_namespace, in_namespace, output_in, spawn_in, spawn_in_namespace};
use crate::privileges::check_privileges;
use crate::recv::{Counters, Group, Receivers};
use crate::snmp::{read_snmp6_here, read_snmp_here};
use crate::sock::{bind_udp6, ifindex_here};
#[cfg(doc)]
use crate::Received;

/// Name of the sender's interface (and of every receiver's interface).
pub const IFACE: &str = "eth0";
/// Name of the bridge in the hub namespace.
pub const BRIDGE: &str = "br0";
/// Name of the hub port facing the sender.
pub const HUB_PORT_SENDER: &str = "s0";
/// Prefix length of the testbed subnet 10.77.0.0/16.
pub const PREFIX_LEN: u8 = 16;
/// The sender's address.
pub const SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Most receivers a testbed supports (receiver i uses 10.77.(1 + i).0/24).
pub const MAX_RECEIVERS: usize = 254;
/// Most addresses per receiver.
pub const MAX_ADDRS_PER_RECEIVER: usize = 254;

/// The sender's IPv6 address (unique-local, fd77::/64), with
/// [`TestbedConfig::ipv6`].
pub const SENDER_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// Prefix length of the IPv6 subnet fd77::/64.
pub const PREFIX_LEN6: u8 = 64;
/// The sender's link-local address on `eth0`, fe80::77:1, with
/// [`TestbedConfig::ipv6`] (receiver i has fe80::77:(100 + i), in hex:
/// [`Testbed::receiver_link_local`]).
pub const SENDER_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x77, 1);

/// The sender's second interface, with [`TestbedConfig::second_link`].
pub const SECOND_IFACE: &str = "eth1";
/// The hub port facing the sender's second interface.
pub const HUB_PORT_SECOND: &str = "s1";
/// The sender's address on its second interface (10.78.0.0/16).
pub const SECOND_SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

const SENDER_MAC: [u8; 6] = [0x02, 0xeb, 0x00, 0x00, 0x00, 0x01];
const SECOND_SENDER_MAC: [u8; 6] = [0x02, 0xeb, 0x00, 0x00, 0x00, 0x02];
const HUB_SECOND_PORT_MAC: [u8; 6] = [0x02, 0xeb, 0x01, 0x00, 0x00, 0x02];
const HUB_SENDER_PORT_MAC: [u8; 6] = [0x02, 0xeb, 0x01, 0x00, 0x00, 0x01];
const BRIDGE_MAC: [u8; 6] = [0x02, 0xeb, 0x02, 0x00, 0x00, 0x01];

fn receiver_mac_of(i: usize) -> [u8; 6] {
    [0x02, 0xeb, 0x00, 0x01, (i >> 8) as u8, i as u8]
}

fn hub_receiver_port_mac(i: usize) -> [u8; 6] {
    [0x02, 0xeb, 0x01, 0x01, (i >> 8) as u8, i as u8]
}

/// Address `k` of receiver `i`: 10.77.(1 + i).(1 + k).
fn receiver_addr(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (1 + i) as u8, (1 + k) as u8)
}

/// IPv6 address `k` of receiver `i`: fd77::(1 + i):(1 + k).
fn receiver_addr6(i: usize, k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, (1 + i) as u16, (1 + k) as u16)
}

/// The link-local address of receiver `i`: fe80::77:(100 + i) (hex).
fn receiver_link_local_of(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x77, 0x100 + i as u16)
}

/// Address `k` of receiver `i` on the second subnet: 10.78.(1 + i).(1 + k).
fn second_receiver_addr(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, (1 + i) as u8, (1 + k) as u8)
}

/// Configuration of a [`Testbed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestbedConfig {
    /// Number of receiver namespaces (1..=254). Default 8.
    pub receivers: usize,
    /// Addresses per receiver (1..=254): receiver i gets
    /// 10.77.(1 + i).(1 + k)/16 for k in 0..addrs_per_receiver. Default 1.
    pub addrs_per_receiver: usize,
    /// Leave transmit checksum offload on on the sender's `eth0` (default
    /// true). When false it is turned off, so the sender's stack computes
    /// full UDP checksums in software.
    pub sender_tx_checksum_offload: bool,
    /// Pre-populate the sender's ARP table with permanent entries for every
    /// receiver address (default true). When false the sender resolves ARP.
    pub neighbours_prefilled: bool,
    /// Steer receive processing of the hub port facing the sender to this CPU
    /// (RPS), for benchmarks. Default None.
    pub rps_cpu: Option<usize>,
    /// MTU of every link (None: the default 1500).
    pub mtu: Option<u32>,
    /// A second sender interface, `eth1` (10.78.0.1/16), on the same bridge:
    /// every receiver also has its addresses' twins in 10.78.0.0/16
    /// ([`Testbed::second_receiver_addrs`]), reached through `eth1` (the
    /// sender's neighbour entries pre-filled there too). Default false.
    pub second_link: bool,
    /// IPv6 beside IPv4 on the sender's `eth0` and the receivers: the
    /// sender has fd77::1/64 ([`SENDER_ADDR6`]), receiver i the twins
    /// fd77::(1 + i):(1 + k) of its addresses
    /// ([`Testbed::receiver_addrs6`]); on the sender↔receiver link the
    /// sender's `eth0` has the link-local fe80::77:1 ([`SENDER_LINK_LOCAL`])
    /// and receiver i's `eth0` fe80::77:(100 + i), in hex
    /// ([`Testbed::receiver_link_local`]), set explicitly instead of the
    /// kernel's EUI-64 ones (`addrgenmode none`); the sender's neighbour
    /// entries are pre-filled for all of them as for IPv4 (else NDP resolves
    /// them). Duplicate address detection is turned off explicitly
    /// (addresses are added `nodad`, and `accept_dad` is 0), so no address
    /// is ever tentative; router solicitations too. The hub stays a plain
    /// IPv4-less, IPv6-less switch. Default false: IPv6 is off everywhere,
    /// which keeps the links free of DAD, router solicitations and MLD.
    pub ipv6: bool,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            receivers: 8,
            addrs_per_receiver: 1,
            sender_tx_checksum_offload: true,
            neighbours_prefilled: true,
            rps_cpu: None,
            mtu: None,
            second_link: false,
            ipv6: false,
        }
    }
}

impl TestbedConfig {
    fn validate(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if !(1..=MAX_RECEIVERS).contains(&self.receivers) {
            return bad(format!(
                "testbed receivers must be in 1..={MAX_RECEIVERS}, got {}",
                self.receivers
            ));
        }
        if !(1..=MAX_ADDRS_PER_RECEIVER).contains(&self.addrs_per_receiver) {
            return bad(format!(
                "testbed addrs_per_receiver must be in 1..={MAX_ADDRS_PER_RECEIVER}, got {}",
                self.addrs_per_receiver
            ));
        }
        if let Some(m) = self.mtu {
            if !(68..=65535).contains(&m) {
                return bad(format!("testbed mtu must be in 68..=65535, got {m}"));
            }
        }
        Ok(())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// Serializes the first `ip -batch` (namespace creation) within the process:
/// concurrent first-time `ip netns add` calls race on mounting /run/netns.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// CPU mask for /sys/class/net/*/queues/rx-*/rps_cpus: 32-bit hex groups
/// separated by commas, most significant first.
fn rps_mask(cpu: usize) -> String {
    let groups = cpu / 32 + 1;
    (0..groups)
        .rev()
        .map(|g| {
            let v: u32 = if g == cpu / 32 { 1 << (cpu % 32) } else { 0 };
            format!("{v:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes a sysctl of the calling thread's network namespace, ignoring
/// sysctls that do not exist (e.g. IPv6 disabled at boot).
fn write_sysctl_here(path: &str, value: &str) -> io::Result<()> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(context(e, format_args!("cannot write {value} to {path}"))),
    }
}

/// What to configure inside one namespace.
struct NsSetup {
    ns: String,
    /// Keep IPv6 on (without DAD and router solicitations), else off.
    ipv6: bool,
    tx_csum_off: Vec<String>,
    ip_lines: Vec<String>,
    bridge_lines: Vec<String>,
    rps: Option<(String, String)>,
}

impl NsSetup {
    fn new(ns: &str) -> NsSetup {
        NsSetup {
            ns: ns.to_string(),
            ipv6: false,
            tx_csum_off: Vec::new(),
            ip_lines: vec!["link set dev lo up".into()],
            bridge_lines: Vec::new(),
            rps: None,
        }
    }

    /// Runs inside the namespace.
    fn apply(self) -> io::Result<()> {
        if self.ipv6 {
            // IPv6 on, without duplicate address detection (every address
            // usable at once, never tentative) and router solicitations:
            // both `all` and each interface's own setting count.
            let mut confs = vec!["all".to_string(), "default".to_string()];
            confs.extend(
                std::fs::read_dir("/proc/sys/net/ipv6/conf")
                    .map_err(|e| context(e, format_args!("listing IPv6 interfaces")))?
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned()),
            );
            for conf in confs {
                for (setting, value) in [
                    ("accept_dad", "0"),
                    ("router_solicitations", "0"),
                    ("accept_ra", "0"),
                    ("disable_ipv6", "0"),
                ] {
                    write_sysctl_here(&format!("/proc/sys/net/ipv6/conf/{conf}/{setting}"), value)?;
                }
            }
        } else {
            // No IPv6 in the testbed: keeps the links free of router
            // solicitations, DAD and MLD noise.
            for p in [
                "/proc/sys/net/ipv6/conf/all/disable_ipv6",
                "/proc/sys/net/ipv6/conf/default/disable_ipv6",
            ] {
                write_sysctl_here(p, "1")?;
            }
        }
        // The hub is a switch: where br_netfilter is loaded (on the host,
        // by a container runtime, say) bridged frames would otherwise go
        // through the iptables hooks too, which costs every frame in the
        // softirq of whichever CPU sends it. nftables' bridge family (the
        // loss rules) does not need it.
        for p in [
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
            "/proc/sys/net/bridge/bridge-nf-call-arptables",
        ] {
            write_sysctl_here(p, "0")?;
        }
        for iface in &self.tx_csum_off {
            set_tx_csum_here(iface, false).map_err(|e| {
                context(
                    e,
                    format_args!("turning off tx checksum offload on {iface} in {}", self.ns),
                )
            })?;
        }
        let what = format!("configuring namespace {}", self.ns);
        ip::batch("ip", &self.ip_lines, false, &what)?;
        if !self.bridge_lines.is_empty() {
            ip::batch("bridge", &self.bridge_lines, false, &what)?;
        }
        if let Some((port, mask)) = self.rps {
            // /sys shows the devices of the namespace that mounted it;
            // `ip netns exec` remounts it for its child.
            ip::run(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &self.ns,
                    "sh",
                    "-c",
                    &format!("echo {mask} > /sys/class/net/{port}/queues/rx-0/rps_cpus"),
                ]),
                &what,
            )?;
        }
        Ok(())
    }
}

/// A sender namespace and R receiver namespaces, each with a veth `eth0`
/// whose peer is a port of the bridge `br0` in a hub namespace. Everything is
/// deleted on drop (also during a panic), and on SIGINT/SIGTERM/SIGHUP.
///
/// Addresses: the sender is 10.77.0.1/16, receiver i has
/// 10.77.(1 + i).(1 + k)/16. Hub ports: `s0` faces the sender, `r<i>` faces
/// receiver i; transmit checksum offload is off on every `r<i>`, so the
/// receivers' stacks verify UDP checksums.
#[derive(Debug)]
pub struct Testbed {
    id: u64,
    cfg: TestbedConfig,
    sender_ns: String,
    hub_ns: String,
    receiver_ns: Vec<String>,
    receiver_addrs: Vec<Vec<Ipv4Addr>>,
    second_addrs: Vec<Vec<Ipv4Addr>>,
    addrs6: Vec<Vec<Ipv6Addr>>,
    all_addrs: Vec<Ipv4Addr>,
    owner: HashMap<IpAddr, usize>,
}

impl Testbed {
    /// Creates the namespaces, links and addresses described by `cfg`.
    ///
    /// Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2 (`ip`,
    /// `bridge`). Also removes namespaces left behind by testbeds of processes
    /// that no longer exist, and installs (once per process, unless the
    /// program has its own) signal handlers that delete live testbeds on
    /// Ctrl-C and exit with status 130.
    pub fn new(cfg: TestbedConfig) -> io::Result<Testbed> {
        cfg.validate()?;
        check_privileges()?;
        cleanup::install_signal_handlers();
        cleanup::remove_stale();

        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{id}", std::process::id());
        let r = cfg.receivers;
        let receiver_addrs: Vec<Vec<Ipv4Addr>> = (0..r)
            .map(|i| {
                (0..cfg.addrs_per_receiver)
                    .map(|k| receiver_addr(i, k))
                    .collect()
            })
            .collect();
        let second_addrs: Vec<Vec<Ipv4Addr>> = (0..r)
            .map(|i| {
                (0..cfg.addrs_per_receiver)
                    .filter(|_| cfg.second_link)
                    .map(|k| second_receiver_addr(i, k))
                    .collect()
            })
            .collect();
        let addrs6: Vec<Vec<Ipv6Addr>> = (0..r)
            .map(|i| {
                (0..cfg.addrs_per_receiver)
                    .filter(|_| cfg.ipv6)
                    .map(|k| receiver_addr6(i, k))
                    .collect()
            })
            .collect();
        let all_addrs: Vec<Ipv4Addr> = receiver_addrs.iter().flatten().copied().collect();
        let mut owner: HashMap<IpAddr, usize> = receiver_addrs
            .iter()
            .chain(&second_addrs)
            .enumerate()
            .flat_map(|(i, a)| a.iter().map(move |x| (IpAddr::V4(*x), i % r)))
            .collect();
        for (i, addrs) in addrs6.iter().enumerate() {
            owner.extend(addrs.iter().map(|a| (IpAddr::V6(*a), i)));
        }
        if cfg.ipv6 {
            owner.extend((0..r).map(|i| (IpAddr::V6(receiver_link_local_of(i)), i)));
        }
        let tb = Testbed {
            id,
            sender_ns: format!("{base}-s"),
            hub_ns: format!("{base}-h"),
            receiver_ns: (0..r).map(|i| format!("{base}-r{i}")).collect(),
            cfg,
            receiver_addrs,
            second_addrs,
            addrs6,
            all_addrs,
            owner,
        };
        // Registered before anything exists, so that a signal during setup
        // and an error (through Drop) both clean up.
        cleanup::register(id, tb.namespaces());
        tb.create()?;
        Ok(tb)
    }

    fn create(&self) -> io::Result<()> {
        let mtu = self
            .cfg
            .mtu
            .map(|m| format!(" mtu {m}"))
            .unwrap_or_default();
        let (s, h) = (&self.sender_ns, &self.hub_ns);

        // Phase 1, from the caller's namespace: namespaces and links, each
        // link created directly in its target namespace.
        let mut lines: Vec<String> = self
            .namespaces()
            .iter()
            .map(|n| format!("netns add {n}"))
            .collect();
        lines.push(format!(
            "link add name {BRIDGE} netns {h} address {}{mtu} type bridge mcast_snooping 0",
            format_mac(&BRIDGE_MAC)
        ));
        lines.push(format!(
            "link add name {HUB_PORT_SENDER} netns {h} address {}{mtu} type veth peer name {IFACE} netns {s} address {}{mtu}",
            format_mac(&HUB_SENDER_PORT_MAC),
            format_mac(&SENDER_MAC)
        ));
        if self.cfg.second_link {
            lines.push(format!(
                "link add name {HUB_PORT_SECOND} netns {h} address {}{mtu} type veth peer name {SECOND_IFACE} netns {s} address {}{mtu}",
                format_mac(&HUB_SECOND_PORT_MAC),
                format_mac(&SECOND_SENDER_MAC)
            ));
        }
        for (i, rns) in self.receiver_ns.iter().enumerate() {
            lines.push(format!(
                "link add name r{i} netns {h} address {}{mtu} type veth peer name {IFACE} netns {rns} address {}{mtu}",
                format_mac(&hub_receiver_port_mac(i)),
                format_mac(&receiver_mac_of(i))
            ));
        }
        {
            let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip::batch("ip", &lines, false, "creating testbed namespaces and links")?;
        }

        // Phase 2, inside every namespace in parallel: sysctls, offloads,
        // addresses, links up, neighbours, bridge FDB.
        let mut setups = Vec::new();

        let mut hub = NsSetup::new(h);
        hub.ip_lines.push(format!("link set dev {BRIDGE} up"));
        hub.ip_lines
            .push(format!("link set dev {HUB_PORT_SENDER} master {BRIDGE} up"));
        if self.cfg.second_link {
            hub.ip_lines
                .push(format!("link set dev {HUB_PORT_SECOND} master {BRIDGE} up"));
        }
        for i in 0..self.num_receivers() {
            let port = self.receiver_port(i);
            hub.ip_lines
                .push(format!("link set dev {port} master {BRIDGE} up"));
            // Static FDB entries: the receivers never talk, so without them
            // the bridge would flood every frame to every receiver.
            hub.bridge_lines.push(format!(
                "fdb replace {} dev {port} master static",
                format_mac(&receiver_mac_of(i))
            ));
            hub.tx_csum_off.push(port);
        }
        hub.rps = self
            .cfg
            .rps_cpu
            .map(|c| (HUB_PORT_SENDER.to_string(), rps_mask(c)));
        setups.push(hub);

        let mut snd = NsSetup::new(s);
        snd.ip_lines
            .push(format!("addr add {SENDER_ADDR}/{PREFIX_LEN} dev {IFACE}"));
        if self.cfg.ipv6 {
            // Before the link is up: the kernel would otherwise add its own
            // EUI-64 link-local address (when the carrier comes, through
            // linkwatch: possibly after `new` returned).
            snd.ip_lines
                .push(format!("link set dev {IFACE} addrgenmode none"));
            snd.ip_lines
                .push(format!("addr add {SENDER_LINK_LOCAL}/64 dev {IFACE} nodad"));
        }
        snd.ip_lines.push(format!("link set dev {IFACE} up"));
        if self.cfg.neighbours_prefilled {
            for (i, addrs) in self.receiver_addrs.iter().enumerate() {
                for a in addrs {
                    snd.ip_lines.push(format!(
                        "neigh replace {a} lladdr {} dev {IFACE} nud permanent",
                        format_mac(&receiver_mac_of(i))
                    ));
                }
            }
        }
        if self.cfg.ipv6 {
            snd.ipv6 = true;
            snd.ip_lines.push(format!(
                "addr add {SENDER_ADDR6}/{PREFIX_LEN6} dev {IFACE} nodad"
            ));
            if self.cfg.neighbours_prefilled {
                for (i, addrs) in self.addrs6.iter().enumerate() {
                    let link_local = receiver_link_local_of(i);
                    for a in addrs.iter().chain([&link_local]) {
                        snd.ip_lines.push(format!(
                            "neigh replace {a} lladdr {} dev {IFACE} nud permanent",
                            format_mac(&receiver_mac_of(i))
                        ));
                    }
                }
            }
        }
        if self.cfg.second_link {
            snd.ip_lines.push(format!(
                "addr add {SECOND_SENDER_ADDR}/{PREFIX_LEN} dev {SECOND_IFACE}"
            ));
            snd.ip_lines.push(format!("link set dev {SECOND_IFACE} up"));
            if self.cfg.neighbours_prefilled {
                for (i, addrs) in self.second_addrs.iter().enumerate() {
                    for a in addrs {
                        snd.ip_lines.push(format!(
                            "neigh replace {a} lladdr {} dev {SECOND_IFACE} nud permanent",
                            format_mac(&receiver_mac_of(i))
                        ));
                    }
                }
            }
        }
        if !self.cfg.sender_tx_checksum_offload {
            snd.tx_csum_off.push(IFACE.to_string());
        }
        setups.push(snd);

        for (i, rns) in self.receiver_ns.iter().enumerate() {
            let mut rcv = NsSetup::new(rns);
            for a in self.receiver_addrs[i].iter().chain(&self.second_addrs[i]) {
                rcv.ip_lines
                    .push(format!("addr add {a}/{PREFIX_LEN} dev {IFACE}"));
            }
            if self.cfg.ipv6 {
                rcv.ipv6 = true;
                for a in &self.addrs6[i] {
                    rcv.ip_lines
                        .push(format!("addr add {a}/{PREFIX_LEN6} dev {IFACE} nodad"));
                }
                rcv.ip_lines
                    .push(format!("link set dev {IFACE} addrgenmode none"));
                rcv.ip_lines.push(format!(
                    "addr add {}/64 dev {IFACE} nodad",
                    receiver_link_local_of(i)
                ));
            }
            rcv.ip_lines.push(format!("link set dev {IFACE} up"));
            setups.push(rcv);
        }

        let mut threads = Vec::new();
        let mut first_err = None;
        for setup in setups {
            let ns = setup.ns.clone();
            match spawn_in_namespace(&ns, "ebtb-setup", move || setup.apply()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for t in threads {
            if let Err(e) = t.join() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The configuration this testbed was built from.
    pub fn config(&self) -> &TestbedConfig {
        &self.cfg
    }

    /// All namespaces of this testbed: sender, hub, receivers.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.sender_ns.clone(), self.hub_ns.clone()];
        v.extend(self.receiver_ns.iter().cloned());
        v
    }

    /// Name of the sender namespace (`ebtb-<pid>-<n>-s`).
    pub fn sender_ns(&self) -> &str {
        &self.sender_ns
    }

    /// Name of the hub namespace holding the bridge (`ebtb-<pid>-<n>-h`).
    pub fn hub_ns(&self) -> &str {
        &self.hub_ns
    }

    /// Name of receiver namespace `i` (`ebtb-<pid>-<n>-r<i>`).
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn receiver_ns(&self, i: usize) -> &str {
        &self.receiver_ns[i]
    }

    /// Number of receiver namespaces.
    pub fn num_receivers(&self) -> usize {
        self.receiver_ns.len()
    }

    /// The sender's interface: `eth0`.
    pub fn sender_iface(&self) -> &'static str {
        IFACE
    }

    /// The sender's address, 10.77.0.1.
    pub fn sender_addr(&self) -> Ipv4Addr {
        SENDER_ADDR
    }

    /// MAC address of the sender's `eth0`.
    pub fn sender_mac(&self) -> [u8; 6] {
        SENDER_MAC
    }

    /// Addresses of receiver `i` (the first is primary).
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn receiver_addrs(&self, i: usize) -> &[Ipv4Addr] {
        &self.receiver_addrs[i]
    }

    /// The IPv6 addresses of receiver `i` (the twins of its IPv4 ones);
    /// empty without [`TestbedConfig::ipv6`].
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn receiver_addrs6(&self, i: usize) -> &[Ipv6Addr] {
        &self.addrs6[i]
    }

    /// The addresses of receiver `i` in the second subnet (reached through
    /// the sender's `eth1`); empty without [`TestbedConfig::second_link`].
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn second_receiver_addrs(&self, i: usize) -> &[Ipv4Addr] {
        &self.second_addrs[i]
    }

    /// Every receiver address, receiver by receiver.
    pub fn all_receiver_addrs(&self) -> &[Ipv4Addr] {
        &self.all_addrs
    }

    /// The receiver that owns `addr` (an `Ipv4Addr`, `Ipv6Addr` or
    /// `IpAddr`), if any: one of its IPv4 addresses (also those of the second
    /// subnet), IPv6 addresses or, with [`TestbedConfig::ipv6`], its
    /// link-local address. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// belong to no receiver.
    pub fn receiver_of(&self, addr: impl Into<IpAddr>) -> Option<usize> {
        self.owner.get(&addr.into()).copied()
    }

    /// The link-local address of receiver `i`'s `eth0`, fe80::77:(100 + i)
    /// (hex: fe80::77:100 for receiver 0), on its link to the sender. A
    /// socket needs the scope id of the interface to reach it or bind it:
    /// [`Testbed::sender_ifindex`] on the sender,
    /// [`Testbed::receiver_ifindex`] in the receiver
    /// ([`Testbed::receivers`] looks that up itself).
    ///
    /// # Panics
    /// Without [`TestbedConfig::ipv6`], or when `i >= num_receivers()`.
    pub fn receiver_link_local(&self, i: usize) -> Ipv6Addr {
        self.require_ipv6("receiver_link_local");
        assert!(i < self.num_receivers(), "no receiver {i}");
        receiver_link_local_of(i)
    }

    /// The sender's link-local address on `eth0`, fe80::77:1
    /// ([`SENDER_LINK_LOCAL`]).
    ///
    /// # Panics
    /// Without [`TestbedConfig::ipv6`].
    pub fn sender_link_local(&self) -> Ipv6Addr {
        self.require_ipv6("sender_link_local");
        SENDER_LINK_LOCAL
    }

    /// The index of the sender's `eth0` inside the sender namespace: the
    /// scope id for link-local destinations (`SocketAddrV6::new(
    /// tb.receiver_link_local(i), port, 0, tb.sender_ifindex()?)`).
    pub fn sender_ifindex(&self) -> io::Result<u32> {
        in_namespace(&self.sender_ns, || ifindex_here(IFACE))?
    }

    /// The index of receiver `i`'s `eth0` inside its namespace: the scope id
    /// the receiver's sockets see on link-local sources.
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn receiver_ifindex(&self, i: usize) -> io::Result<u32> {
        in_namespace(&self.receiver_ns[i], || ifindex_here(IFACE))?
    }

    fn require_ipv6(&self, what: &str) {
        assert!(
            self.cfg.ipv6,
            "Testbed::{what} needs IPv6: this testbed was built without TestbedConfig::ipv6"
        );
    }

    /// MAC address of receiver `i`'s `eth0`.
    ///
    /// # Panics
    /// When `i >= num_receivers()`.
    pub fn receiver_mac(&self, i: usize) -> [u8; 6] {
        assert!(i < self.num_receivers(), "no receiver {i}");
        receiver_mac_of(i)
    }

    /// The hub port facing the sender: `s0`.
    pub fn hub_port_facing_sender(&self) -> &'static str {
        HUB_PORT_SENDER
    }

    /// The hub port facing receiver `i`: `r<i>`.
    pub fn receiver_port(&self, i: usize) -> String {
        format!("r{i}")
    }

    /// `n` distinct destinations spread round-robin first over the receivers,
    /// then over each receiver's addresses, then over ports `base_port`,
    /// `base_port + 1`, ...
    ///
    /// # Panics
    /// When the ports would run past 65535.
    pub fn destinations(&self, n: usize, base_port: u16) -> Vec<SocketAddrV4> {
        self.spread(&self.receiver_addrs, n, base_port)
            .map(|(a, port)| SocketAddrV4::new(a, port))
            .collect()
    }

    /// Like [`Testbed::destinations`], over the receivers' IPv6 addresses
    /// ([`Testbed::receiver_addrs6`]): the IPv6 twins of
    /// `destinations(n, base_port)`, in the same order.
    ///
    /// # Panics
    /// Without [`TestbedConfig::ipv6`] (rather than returning nothing), and
    /// when the ports would run past 65535.
    pub fn destinations6(&self, n: usize, base_port: u16) -> Vec<SocketAddrV6> {
        self.require_ipv6("destinations6");
        self.spread(&self.addrs6, n, base_port)
            .map(|(a, port)| SocketAddrV6::new(a, port, 0, 0))
            .collect()
    }

    /// `n` (address, port) pairs over `addrs` (per receiver, each with
    /// `addrs_per_receiver` addresses); see [`Testbed::destinations`].
    fn spread<'a, T: Copy>(
        &'a self,
        addrs: &'a [Vec<T>],
        n: usize,
        base_port: u16,
    ) -> impl Iterator<Item = (T, u16)> + 'a {
        let r = self.num_receivers();
        let slots = r * self.cfg.addrs_per_receiver;
        (0..n).map(move |j| {
            let slot = j % slots;
            let port = u16::try_from(j / slots)
                .ok()
                .and_then(|p| base_port.checked_add(p))
                .unwrap_or_else(|| {
                    panic!("{n} destinations from port {base_port} run past port 65535")
                });
            (addrs[slot % r][slot / r], port)
        })
    }

    fn groups(&self, dests: &[SocketAddr]) -> io::Result<Vec<Group>> {
        let mut seen = HashSet::new();
        let mut per: Vec<Vec<(usize, SocketAddr)>> = vec![Vec::new(); self.num_receivers()];
        for (k, d) in dests.iter().enumerate() {
            let Some(i) = self.receiver_of(d.ip()) else {
                let hint = match d {
                    SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
                        " (give an IPv4-mapped destination as its IPv4 address)"
                    }
                    SocketAddr::V6(_) if !self.cfg.ipv6 => {
                        " (this testbed has no IPv6: set TestbedConfig::ipv6)"
                    }
                    _ => "",
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "destination {d} is not an address of any receiver of this testbed{hint}"
                    ),
                ));
            };
            // The same address and port, whatever the scope id or flow
            // label: the sockets would clash.
            if !seen.insert((d.ip(), d.port())) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("destination {d} listed twice"),
                ));
            }
            per[i].push((k, *d));
        }
        Ok(per
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, dests)| Group {
                ns: self.receiver_ns[i].clone(),
                dests,
            })
            .collect())
    }

    /// Binds a UDP socket for every destination (each must be an address of
    /// some receiver, see [`Testbed::receiver_of`]; several ports per address
    /// are fine) in its receiver's namespace and records every datagram.
    /// The sockets are bound when this returns. One thread per receiver
    /// namespace.
    ///
    /// Destinations are `SocketAddrV4`, `SocketAddrV6` or `SocketAddr`, IPv4
    /// and IPv6 ones mixed as one likes. IPv6 sockets are bound with
    /// `IPV6_V6ONLY`, so an IPv4 and an IPv6 destination may share a port.
    /// A link-local destination ([`Testbed::receiver_link_local`]) is bound
    /// on the receiver's `eth0`, its scope id looked up in the receiver's
    /// namespace: the destination's own scope id is ignored (0, or the
    /// sender's interface, as when it is also a destination to send to).
    /// Looking destinations up afterwards ([`Received::datagrams`], ...)
    /// ignores IPv6 scope ids and flow labels too; destinations that differ
    /// only in them are refused as listed twice.
    pub fn receivers<A: Into<SocketAddr> + Copy>(&self, dests: &[A]) -> io::Result<Receivers> {
        let dests: Vec<SocketAddr> = dests.iter().map(|&d| d.into()).collect();
        let groups = self.groups(&dests)?;
        Receivers::start(dests, groups)
    }

    /// Like [`Testbed::receivers`], but only counts datagrams per destination
    /// and checks each payload against the message pattern
    /// ([`crate::is_pattern`]). With `pin_cpu`, the receiver threads are
    /// pinned to that CPU.
    pub fn counting_receivers<A: Into<SocketAddr> + Copy>(
        &self,
        dests: &[A],
        pin_cpu: Option<usize>,
    ) -> io::Result<Counters> {
        let dests: Vec<SocketAddr> = dests.iter().map(|&d| d.into()).collect();
        let groups = self.groups(&dests)?;
        Counters::start(dests, groups, pin_cpu)
    }

    /// A UDP socket bound to the sender's address (port chosen by the
    /// kernel), created inside the sender namespace.
    pub fn sender_socket(&self) -> io::Result<UdpSocket> {
        in_namespace(&self.sender_ns, || {
            UdpSocket::bind(SocketAddrV4::new(SENDER_ADDR, 0))
        })?
    }

    /// An IPv6 UDP socket bound to the sender's IPv6 address [`SENDER_ADDR6`]
    /// (port chosen by the kernel), with `IPV6_V6ONLY` on, created inside
    /// the sender namespace. Fails (`InvalidInput`) without
    /// [`TestbedConfig::ipv6`].
    pub fn sender_socket6(&self) -> io::Result<UdpSocket> {
        if !self.cfg.ipv6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Testbed::sender_socket6 needs IPv6: this testbed was built without \
                 TestbedConfig::ipv6",
            ));
        }
        let addr = SocketAddrV6::new(SENDER_ADDR6, 0, 0, 0);
        in_namespace(&self.sender_ns, || bind_udp6(addr, true))?
            .map_err(|e| context(e, format_args!("cannot bind the sender's socket to {addr}")))
    }

    /// A dual-stack UDP socket of the sender namespace: bound to `[::]:0`
    /// with `IPV6_V6ONLY` off, so that it sends to IPv6 destinations and to
    /// IPv4 ones written `::ffff:a.b.c.d` (`Ipv4Addr::to_ipv6_mapped`), from
    /// whichever of the sender's addresses the kernel picks (10.77.0.1 or
    /// fd77::1 on `eth0`). IPv6 destinations need [`TestbedConfig::ipv6`].
    pub fn sender_socket_dual(&self) -> io::Result<UdpSocket> {
        let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0);
        in_namespace(&self.sender_ns, || bind_udp6(addr, false))?.map_err(|e| {
            context(
                e,
                format_args!("cannot bind the sender's dual-stack socket to {addr}"),
            )
        })
    }

    /// Runs `f` on a helper thread inside the sender namespace; see
    /// [`crate::in_namespace`].
    pub fn in_sender<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        in_namespace(&self.sender_ns, f)
    }

    /// Runs `cmd` inside the sender namespace and waits for it, capturing its
    /// output.
    pub fn run_in_sender(&self, cmd: &mut Command) -> io::Result<Output> {
        output_in(&self.sender_ns, cmd)
    }

    /// Spawns `cmd` inside the namespace `ns` (any namespace name, e.g.
    /// [`Testbed::receiver_ns`]).
    pub fn spawn_in(&self, ns: &str, cmd: &mut Command) -> io::Result<Child> {
        spawn_in(ns, cmd)
    }

    /// A field of the `Udp:` lines of each receiver namespace's
    /// `/proc/net/snmp` (e.g. `"InDatagrams"`, `"InCsumErrors"`,
    /// `"RcvbufErrors"`, `"NoPorts"`), indexed by receiver.
    pub fn udp_counter(&self, field: &str) -> io::Result<Vec<u64>> {
        let names: Vec<&str> = self.receiver_ns.iter().map(String::as_str).collect();
        for_each_namespace(&names, |_| read_snmp_here("Udp", field))
    }

    /// `InCsumErrors` of UDP per receiver namespace: datagrams dropped for a
    /// bad checksum.
    pub fn udp_in_csum_errors(&self) -> io::Result<Vec<u64>> {
        self.udp_counter("InCsumErrors")
    }

    /// `InDatagrams` of UDP per receiver namespace.
    pub fn udp_in_datagrams(&self) -> io::Result<Vec<u64>> {
        self.udp_counter("InDatagrams")
    }

    /// `RcvbufErrors` of UDP per receiver namespace (drops on full socket
    /// buffers).
    pub fn udp_rcvbuf_errors(&self) -> io::Result<Vec<u64>> {
        self.udp_counter("RcvbufErrors")
    }

    /// A UDP-over-IPv6 counter of each receiver namespace's
    /// `/proc/net/snmp6`, named without its `Udp6` prefix (e.g.
    /// `"InDatagrams"` for `Udp6InDatagrams`, `"InCsumErrors"`,
    /// `"RcvbufErrors"`, `"NoPorts"`), indexed by receiver. Mirrors
    /// [`Testbed::udp_counter`], which counts IPv4 only.
    pub fn udp6_counter(&self, field: &str) -> io::Result<Vec<u64>> {
        let names: Vec<&str> = self.receiver_ns.iter().map(String::as_str).collect();
        let name = format!("Udp6{field}");
        for_each_namespace(&names, |_| read_snmp6_here(&name))
    }

    /// `Udp6InCsumErrors` per receiver namespace: datagrams over IPv6
    /// dropped for a bad checksum.
    pub fn udp6_in_csum_errors(&self) -> io::Result<Vec<u64>> {
        self.udp6_counter("InCsumErrors")
    }

    /// `Udp6InDatagrams` per receiver namespace.
    pub fn udp6_in_datagrams(&self) -> io::Result<Vec<u64>> {
        self.udp6_counter("InDatagrams")
    }

    /// `Udp6RcvbufErrors` per receiver namespace (drops on full socket
    /// buffers, IPv6).
    pub fn udp6_rcvbuf_errors(&self) -> io::Result<Vec<u64>> {
        self.udp6_counter("RcvbufErrors")
    }

    /// Per receiver: frames the hub's port towards it dropped (the
    /// receiver's backlog was full) plus datagrams its UDP sockets dropped
    /// (`RcvbufErrors`, and `Udp6RcvbufErrors` with [`TestbedConfig::ipv6`]):
    /// the losses past the sender, which no sender sees.
    pub fn drops_past_sender(&self) -> io::Result<Vec<u64>> {
        (0..self.num_receivers())
            .map(|i| {
                let ns = &self.receiver_ns[i];
                let port = crate::link_counters(&self.hub_ns, &self.receiver_port(i))?;
                let mut socket = crate::snmp_counter(ns, "Udp", "RcvbufErrors")?;
                if self.cfg.ipv6 {
                    socket += crate::snmp6_counter(ns, "Udp6RcvbufErrors")?;
                }
                Ok(port.tx_dropped + socket)
            })
            .collect()
    }

    /// UDP datagrams delivered per receiver: IPv4's `InDatagrams`, plus
    /// `Udp6InDatagrams` with [`TestbedConfig::ipv6`].
    fn delivered_per_receiver(&self) -> io::Result<Vec<u64>> {
        let mut v4 = self.udp_in_datagrams()?;
        if self.cfg.ipv6 {
            for (a, b) in v4.iter_mut().zip(self.udp6_in_datagrams()?) {
                *a += b;
            }
        }
        Ok(v4)
    }

    /// Waits at most `timeout` until no receiver namespace's UDP
    /// `InDatagrams` (IPv4, and IPv6 with [`TestbedConfig::ipv6`]) changes
    /// for `quiet` (useful before reading counters).
    pub fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut last = self.delivered_per_receiver()?;
        let mut since = std::time::Instant::now();
        while start.elapsed() < timeout {
            std::thread::sleep(quiet / 4);
            let now = self.delivered_per_receiver()?;
            if now != last {
                last = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        cleanup::delete_namespaces(&self.namespaces());
        cleanup::unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(rps_mask(0), "00000001");
        assert_eq!(rps_mask(1), "00000002");
        assert_eq!(rps_mask(31), "80000000");
        assert_eq!(rps_mask(33), "00000002,00000000");
    }

    #[test]
    fn config_validation() {
        let ok = TestbedConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            TestbedConfig {
                receivers: 0,
                ..ok.clone()
            },
            TestbedConfig {
                receivers: 255,
                ..ok.clone()
            },
            TestbedConfig {
                addrs_per_receiver: 0,
                ..ok.clone()
            },
            TestbedConfig {
                mtu: Some(10),
                ..ok.clone()
            },
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }
}
