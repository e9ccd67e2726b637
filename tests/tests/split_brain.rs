//! Split brain, in the network lab with the real binaries: a node cut off from the membership
//! while its links stay up, a speaker that holds the wrong membership key, and a link cut on a
//! node with two NICs. A load balancer must never answer twice: in each case the client's
//! capture must show at most one MAC claiming each Service IP at any moment.
//!
//! Needs `ferrolb-controller` and `ferrolb-speaker` built beside this test
//! (`cargo build -p ferrolb-controller -p ferrolb-speaker`; scripts/test does it).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::tools::arping_every_10ms;
use ferrolb_e2e::{
    Background, Capture, CapturedFrame, Host, Journey, Lab, LabBuilder, MacAddr, lab_or_skip,
};
use ferrolb_proto::wire::{self, ArpOperation, Frame};

/// Generous bounds for a loaded 2-core machine.
const ALLOCATE: Duration = Duration::from_secs(10);
const MEMBERSHIP: Duration = Duration::from_secs(10);
/// Longer than anything a speaker waits before acting alone (the fencing hold, 2 s), so a
/// speaker that would wrongly take IPs over has had every chance to.
const OBSERVE: Duration = Duration::from_secs(4);

/// One lab at a time: two MACs at one moment is a matter of milliseconds, and a machine shared
/// by several labs stretches every one of them.
static SERIAL: Mutex<()> = Mutex::new(());

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("expected an IPv4 address, got {v6}"),
    }
}

/// A journey with one pool of four addresses, an advertisement for every interface, and
/// `services` Services, each with its IP exposed; the speakers of `started` nodes (counted from
/// 1) run, then the controller.
fn stage(builder: LabBuilder, started: usize, services: usize) -> (Journey, Vec<Ipv4Addr>) {
    let mut journey = Journey::new(builder).unwrap();
    let install = &mut journey.install;
    install
        .write("pool.yaml", &manifests::pool("lan", &["10.250.0.100/30"]))
        .unwrap();
    install
        .write("l2.yaml", &manifests::l2_advertisement("l2", &[]))
        .unwrap();
    for i in 1..=started {
        install.start_speaker(i).unwrap();
    }
    install.wait_membership(MEMBERSHIP).unwrap();
    install.start_controller().unwrap();
    let mut vips = Vec::new();
    for i in 0..services {
        let name = format!("web{i}");
        journey
            .install
            .write(
                &format!("apps/{name}.yaml"),
                &manifests::service("demo", &name).yaml(),
            )
            .unwrap();
        let ip = journey.install.wait_ip("demo", &name, ALLOCATE).unwrap();
        journey.expose(ip).unwrap();
        vips.push(v4(ip));
    }
    (journey, vips)
}

/// Every claim on `ip` in a capture: ARP replies and gratuitous ARP (either form), with the MAC
/// they give for it and the capture timestamp.
fn claims(frames: &[CapturedFrame], ip: Ipv4Addr) -> Vec<(SystemTime, MacAddr)> {
    frames
        .iter()
        .filter_map(|f| match wire::parse_frame(&f.data) {
            Ok(Frame::Arp { arp, .. })
                if arp.source_protocol_addr == ip
                    && (arp.operation == ArpOperation::Reply || arp.is_gratuitous()) =>
            {
                Some((f.ts, arp.source_hardware_addr))
            }
            _ => None,
        })
        .collect()
}

fn distinct(claims: &[(SystemTime, MacAddr)]) -> BTreeSet<MacAddr> {
    claims.iter().map(|(_, m)| *m).collect()
}

fn name_of(journey: &Journey, mac: MacAddr) -> String {
    journey
        .node_by_mac(mac)
        .map_or_else(|| mac.to_string(), |n| n.name().to_owned())
}

/// Starts the speaker of node `name` again and waits until every speaker has met it.
fn restart(journey: &mut Journey, name: &str) {
    let i = journey
        .lab
        .nodes()
        .iter()
        .position(|n| n.name() == name)
        .unwrap()
        + 1;
    journey.install.start_speaker(i).unwrap();
    journey.install.wait_membership(MEMBERSHIP).unwrap();
}

/// The node answering ARP for `ip` on the client's eth0.
fn owner(journey: &Journey, ip: Ipv4Addr) -> Host {
    journey.arp_owner("eth0", ip, ALLOCATE).unwrap().clone()
}

/// The client arpinging every VIP every 10 ms under one ARP capture on `iface`, until stopped.
struct Watch {
    capture: Option<Capture>,
    probers: Vec<Background>,
}

impl Watch {
    fn start(journey: &Journey, iface: &str, vips: &[Ipv4Addr], duration: Duration) -> Watch {
        let client = journey.client().ns().clone();
        let capture = client.capture(iface, "arp").unwrap();
        let probers = vips
            .iter()
            .map(|ip| arping_every_10ms(&client, iface, *ip, duration).unwrap())
            .collect();
        let watch = Watch {
            capture: Some(capture),
            probers,
        };
        watch.wait(ALLOCATE, "every VIP answered", |frames| {
            vips.iter().all(|ip| !claims(frames, *ip).is_empty())
        });
        watch
    }

    fn wait(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[CapturedFrame]) -> bool,
    ) -> Vec<CapturedFrame> {
        self.capture
            .as_ref()
            .unwrap()
            .wait_for(what, timeout, done)
            .unwrap()
    }

    fn stop(mut self) -> Vec<CapturedFrame> {
        for prober in self.probers.drain(..) {
            let _ = prober.kill();
        }
        self.capture.take().unwrap().stop().unwrap()
    }
}

/// Drops the membership protocol (UDP 7946) between node `cut` and every other node on the
/// LAN's bridge; ARP and everything else still pass, and the client still reaches every node.
fn cut_membership(journey: &Journey, cut: &str) {
    let rules = format!(
        "table bridge ferrolb_membership_cut {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"p-{cut}\" ether type ip udp dport 7946 drop\n    oifname \"p-{cut}\" ether type ip udp dport 7946 drop\n  }}\n}}\n"
    );
    let path = journey.lab.dir().join("membership-cut.nft");
    std::fs::write(&path, rules).unwrap();
    let out = journey
        .lab
        .lan()
        .exec(["nft", "-f", path.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn heal_membership(journey: &Journey) {
    let out = journey
        .lab
        .lan()
        .exec(["nft", "delete", "table", "bridge", "ferrolb_membership_cut"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_count(journey: &Journey, node: &str, needle: &str) -> usize {
    journey
        .install
        .speaker(node)
        .unwrap()
        .log()
        .unwrap()
        .matches(needle)
        .count()
}

/// Waits until `node`'s speaker has logged `needle` more often than `before` times.
fn wait_log_count(journey: &Journey, node: &str, needle: &str, before: usize) {
    let deadline = Instant::now() + MEMBERSHIP;
    while log_count(journey, node, needle) <= before {
        assert!(
            Instant::now() < deadline,
            "{node} did not log {needle:?} within {MEMBERSHIP:?}:\n{}",
            journey.install.speaker(node).unwrap().log().unwrap()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that from `since` on, each VIP was claimed by one MAC only: its owner's.
fn one_mac_each(
    journey: &Journey,
    frames: &[CapturedFrame],
    vips: &[Ipv4Addr],
    owners: &[MacAddr],
    since: SystemTime,
    what: &str,
) {
    for (ip, owner) in vips.iter().zip(owners) {
        let seen: Vec<_> = claims(frames, *ip)
            .into_iter()
            .filter(|(ts, _)| *ts >= since)
            .collect();
        let macs = distinct(&seen);
        let names: Vec<String> = macs.iter().map(|m| name_of(journey, *m)).collect();
        println!("{what}: {ip} claimed {} times by {names:?}", seen.len());
        assert!(!seen.is_empty(), "{what}: {ip} is still answered");
        assert_eq!(
            macs,
            BTreeSet::from([*owner]),
            "{what}: {ip} is claimed by its owner {} alone, not {names:?}",
            name_of(journey, *owner)
        );
    }
}

#[test]
fn a_node_cut_from_the_membership_leaves_one_mac_per_vip() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (journey, vips) = stage(Lab::builder().nodes(3), 3, 3);
    let macs: Vec<MacAddr> = vips.iter().map(|ip| owner(&journey, *ip).mac()).collect();
    // Either half: first the owner of the first VIP alone against the others, then the owner
    // of a VIP it does not hold.
    let first = name_of(&journey, macs[0]);
    let second = macs
        .iter()
        .map(|m| name_of(&journey, *m))
        .find(|n| *n != first)
        .expect("three VIPs on three nodes: some VIP is owned by another node");
    for cut in [first, second] {
        let others: Vec<String> = journey
            .lab
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .filter(|n| *n != cut)
            .collect();
        let dead = |n: &str| format!("member dead node=\"{n}\" member=\"{cut}\"");
        let up = |n: &str| format!("member up node=\"{n}\" member=\"{cut}\"");
        let dead_before: Vec<usize> = others
            .iter()
            .map(|n| log_count(&journey, n, &dead(n)))
            .collect();
        let up_before = log_count(&journey, &others[0], &up(&others[0]));
        let watch = Watch::start(&journey, "eth0", &vips, OBSERVE * 3);
        let cut_at = SystemTime::now();
        cut_membership(&journey, &cut);
        // Both sides see the split: the others declare the cut node dead...
        for (n, before) in others.iter().zip(&dead_before) {
            wait_log_count(&journey, n, &dead(n), *before);
        }
        // ... and then every speaker has as long as it would ever wait to act on it.
        thread::sleep(OBSERVE);
        let healed_at = SystemTime::now();
        heal_membership(&journey);
        wait_log_count(&journey, &others[0], &up(&others[0]), up_before);
        // One owner within a second of healing is the target; watch two.
        thread::sleep(Duration::from_secs(2));
        let frames = watch.stop();
        println!(
            "cut {cut} from the membership for {:?}",
            healed_at.duration_since(cut_at).unwrap()
        );
        one_mac_each(
            &journey,
            &frames,
            &vips,
            &macs,
            cut_at,
            &format!("{cut} cut off"),
        );
    }
}

#[test]
fn a_speaker_with_the_wrong_key_announces_nothing() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Four listed nodes, three speakers with the cluster's key: they hold a majority.
    let (mut journey, vips) = stage(Lab::builder().nodes(4), 3, 3);
    let owners: Vec<MacAddr> = vips.iter().map(|ip| owner(&journey, *ip).mac()).collect();
    let wrong = journey.lab.dir().join("wrong.key");
    std::fs::write(
        &wrong,
        format!("{}\n", ferrolb_e2e::install::random_key().unwrap()),
    )
    .unwrap();
    let watch = Watch::start(&journey, "eth0", &vips, OBSERVE * 3);
    let started = SystemTime::now();
    journey.install.start_speaker_keyed(4, &wrong).unwrap();
    wait_log_count(&journey, "n4", "membership started", 0);
    thread::sleep(OBSERVE);
    let frames = watch.stop();
    one_mac_each(
        &journey,
        &frames,
        &vips,
        &owners,
        started,
        "a speaker with the wrong key",
    );
    let intruder = journey.install.node(4).unwrap().mac();
    assert!(
        vips.iter()
            .all(|ip| claims(&frames, *ip).iter().all(|(_, m)| *m != intruder)),
        "n4 claimed nothing"
    );
    for i in 0..vips.len() {
        let records = journey.install.recorded_owners("demo", &format!("web{i}"));
        assert!(
            !records.iter().any(|r| r == "n4"),
            "n4 recorded nothing: {records:?}"
        );
    }
}

#[test]
fn a_cut_link_on_a_two_nic_owner_leaves_one_owner_per_segment() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (journey, vips) = stage(Lab::builder().nodes(3).second_segment(), 3, 1);
    let vip = vips[0];
    // The owner's record names both interfaces it answers on (issue 19: it said `[]`).
    let first = owner(&journey, vip);
    let record = journey
        .install
        .dir()
        .join(format!("status/l2/{}/demo/web0.yaml", first.name()));
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.contains("name: eth0") && text.contains("name: eth1"),
        "{}:\n{text}",
        record.display()
    );
    for trial in 0..3 {
        let old = owner(&journey, vip);
        let old_eth1 = old.eth1().unwrap().mac;
        let on_eth1 = Watch::start(&journey, "eth1", &[vip], OBSERVE * 2);
        let cut_at = SystemTime::now();
        let out = old.ns().ip(["link", "set", "eth0", "down"]).unwrap();
        assert!(out.status.success());
        let frames = on_eth1.wait(OBSERVE, "a new owner on eth1", |frames| {
            claims(frames, vip)
                .iter()
                .any(|(ts, m)| *ts > cut_at && *m != old_eth1)
        });
        let new_first = claims(&frames, vip)
            .into_iter()
            .find(|(ts, m)| *ts > cut_at && *m != old_eth1)
            .map(|(ts, _)| ts)
            .unwrap();
        // Watch a while longer: the old owner must not answer on eth1 after its successor did.
        thread::sleep(Duration::from_secs(1));
        let frames = on_eth1.stop();
        let old_last = claims(&frames, vip)
            .iter()
            .filter(|(ts, m)| *ts > cut_at && *m == old_eth1)
            .map(|(ts, _)| *ts)
            .max();
        let overlap = old_last
            .and_then(|last| last.duration_since(new_first).ok())
            .unwrap_or_default();
        println!(
            "trial {trial}: {}'s eth0 down; its last claim on eth1 {:?} after the cut, the successor's first {:?} after; two owners on eth1 for {overlap:?}",
            old.name(),
            old_last.map(|t| t.duration_since(cut_at).unwrap_or_default()),
            new_first.duration_since(cut_at).unwrap_or_default(),
        );
        assert!(
            old_last.is_none_or(|last| last < new_first),
            "two owners on eth1 for {overlap:?}"
        );
        let out = old.ns().ip(["link", "set", "eth0", "up"]).unwrap();
        assert!(out.status.success());
        // Settled: the old owner rejoined and has its IP back (it ranks first) before the next
        // trial.
        journey
            .arp_until("eth0", vip, MEMBERSHIP, |m| m == old.mac())
            .unwrap();
    }
}

#[test]
fn a_two_node_cluster_still_fails_over_and_a_hand_over_is_no_conflict() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Two speakers: a survivor sees exactly half of them, and takes an IP over only once the
    // wire shows its owner silent.
    let (mut journey, vips) = stage(Lab::builder().nodes(2), 2, 1);
    let vip = vips[0];
    let first = owner(&journey, vip);
    // A graceful stop first: the successor takes over make-before-break, and the one leaving
    // sees its successor's claim as a hand-over, not as a conflict with a foreign host.
    let name = first.name().to_owned();
    let log_path = journey
        .install
        .speaker(&name)
        .unwrap()
        .log_path()
        .unwrap()
        .to_owned();
    let handed = journey
        .measure_takeover(
            "eth0",
            vip,
            first.mac(),
            Duration::from_secs(5),
            |install| install.stop_speaker(&name).map(drop),
        )
        .unwrap();
    println!(
        "two nodes: {name} stopped, {} answered after {:?}",
        name_of(&journey, handed.mac),
        handed.elapsed
    );
    // Make-before-break: the successor answers at once, not after the leaving speaker's
    // linger (300 ms) and a check.
    assert!(
        handed.elapsed < Duration::from_millis(250),
        "no gap at a hand-over"
    );
    let second = handed.mac;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("IP conflict") && !log.contains("split:"),
        "a hand-over is no conflict:\n{log}"
    );
    restart(&mut journey, &name);
    // The IP returns to its first owner (it ranks first); then that owner crashes.
    journey
        .arp_until("eth0", vip, MEMBERSHIP, |m| m == first.mac())
        .unwrap();
    let takeover = journey
        .measure_takeover(
            "eth0",
            vip,
            first.mac(),
            Duration::from_secs(5),
            |install| install.kill_speaker(&name),
        )
        .unwrap();
    println!(
        "two nodes: {name} crashed, {} took over after {:?}",
        name_of(&journey, takeover.mac),
        takeover.elapsed
    );
    assert_eq!(takeover.mac, second, "the survivor took over");
    assert!(takeover.elapsed < Duration::from_secs(1), "within a second");
}

#[test]
fn a_stopped_speaker_exits_at_once_and_leaves_no_record() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, vips) = stage(Lab::builder().nodes(3).second_segment(), 3, 3);
    let mut exits = Vec::new();
    for _ in 0..3 {
        for ip in &vips {
            let node = owner(&journey, *ip).name().to_owned();
            let service = (0..vips.len())
                .map(|i| format!("web{i}"))
                .find(|s| journey.install.recorded_owners("demo", s).contains(&node))
                .expect("the owner records a Service it answers");
            let started = Instant::now();
            let status = journey.install.stop_speaker(&node).unwrap();
            let took = started.elapsed();
            exits.push(took);
            assert!(status.success(), "{node} exits cleanly: {status:?}");
            assert!(
                !journey
                    .install
                    .recorded_owners("demo", &service)
                    .contains(&node),
                "{node} removed its record of demo/{service} before exiting"
            );
            restart(&mut journey, &node);
        }
    }
    exits.sort();
    println!("SIGTERM to exit: {exits:?}");
    // The linger (300 ms) and the announcer's shutdown; nothing may keep the process after.
    assert!(
        exits
            .last()
            .is_some_and(|d| *d < Duration::from_millis(900)),
        "slowest exit {:?}",
        exits.last()
    );
}
