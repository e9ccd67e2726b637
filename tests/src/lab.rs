//! The lab: a bridge in its own namespace, nodes and a client on it, torn down when dropped.
//!
//! ```text
//!  ns lab-<id>-lan: bridge br0 (STP off)         [br1: second segment, optional]
//!    |-- veth p-n<i> -- ns lab-<id>-n<i>  eth0 10.250.0.<i>/24  fd00:250::<i>/64
//!    |-- veth p-c    -- ns lab-<id>-c     eth0 10.250.0.10/24   fd00:250::10/64
//!    |-- veth p-ing  -- ns lab-<id>-ing   eth0 10.250.0.50/24   (optional ingress)
//!    `-- veth p-x<k> -- ns lab-<id>-<name> eth0 caller's address (optional extras)
//! ```
//!
//! With a second segment, the nodes and the client also get `eth1` on `br1`, 10.250.1.<i>/24 and
//! fd00:250:1::<i>/64. Nothing in the lab touches a host interface or leaves 10.250.0.0/16 and
//! fd00:250::/32.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{LabError, Result};
use ferrolb_proto::wire::MacAddr;

use crate::netns::{Namespace, host_ip};
use crate::process::ProcessRegistry;

/// Set to `1` to keep every lab's directory (logs, captures), not only a failed test's.
pub const KEEP_ENV: &str = "FERROLB_KEEP_LAB";

/// Prefix of every namespace a lab creates.
pub const NAMESPACE_PREFIX: &str = "lab-";

/// The most nodes a lab has: node addresses 10.250.0.1-9 stop below the client's .10.
pub const MAX_NODES: usize = 9;

const CLIENT_OCTET: u8 = 10;
const INGRESS_OCTET: u8 = 50;

/// Where each test process keeps a lock file for as long as it lives, so that a later process
/// can tell the namespaces of a dead one (stale, safe to delete) from those of a live one.
const OWNER_LOCK_DIR: &str = "/run/ferrolb-lab";
const NETNS_DIR: &str = "/run/netns";

/// One network interface of a host, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// `eth0` or `eth1`.
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: MacAddr,
}

/// A namespace attached to the lab's LAN: a node, the client, the ingress or an extra.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    ns: Namespace,
    eth0: Nic,
    eth1: Option<Nic>,
}

impl Host {
    /// The host's short name: `n1`, `c`, `ing`, or an extra's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace, to run commands, spawn processes and capture in.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// Its namespace's name (`lab-<id>-n1`).
    pub fn namespace(&self) -> &str {
        self.ns.name()
    }

    /// Its interface on the first segment (`br0`).
    pub fn eth0(&self) -> &Nic {
        &self.eth0
    }

    /// Its interface on the second segment (`br1`), if the lab has one.
    pub fn eth1(&self) -> Option<&Nic> {
        self.eth1.as_ref()
    }

    /// `eth0`'s IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.eth0.ipv4
    }

    /// `eth0`'s IPv6 address (fd00:250::/64, without duplicate address detection).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.eth0.ipv6
    }

    /// `eth0`'s MAC address.
    pub fn mac(&self) -> MacAddr {
        self.eth0.mac
    }
}

/// The shape of a lab to build; see [`Lab::builder`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nodes: usize,
    ingress: bool,
    second_segment: bool,
    extras: Vec<(String, Ipv4Addr)>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            nodes: 3,
            ingress: false,
            second_segment: false,
            extras: Vec::new(),
        }
    }
}

impl LabBuilder {
    /// How many nodes, 1 to [`MAX_NODES`] (default 3).
    pub fn nodes(mut self, count: usize) -> Self {
        self.nodes = count;
        self
    }

    /// Adds the ingress namespace `lab-<id>-ing` at 10.250.0.50.
    pub fn ingress(mut self) -> Self {
        self.ingress = true;
        self
    }

    /// Adds a second bridge `br1`, with `eth1` on every node and on the client.
    pub fn second_segment(mut self) -> Self {
        self.second_segment = true;
        self
    }

    /// Adds a bare namespace `lab-<id>-<name>` on `br0` at `ipv4`/24 (in 10.250.0.0/24) and
    /// the matching fd00:250::<last octet>/64.
    pub fn extra(mut self, name: &str, ipv4: Ipv4Addr) -> Self {
        self.extras.push((name.to_owned(), ipv4));
        self
    }

    /// Checks the shape before anything is created.
    fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(LabError::Spec(format!(
                "{} nodes asked for; a lab has 1 to {MAX_NODES} (node addresses stop below the client's 10.250.0.{CLIENT_OCTET})",
                self.nodes
            )));
        }
        let mut taken: Vec<u8> = (1..=self.nodes)
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        taken.push(CLIENT_OCTET);
        if self.ingress {
            taken.push(INGRESS_OCTET);
        }
        let mut names: Vec<&str> = vec!["lan", "c", "ing"];
        for (name, ipv4) in &self.extras {
            let [a, b, c, octet] = ipv4.octets();
            if [a, b, c] != [10, 250, 0] || octet == 0 || octet == 255 {
                return Err(LabError::Spec(format!(
                    "extra `{name}` at {ipv4}: extras live in 10.250.0.1-254, on br0"
                )));
            }
            if taken.contains(&octet) {
                return Err(LabError::Spec(format!(
                    "extra `{name}` at {ipv4}: that address is taken (nodes .1-.{}, client .{CLIENT_OCTET}, ingress .{INGRESS_OCTET}, other extras)",
                    self.nodes
                )));
            }
            taken.push(octet);
            let is_node_name = name
                .strip_prefix('n')
                .is_some_and(|rest| rest.parse::<usize>().is_ok());
            if name.is_empty()
                || name.len() > 20
                || !name.chars().all(|c| c.is_ascii_alphanumeric())
                || is_node_name
                || names.contains(&name.as_str())
            {
                return Err(LabError::Spec(format!(
                    "extra name `{name}`: use 1-20 ASCII letters and digits, unique, and not `lan`, `c`, `ing` or `n<digits>`"
                )));
            }
            names.push(name);
        }
        Ok(())
    }

    /// Builds the lab. On failure, whatever was created is torn down again.
    pub fn build(self) -> Result<Lab> {
        self.validate()?;
        reap_stale_namespaces();
        let hosts = self.nodes + 2 + self.extras.len();
        make_room_in_neighbour_tables(hosts)?;
        let id = next_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrolb-lab-{id}-"))
            .tempdir()
            .map_err(|source| LabError::Io {
                context: "creating the lab directory".to_owned(),
                source,
            })?;
        let registry = Arc::new(ProcessRegistry::new(dir.path().to_owned()));
        let mut teardown = Teardown {
            id: id.clone(),
            dir: Some(dir),
            registry: Arc::clone(&registry),
            namespaces: Vec::new(),
        };

        let lan = teardown.add_namespace(&format!("{NAMESPACE_PREFIX}{id}-lan"))?;
        let bridges: &[&str] = if self.second_segment {
            &["br0", "br1"]
        } else {
            &["br0"]
        };
        for bridge in bridges {
            // STP off: ports forward at once. No IPv6 on the LAN side, so the bridge sends nothing.
            lan.ip(["link", "add", bridge, "type", "bridge", "stp_state", "0"])?;
            // addrgenmode first: set together with `up`, the kernel may bring it up first.
            lan.ip(["link", "set", bridge, "addrgenmode", "none"])?;
            lan.ip(["link", "set", bridge, "up"])?;
        }

        let attach = |teardown: &mut Teardown, name: &str, peer: &str, octet: u8, eth1: bool| {
            attach_host(teardown, &lan, &id, name, peer, octet, eth1)
        };
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 1..=self.nodes {
            let octet = u8::try_from(i).map_err(|e| LabError::Spec(e.to_string()))?;
            let name = format!("n{i}");
            nodes.push(attach(
                &mut teardown,
                &name,
                &name,
                octet,
                self.second_segment,
            )?);
        }
        let client = attach(&mut teardown, "c", "c", CLIENT_OCTET, self.second_segment)?;
        let ingress = if self.ingress {
            Some(attach(&mut teardown, "ing", "ing", INGRESS_OCTET, false)?)
        } else {
            None
        };
        let mut extras = Vec::with_capacity(self.extras.len());
        for (k, (name, ipv4)) in self.extras.iter().enumerate() {
            let [_, _, _, octet] = ipv4.octets();
            extras.push(attach(&mut teardown, name, &format!("x{k}"), octet, false)?);
        }

        Ok(Lab {
            id,
            lan,
            nodes,
            client,
            ingress,
            extras,
            teardown,
        })
    }
}

/// Creates `lab-<id>-<name>` with `eth0` (and maybe `eth1`) on the LAN's bridges.
fn attach_host(
    teardown: &mut Teardown,
    lan: &Namespace,
    id: &str,
    name: &str,
    peer: &str,
    octet: u8,
    with_eth1: bool,
) -> Result<Host> {
    let ns = teardown.add_namespace(&format!("{NAMESPACE_PREFIX}{id}-{name}"))?;
    ns.ip(["link", "set", "lo", "up"])?;
    let eth0 = attach_nic(&ns, lan, "eth0", &format!("p-{peer}"), "br0", 0, octet)?;
    let eth1 = if with_eth1 {
        Some(attach_nic(
            &ns,
            lan,
            "eth1",
            &format!("q-{peer}"),
            "br1",
            1,
            octet,
        )?)
    } else {
        None
    };
    Ok(Host {
        name: name.to_owned(),
        ns,
        eth0,
        eth1,
    })
}

/// One veth: `iface` in the host's namespace, `peer` on `bridge` in the LAN namespace, created
/// directly in both so that it never appears in the host's namespace.
fn attach_nic(
    ns: &Namespace,
    lan: &Namespace,
    iface: &str,
    peer: &str,
    bridge: &str,
    segment: u8,
    octet: u8,
) -> Result<Nic> {
    host_ip(
        &[
            "link",
            "add",
            iface,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            lan.name(),
        ],
        ns.name(),
    )?;
    lan.ip([
        "link",
        "set",
        peer,
        "addrgenmode",
        "none",
        "master",
        bridge,
        "up",
    ])?;
    let ipv4 = Ipv4Addr::new(10, 250, segment, octet);
    let ipv6 = lab_ipv6(segment, octet);
    ns.ip(["addr", "add", &format!("{ipv4}/24"), "dev", iface])?;
    ns.ip(["addr", "add", &format!("{ipv6}/64"), "dev", iface, "nodad"])?;
    ns.ip(["link", "set", iface, "up"])?;
    Ok(Nic {
        name: iface.to_owned(),
        ipv4,
        ipv6,
        mac: ns.mac(iface)?,
    })
}

/// fd00:250::<octet> on segment 0, fd00:250:1::<octet> on segment 1, the octet written in
/// decimal digits so that it reads like the IPv4 address (10.250.0.10 <-> fd00:250::10).
fn lab_ipv6(segment: u8, octet: u8) -> Ipv6Addr {
    let digits = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(u16::from(n));
    Ipv6Addr::new(0xfd00, 0x250, u16::from(segment), 0, 0, 0, 0, digits(octet))
}

/// A built lab. Dropping it stops every process started in it and deletes its namespaces,
/// also while unwinding from a panic.
#[derive(Debug)]
pub struct Lab {
    id: String,
    lan: Namespace,
    nodes: Vec<Host>,
    client: Host,
    ingress: Option<Host>,
    extras: Vec<Host>,
    teardown: Teardown,
}

impl Lab {
    /// A lab of the default shape (3 nodes and a client) to adjust and build.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// Builds the default shape: 3 nodes and a client.
    pub fn new() -> Result<Lab> {
        LabBuilder::default().build()
    }

    /// The lab's id, unique across the tests of this process and all others.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace holding the bridges.
    pub fn lan(&self) -> &Namespace {
        &self.lan
    }

    /// All nodes, `n1` first.
    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    /// Node `i`, counted from 1 like its name and address; `None` past the last node.
    pub fn node(&self, i: usize) -> Option<&Host> {
        i.checked_sub(1).and_then(|index| self.nodes.get(index))
    }

    /// The client.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The ingress namespace, if built with [`LabBuilder::ingress`].
    pub fn ingress(&self) -> Option<&Host> {
        self.ingress.as_ref()
    }

    /// The extra namespace of that name, if built with [`LabBuilder::extra`].
    pub fn extra(&self, name: &str) -> Option<&Host> {
        self.extras.iter().find(|host| host.name == name)
    }

    /// The names of every namespace the lab created, LAN first.
    pub fn namespaces(&self) -> Vec<String> {
        self.teardown.namespaces.clone()
    }

    /// PIDs of every process started in the lab (running or not).
    pub fn pids(&self) -> Vec<u32> {
        self.teardown.registry.pids()
    }

    /// The directory holding the lab's capture files and process logs (deleted at teardown,
    /// kept when the test panics).
    pub fn dir(&self) -> &Path {
        self.teardown.registry.dir()
    }

    /// Tears the lab down now and reports what failed, instead of logging it from `Drop`.
    pub fn teardown(mut self) -> Result<()> {
        match self.teardown.run().into_iter().next() {
            None => Ok(()),
            Some(first) => Err(first),
        }
    }
}

/// What a lab owns and must release: created first, so that a half-built lab is torn down too.
#[derive(Debug)]
struct Teardown {
    id: String,
    dir: Option<tempfile::TempDir>,
    registry: Arc<ProcessRegistry>,
    namespaces: Vec<String>,
}

impl Teardown {
    fn add_namespace(&mut self, name: &str) -> Result<Namespace> {
        host_ip(&["netns", "add", name], name)?;
        self.namespaces.push(name.to_owned());
        Ok(Namespace::new(name.to_owned(), Arc::clone(&self.registry)))
    }

    /// Stops every process by PID, then deletes every namespace (the LAN last; deleting a
    /// namespace destroys its veths). Idempotent; returns every failure.
    fn run(&mut self) -> Vec<LabError> {
        let mut errors = self.registry.kill_all();
        while let Some(name) = self.namespaces.pop() {
            if let Err(error) = host_ip(&["netns", "del", &name], &name) {
                errors.push(error);
            }
        }
        if let Some(dir) = self.dir.take() {
            // FERROLB_KEEP_LAB=1 keeps a passing test's too, to read what happened.
            if std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1") {
                let kept = dir.keep();
                eprintln!(
                    "ferrolb lab {}: kept its logs and captures in {}",
                    self.id,
                    kept.display()
                );
            } else if let Err(source) = dir.close() {
                errors.push(LabError::Io {
                    context: format!("removing the directory of lab {}", self.id),
                    source,
                });
            }
        }
        errors
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for error in self.run() {
            eprintln!("ferrolb lab {}: teardown: {error}", self.id);
        }
    }
}

/// A short id unique across this process's labs (a counter) and across processes (the PID),
/// both in base 36: `lab-2k1x-0-n1`.
fn next_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    hold_owner_lock();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn owner_lock_path(pid36: &str) -> PathBuf {
    Path::new(OWNER_LOCK_DIR).join(format!("{pid36}.lock"))
}

/// Takes this process's owner lock, once, and holds it until the process exits (the kernel
/// releases it then, however the process ends). Without it, stale-namespace reaping simply
/// never considers this process's namespaces stale.
fn hold_owner_lock() {
    static LOCK: OnceLock<Option<File>> = OnceLock::new();
    LOCK.get_or_init(|| {
        std::fs::create_dir_all(OWNER_LOCK_DIR).ok()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(owner_lock_path(&base36(std::process::id())))
            .ok()?;
        file.try_lock().ok()?;
        Some(file)
    });
}

/// Raises the kernel's neighbour-table limits so every lab host can hold an entry for every
/// other, over IPv4 and IPv6. The tables are shared by all network namespaces and sized by the
/// initial one (gc_thresh3 = 1024 by default): 50 hosts that all talk to each other need ~5,000
/// entries, and past the limit the kernel drops ARP resolutions ("neighbor table overflow"), so
/// datagrams to some hosts vanish and a membership test measures the lab instead of the
/// protocol. Only ever raised; a small lab changes nothing.
fn make_room_in_neighbour_tables(hosts: usize) -> Result<()> {
    let wanted = (hosts * hosts * 2).max(128);
    for family in ["ipv4", "ipv6"] {
        for (threshold, factor) in [("gc_thresh1", 1), ("gc_thresh2", 2), ("gc_thresh3", 4)] {
            let path = format!("/proc/sys/net/{family}/neigh/default/{threshold}");
            let io = |source| LabError::Io {
                context: format!("raising {path} for {hosts} lab hosts"),
                source,
            };
            let current: usize = fs::read_to_string(&path)
                .map_err(io)?
                .trim()
                .parse()
                .unwrap_or(0);
            if current < wanted * factor {
                fs::write(&path, (wanted * factor).to_string()).map_err(io)?;
            }
        }
    }
    Ok(())
}

/// Deletes, once per process, the `lab-<pid>-<n>-*` namespaces whose owner process is dead: its
/// owner lock file exists and nobody holds it. A namespace without a lock file, or whose owner
/// holds its lock, is left alone.
fn reap_stale_namespaces() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
            return;
        };
        let ours = base36(std::process::id());
        let mut stale: Vec<(String, String)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix(NAMESPACE_PREFIX)
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if owner != ours
                && !owner.is_empty()
                && owner.chars().all(|c| c.is_ascii_alphanumeric())
            {
                stale.push((owner.to_owned(), name));
            }
        }
        stale.sort();
        let mut checked: Option<(String, bool)> = None;
        for (owner, name) in stale {
            let dead = match &checked {
                Some((last, dead)) if *last == owner => *dead,
                _ => {
                    let dead = owner_is_dead(&owner);
                    checked = Some((owner.clone(), dead));
                    dead
                }
            };
            if dead {
                match host_ip(&["netns", "del", &name], &name) {
                    Ok(_) => eprintln!(
                        "ferrolb lab: deleted stale namespace {name} of a dead test process"
                    ),
                    Err(error) => eprintln!("ferrolb lab: deleting stale namespace: {error}"),
                }
            }
        }
    });
}

/// True only when the owner's lock file exists and can be locked: its process is gone.
fn owner_is_dead(pid36: &str) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(owner_lock_path(pid36)) else {
        return false;
    };
    // Dropping the file releases the lock again.
    file.try_lock().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304), "2hwcg");
    }

    #[test]
    fn ipv6_reads_like_ipv4() {
        assert_eq!(lab_ipv6(0, 1).to_string(), "fd00:250::1");
        assert_eq!(lab_ipv6(0, 10).to_string(), "fd00:250::10");
        assert_eq!(lab_ipv6(1, 50).to_string(), "fd00:250:1::50");
        assert_eq!(lab_ipv6(0, 254).to_string(), "fd00:250::254");
    }

    #[test]
    fn spec_validation() {
        assert!(Lab::builder().validate().is_ok());
        assert!(Lab::builder().nodes(0).validate().is_err());
        assert!(Lab::builder().nodes(10).validate().is_err());
        let extra = |name: &str, last: u8| {
            Lab::builder()
                .ingress()
                .extra(name, Ipv4Addr::new(10, 250, 0, last))
                .validate()
        };
        assert!(extra("peer", 100).is_ok());
        assert!(extra("peer", 2).is_err(), "node address");
        assert!(extra("peer", 10).is_err(), "client address");
        assert!(extra("peer", 50).is_err(), "ingress address");
        assert!(extra("n4", 100).is_err(), "node name");
        assert!(extra("lan", 100).is_err());
        assert!(extra("a-b", 100).is_err());
        assert!(
            Lab::builder()
                .extra("x", Ipv4Addr::new(192, 168, 1, 5))
                .validate()
                .is_err(),
            "outside the lab"
        );
    }
}
