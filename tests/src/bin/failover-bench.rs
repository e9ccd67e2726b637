//! Failover benchmark: FerroLB at default settings against keepalived (VRRPv2 `advert_int 1`,
//! and VRRPv3 `advert_int 0.1`), side by side in the network lab, for three failure kinds:
//! crash (SIGKILL; keepalived: SIGSTOP + SIGKILL of both its processes and the VIP removed, as a
//! dead machine's kernel would), link cut (the owner's switch port down) and graceful stop
//! (SIGTERM). Each trial injects the failure at a random moment, takes the time origin from a
//! timestamp this program records just before acting, and ends at the first ARP reply with
//! another MAC in a capture on the client, which arpings every 10 ms.
//!
//! ```text
//! cargo build --release -p ferrolb-speaker -p ferrolb-controller
//! cargo run --release -p ferrolb-e2e --bin failover-bench -- --trials 20
//! cargo run --release -p ferrolb-e2e --bin failover-bench -- --trials 5 --members 50 --systems ferrolb --kinds crash
//! ```
//!
//! Needs root, arping, tcpdump, nginx, nft, and keepalived (installed with apt-get when missing).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};
use std::{fs, thread};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::journey::replies;
use ferrolb_e2e::{Background, Host, Journey, Lab, LabBuilder, MacAddr};

const KEEPALIVED_VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 200);
const TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Crash,
    Link,
    Stop,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash (SIGKILL)",
            Kind::Link => "link cut",
            Kind::Stop => "graceful stop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    FerroLb,
    KeepalivedV2,
    KeepalivedV3,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::FerroLb => "FerroLB (defaults)",
            System::KeepalivedV2 => "keepalived VRRPv2 advert_int 1",
            System::KeepalivedV3 => "keepalived VRRPv3 advert_int 0.1",
        }
    }
}

struct Options {
    trials: usize,
    members: usize,
    systems: Vec<System>,
    kinds: Vec<Kind>,
}

fn usage() -> ! {
    eprintln!(
        "usage: failover-bench [--trials N] [--members M] [--systems ferrolb,keepalived-v2,keepalived-v3] [--kinds crash,link,stop]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        trials: 5,
        members: 3,
        systems: vec![System::FerroLb, System::KeepalivedV2, System::KeepalivedV3],
        kinds: vec![Kind::Crash, Kind::Link, Kind::Stop],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--trials" => o.trials = value.parse().unwrap_or_else(|_| usage()),
            "--members" => o.members = value.parse().unwrap_or_else(|_| usage()),
            "--systems" => {
                o.systems = value
                    .split(',')
                    .map(|s| match s {
                        "ferrolb" => System::FerroLb,
                        "keepalived-v2" => System::KeepalivedV2,
                        "keepalived-v3" => System::KeepalivedV3,
                        _ => usage(),
                    })
                    .collect();
            }
            "--kinds" => {
                o.kinds = value
                    .split(',')
                    .map(|s| match s {
                        "crash" => Kind::Crash,
                        "link" => Kind::Link,
                        "stop" => Kind::Stop,
                        _ => usage(),
                    })
                    .collect();
            }
            _ => usage(),
        }
    }
    if o.trials == 0 || o.members < 3 {
        usage();
    }
    o
}

/// A random duration below `max` (the injection phase).
fn random_below(max: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let unit = (h.finish() % 1_000_000) as f64 / 1_000_000.0;
    max.mul_f64(unit)
}

type Outcome = Result<Vec<Duration>, String>;

fn main() {
    let o = options();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("failover-bench needs root (network namespaces)");
        std::process::exit(1);
    }
    let mut rows: Vec<(System, Kind, Outcome)> = Vec::new();
    for system in &o.systems {
        for kind in &o.kinds {
            eprintln!(
                "== {} / {}: {} trials",
                system.name(),
                kind.name(),
                o.trials
            );
            let outcome = match system {
                System::FerroLb => ferrolb(*kind, o.trials, o.members),
                System::KeepalivedV2 => keepalived(*kind, o.trials, false),
                System::KeepalivedV3 => keepalived(*kind, o.trials, true),
            };
            if let Err(e) = &outcome {
                eprintln!("   failed: {e}");
            }
            rows.push((*system, *kind, outcome));
        }
    }
    println!();
    println!(
        "Failover, {} members, from the failure to the client's first ARP reply with the new owner's MAC (ms)",
        o.members
    );
    println!();
    println!("| system | failure | trials | median | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (system, kind, outcome) in &rows {
        match outcome {
            Ok(times) if !times.is_empty() => {
                let mut t = times.clone();
                t.sort();
                let p = |q: f64| {
                    t[((t.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
                };
                let p99 = if t.len() >= 20 {
                    format!("{:.0}", p(0.99))
                } else {
                    "-".to_owned()
                };
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {} | {:.0} |",
                    system.name(),
                    kind.name(),
                    t.len(),
                    p(0.5),
                    p(0.9),
                    p99,
                    p(1.0)
                );
            }
            Ok(_) => println!(
                "| {} | {} | 0 | - | - | - | - |",
                system.name(),
                kind.name()
            ),
            Err(e) => println!(
                "| {} | {} | failed: {e} | | | | |",
                system.name(),
                kind.name()
            ),
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- FerroLB

/// What one member's `/metrics` says about the membership.
#[derive(Debug, Default)]
struct MembershipView {
    alive: Option<u64>,
    suspect: u64,
    dead: u64,
    suspicions: u64,
    deaths: u64,
}

impl MembershipView {
    fn parse(metrics: &str) -> MembershipView {
        let value = |name: &str| {
            metrics.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        MembershipView {
            alive: value("ferrolb_membership_members{state=\"alive\"}"),
            suspect: value("ferrolb_membership_members{state=\"suspect\"}").unwrap_or(0),
            dead: value("ferrolb_membership_members{state=\"dead\"}").unwrap_or(0),
            suspicions: value("ferrolb_membership_suspicions_total").unwrap_or(0),
            deaths: value("ferrolb_membership_deaths_total").unwrap_or(0),
        }
    }

    fn add(&mut self, other: &MembershipView) {
        self.alive = Some(self.alive.unwrap_or(0) + other.alive.unwrap_or(0));
        self.suspect += other.suspect;
        self.dead += other.dead;
        self.suspicions += other.suspicions;
        self.deaths += other.deaths;
    }

    fn summary(&self) -> String {
        match self.alive {
            None => "no answer".into(),
            Some(alive) => format!(
                "{alive} alive, {} suspect, {} dead ({} suspicions, {} deaths so far)",
                self.suspect, self.dead, self.suspicions, self.deaths
            ),
        }
    }
}

/// Extra members beyond the lab's 3 nodes: bare namespaces on the bridge, each with a speaker.
/// How long a membership may take to count every member alive (start-up, a member's return).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn extra_name(k: usize) -> String {
    format!("m{k}")
}

fn extra_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, (150 + k) as u8)
}

struct FerroStage {
    journey: Journey,
    ip: Ipv4Addr,
    extras: Vec<(Host, Option<Background>)>,
}

impl FerroStage {
    fn new(members: usize) -> Result<FerroStage, String> {
        let mut builder: LabBuilder = Lab::builder().nodes(3);
        for k in 4..=members {
            builder = builder.extra(&extra_name(k), extra_ip(k));
        }
        let mut journey = Journey::new(builder).map_err(err)?;
        let install = &mut journey.install;
        install
            .write("pool.yaml", &manifests::pool("lan", &["10.250.0.100/30"]))
            .map_err(err)?;
        install
            .write("l2.yaml", &manifests::l2_advertisement("l2", &[]))
            .map_err(err)?;
        let mut extras = Vec::new();
        for k in 4..=members {
            let host = journey
                .lab
                .extra(&extra_name(k))
                .ok_or("extra missing")?
                .clone();
            install
                .write(
                    &format!("nodes/{}.yaml", extra_name(k)),
                    &manifests::node(&extra_name(k), IpAddr::V4(extra_ip(k))),
                )
                .map_err(err)?;
            extras.push((host, None));
        }
        install.start_speakers().map_err(err)?;
        let mut stage = FerroStage {
            journey,
            ip: Ipv4Addr::UNSPECIFIED,
            extras,
        };
        for i in 0..stage.extras.len() {
            stage.start_extra(i)?;
        }
        stage
            .journey
            .install
            .wait_membership(Duration::from_secs(30))
            .map_err(err)?;
        stage.wait_converged(members)?;
        stage.journey.install.start_controller().map_err(err)?;
        stage
            .journey
            .install
            .write("apps/web.yaml", &manifests::service("demo", "web").yaml())
            .map_err(err)?;
        let ip = stage
            .journey
            .install
            .wait_ip("demo", "web", Duration::from_secs(20))
            .map_err(err)?;
        stage.journey.expose(ip).map_err(err)?;
        stage.ip = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => return Err("expected IPv4".into()),
        };
        Ok(stage)
    }

    /// Waits until every member counts `members` alive members (its `/metrics`): a trial on a
    /// membership still converging would measure the start-up, not a failover.
    fn wait_converged(&self, members: usize) -> Result<(), String> {
        let hosts: Vec<&Host> = self
            .journey
            .lab
            .nodes()
            .iter()
            .chain(self.extras.iter().map(|(host, _)| host))
            .collect();
        let started = Instant::now();
        let deadline = started + CONVERGE_TIMEOUT;
        let mut next_report = started + Duration::from_secs(5);
        loop {
            let mut behind = Vec::new();
            let mut totals = MembershipView::default();
            for host in &hosts {
                let out = host
                    .ns()
                    .exec(["curl", "-s", "-m", "1", "http://127.0.0.1:7473/metrics"])
                    .map_err(err)?;
                let view = MembershipView::parse(&String::from_utf8_lossy(&out.stdout));
                if view.alive != Some(members as u64) {
                    behind.push(format!("{}: {}", host.name(), view.summary()));
                }
                totals.add(&view);
            }
            if behind.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now > deadline {
                let log = self
                    .journey
                    .install
                    .speaker("n1")
                    .and_then(|p| p.log().ok())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                return Err(format!(
                    "the membership did not converge to {members} alive within {CONVERGE_TIMEOUT:?}; behind: {behind:?}; n1's log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            if now >= next_report {
                next_report = now + Duration::from_secs(5);
                eprintln!(
                    "   converging, {:.0} s: {} of {members} members behind; summed over members: {}; load {}",
                    (now - started).as_secs_f64(),
                    behind.len(),
                    totals.summary(),
                    fs::read_to_string("/proc/loadavg")
                        .unwrap_or_default()
                        .trim()
                );
            }
            // Each look costs every member an `ip netns exec curl` (~6 ms of CPU): polled fast,
            // 50 members would spend a third of this machine on being watched.
            thread::sleep(Duration::from_secs(1));
        }
    }

    fn start_extra(&mut self, i: usize) -> Result<(), String> {
        let install = &self.journey.install;
        let speaker = ferrolb_e2e::install::binary("ferrolb-speaker").map_err(err)?;
        let (host, slot) = self.extras.get_mut(i).ok_or("no such extra")?;
        let process = host
            .ns()
            .spawn([
                speaker.to_string_lossy().as_ref(),
                "run",
                "--node-name",
                host.name(),
                "--state-dir",
                &install.dir().to_string_lossy(),
                "--membership-key-file",
                &install.key_file().to_string_lossy(),
                "--metrics-addr",
                "127.0.0.1:7473",
                "--log-level",
                "warn",
            ])
            .map_err(err)?;
        *slot = Some(process);
        Ok(())
    }

    /// The answering host: a lab node (1-3) or an extra (index into `extras`).
    fn owner(&self) -> Result<(Owner, MacAddr), String> {
        let macs = ferrolb_e2e::tools::arping_until(
            self.journey.client().ns(),
            "eth0",
            self.ip,
            Duration::from_secs(10),
            |m| m.len() == 1,
        )
        .map_err(err)?;
        let mac = *macs.first().ok_or("no answer")?;
        if let Some(i) = self.journey.lab.nodes().iter().position(|n| n.mac() == mac) {
            return Ok((Owner::Node(i + 1), mac));
        }
        if let Some(i) = self.extras.iter().position(|(h, _)| h.mac() == mac) {
            return Ok((Owner::Extra(i), mac));
        }
        Err(format!("{mac} is nobody's"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Node(usize),
    Extra(usize),
}

fn ferrolb(kind: Kind, trials: usize, members: usize) -> Outcome {
    let mut stage = FerroStage::new(members)?;
    let mut times = Vec::new();
    for trial in 0..trials {
        let (owner, mac) = stage.owner()?;
        thread::sleep(Duration::from_millis(200) + random_below(Duration::from_secs(1)));
        let lan = stage.journey.lab.lan().clone();
        let port = match owner {
            Owner::Node(i) => format!("p-n{i}"),
            Owner::Extra(i) => format!("p-x{i}"),
        };
        let extras = &stage.extras;
        let ip = stage.ip;
        let takeover = stage
            .journey
            .measure_takeover("eth0", ip, mac, TIMEOUT, |install| {
                let process = match owner {
                    Owner::Node(i) => install.speaker(&format!("n{i}")),
                    Owner::Extra(i) => extras.get(i).and_then(|(_, p)| p.as_ref()),
                };
                match (kind, process) {
                    (Kind::Crash, Some(p)) => p.kill().map(drop),
                    (Kind::Stop, Some(p)) => p.signal(nix::sys::signal::Signal::SIGTERM),
                    (Kind::Link, _) => lan.ip(["link", "set", &port, "down"]).map(drop),
                    (_, None) => Err(ferrolb_e2e::LabError::Spec("owner has no speaker".into())),
                }
            })
            .map_err(err)?;
        eprintln!(
            "   trial {trial}: owner {owner:?}, {} ms{}",
            takeover.elapsed.as_millis(),
            match takeover.others_before {
                0 => String::new(),
                n => format!(" ({n} replies from other MACs before the failure)"),
            }
        );
        times.push(takeover.elapsed);
        // Restore.
        match (kind, owner) {
            (Kind::Link, _) => {
                lan.ip(["link", "set", &port, "up"]).map_err(err)?;
            }
            (_, Owner::Node(i)) => {
                if let Some(p) = stage.journey.install.speaker(&format!("n{i}")) {
                    let _ = p.wait_within(Duration::from_secs(5));
                }
                stage.journey.install.start_speaker(i).map_err(err)?;
            }
            (_, Owner::Extra(i)) => {
                if let Some((_, Some(p))) = stage.extras.get(i) {
                    let _ = p.wait_within(Duration::from_secs(5));
                }
                stage.start_extra(i)?;
            }
        }
        // Rejoin, take the IP back (a cut node's kernel retries ARP after 1 s), settle.
        stage.wait_converged(members)?;
        thread::sleep(Duration::from_secs(2));
    }
    Ok(times)
}

// ---------------------------------------------------------------- keepalived

fn ensure_keepalived() -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", "command -v keepalived"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return Ok(());
    }
    eprintln!("installing keepalived with apt-get");
    let status = Command::new("apt-get")
        .args(["install", "-y", "keepalived"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(err)?;
    if status.success() {
        Ok(())
    } else {
        Err("apt-get install keepalived failed".into())
    }
}

fn keepalived_conf(node: &Host, priority: u32, v3: bool) -> String {
    let (version, advert) = if v3 {
        ("vrrp_version 3\n", "0.1")
    } else {
        ("", "1")
    };
    format!(
        "global_defs {{\n  router_id {name}\n  {version}  enable_script_security\n}}\n\
vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {advert}\n\
  virtual_ipaddress {{\n    {KEEPALIVED_VIP}/24 dev eth0\n  }}\n}}\n",
        name = node.name()
    )
}

/// Starts keepalived on node `i`; `incarnation` gives each start its own pid files (a restart
/// right after a crash must not find the dead instance's files and refuse to run).
fn start_keepalived(
    lab: &Lab,
    i: usize,
    incarnation: usize,
    v3: bool,
) -> Result<Background, String> {
    let node = lab.node(i).ok_or("no node")?;
    let dir = lab.dir().join(format!("keepalived-n{i}-{incarnation}"));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let conf = dir.join("keepalived.conf");
    std::fs::write(&conf, keepalived_conf(node, 250 - 50 * i as u32, v3)).map_err(err)?;
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    node.ns()
        .spawn([
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--use-file",
            &conf.to_string_lossy(),
            "--pid",
            &path("keepalived.pid"),
            "--vrrp_pid",
            &path("vrrp.pid"),
            "--checkers_pid",
            &path("checkers.pid"),
            "--vrrp",
        ])
        .map_err(err)
}

fn keepalived(kind: Kind, trials: usize, v3: bool) -> Outcome {
    ensure_keepalived()?;
    let lab = Lab::builder().nodes(3).build().map_err(err)?;
    for node in lab.nodes() {
        // The VIP sits on eth0: the kernel must answer only for addresses of its interface.
        node.ns()
            .sysctl("net.ipv4.conf.all.arp_ignore", "1")
            .map_err(err)?;
        node.ns()
            .sysctl("net.ipv4.conf.all.arp_announce", "2")
            .map_err(err)?;
    }
    let mut daemons: Vec<Option<Background>> = Vec::new();
    for i in 1..=3 {
        daemons.push(Some(start_keepalived(&lab, i, 0, v3)?));
    }
    let client = lab.client().ns().clone();
    let master_mac = lab.node(1).ok_or("no n1")?.mac();
    let wait_master = || {
        ferrolb_e2e::tools::arping_until(
            &client,
            "eth0",
            KEEPALIVED_VIP,
            Duration::from_secs(15),
            |m| m.len() == 1 && m.iter().all(|m| *m == master_mac),
        )
        .map_err(err)
    };
    wait_master()?;
    let advert = if v3 {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let mut times = Vec::new();
    for trial in 0..trials {
        thread::sleep(Duration::from_millis(200) + random_below(advert));
        let capture = client.capture("eth0", "arp").map_err(err)?;
        let prober = ferrolb_e2e::tools::arping_every_10ms(
            &client,
            "eth0",
            KEEPALIVED_VIP,
            Duration::from_secs(12),
        )
        .map_err(err)?;
        capture
            .wait_for("a reply from the master", TIMEOUT, |f| {
                replies(f, KEEPALIVED_VIP)
                    .iter()
                    .any(|(_, m)| *m == master_mac)
            })
            .map_err(err)?;
        let n1 = lab.node(1).ok_or("no n1")?;
        let daemon = daemons
            .first_mut()
            .and_then(Option::take)
            .ok_or("no master daemon")?;
        let failed_at = SystemTime::now();
        match kind {
            Kind::Crash => {
                // Freeze both processes first so the VRRP child cannot say goodbye.
                daemon.pause().map_err(err)?;
                daemon.kill().map_err(err)?;
                n1.ns()
                    .ip([
                        "addr",
                        "del",
                        &format!("{KEEPALIVED_VIP}/24"),
                        "dev",
                        "eth0",
                    ])
                    .map_err(err)?;
            }
            Kind::Link => {
                lab.lan().ip(["link", "set", "p-n1", "down"]).map_err(err)?;
            }
            Kind::Stop => {
                daemon
                    .signal(nix::sys::signal::Signal::SIGTERM)
                    .map_err(err)?;
            }
        }
        let frames = capture.wait_for("a reply from a new master", TIMEOUT, |f| {
            replies(f, KEEPALIVED_VIP)
                .iter()
                .any(|(ts, m)| *ts >= failed_at && *m != master_mac)
        });
        let _ = prober.kill();
        let _ = capture.stop();
        let frames = frames.map_err(err)?;
        let ts = replies(&frames, KEEPALIVED_VIP)
            .into_iter()
            .find(|(ts, m)| *ts >= failed_at && *m != master_mac)
            .map(|(ts, _)| ts)
            .ok_or("reply vanished")?;
        let elapsed = ts.duration_since(failed_at).unwrap_or_default();
        eprintln!("   trial {trial}: {} ms", elapsed.as_millis());
        times.push(elapsed);
        // Restore: link up, master back (it preempts).
        match kind {
            Kind::Link => {
                lab.lan().ip(["link", "set", "p-n1", "up"]).map_err(err)?;
                if let Some(slot) = daemons.first_mut() {
                    *slot = Some(daemon);
                }
            }
            Kind::Crash | Kind::Stop => {
                let _ = daemon.wait_within(Duration::from_secs(5));
                drop(daemon);
                let fresh = start_keepalived(&lab, 1, trial + 1, v3)?;
                if let Some(slot) = daemons.first_mut() {
                    *slot = Some(fresh);
                }
            }
        }
        let started = Instant::now();
        if let Err(why) = wait_master() {
            let log = daemons
                .first()
                .and_then(Option::as_ref)
                .and_then(|d| d.log().ok())
                .unwrap_or_default();
            return Err(format!("{why}; the restored master's log:\n{log}"));
        }
        eprintln!(
            "   master back after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        thread::sleep(Duration::from_millis(500));
    }
    Ok(times)
}
