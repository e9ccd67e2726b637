//! The carry rules and the ARP table written over netlink, read back with `nft` inside a lab
//! node: the kernel takes the batch, the ruleset is the one documented, a new set replaces the
//! old one whole, an empty set leaves no table behind, a flushed table is noticed, and the
//! start-up probe leaves nothing either. The ARP table drops what it lists and nothing else.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ferrolb_e2e::tools::arping;
use ferrolb_e2e::{Lab, Namespace, lab_or_skip};
use ferrolb_speaker::nftables::{CarryRule, Family, Nftables};

fn apply(ns: &Namespace, rules: Vec<CarryRule>) {
    ns.within(move || Nftables::open().unwrap().apply(&rules).unwrap());
}

fn listed(ns: &Namespace) -> String {
    let out = ns.run(["nft", "list", "ruleset"]).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn rule(vip: &str, to: &str) -> CarryRule {
    CarryRule {
        vip: vip.parse().unwrap(),
        to: to.parse().unwrap(),
    }
}

#[test]
fn carry_rules_replace_each_other_whole_and_leave_nothing_when_empty() {
    lab_or_skip!("nft");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let ns = lab.nodes()[0].ns().clone();

    apply(
        &ns,
        vec![
            rule("10.250.0.100", "10.250.0.2"),
            rule("10.250.0.101", "10.250.0.3"),
            rule("fd00:250::100", "fd00:250::2"),
        ],
    );
    let text = listed(&ns);
    for line in [
        "table ip ferrolb {",
        "type filter hook prerouting priority mangle; policy accept;",
        "ip ttl > 1 tcp flags ! syn ct state new goto carried",
        "ip ttl > 1 tcp flags fin / fin,syn,rst ct state invalid goto carried",
        "ip ttl > 1 tcp flags rst / syn,rst ct state invalid goto carried",
        "ip6 hoplimit > 1 tcp flags ! syn ct state new goto carried",
        "ip daddr 10.250.0.100 counter packets 0 bytes 0 dup to 10.250.0.2 drop",
        "ip daddr 10.250.0.101 counter packets 0 bytes 0 dup to 10.250.0.3 drop",
        "table ip6 ferrolb {",
        "ip6 daddr fd00:250::100 counter packets 0 bytes 0 dup to fd00:250::2 drop",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    // A flushed ruleset is noticed.
    let exists = |ns: &Namespace| {
        ns.within(|| Family::ALL.map(|f| Nftables::open().unwrap().exists(f).unwrap()))
    };
    assert_eq!(exists(&ns), [true, true]);
    ns.run(["nft", "flush", "ruleset"]).unwrap();
    assert_eq!(exists(&ns), [false, false]);

    apply(&ns, vec![rule("10.250.0.102", "10.250.0.3")]);
    assert_eq!(exists(&ns), [true, false]);
    let text = listed(&ns);
    assert!(
        text.contains("ip daddr 10.250.0.102 counter packets 0 bytes 0 dup to 10.250.0.3 drop"),
        "{text}"
    );
    assert!(
        !text.contains("10.250.0.100"),
        "the old rules are gone:\n{text}"
    );
    assert!(!text.contains("table ip6 ferrolb"), "{text}");

    apply(&ns, vec![]);
    apply(&ns, vec![]);
    assert!(!listed(&ns).contains("ferrolb {"), "no table is left");

    // The probe removes a table a previous run left, and builds none.
    apply(&ns, vec![rule("10.250.0.100", "10.250.0.2")]);
    ns.within(|| {
        let mut nftables = Nftables::open().unwrap();
        for family in Family::ALL {
            nftables.probe(family).unwrap();
        }
    });
    assert!(
        !listed(&ns).contains("ferrolb {"),
        "the probe leaves nothing"
    );
    lab.teardown().unwrap();
}

/// A node that took over thousands of IPs at once (its peers all restarted) carries them all.
#[test]
fn thousands_of_carried_ips_fit_one_batch() {
    lab_or_skip!("nft");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let ns = lab.nodes()[0].ns().clone();
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let rules: Vec<CarryRule> = (0..n)
        .map(|i| CarryRule {
            vip: std::net::IpAddr::from([10, 251, (i >> 8) as u8, i as u8]),
            to: "10.250.0.2".parse().unwrap(),
        })
        .collect();
    apply(&ns, rules);
    let text = listed(&ns);
    assert_eq!(text.matches("dup to 10.250.0.2 drop").count(), n as usize);
    apply(&ns, vec![]);
    assert!(!listed(&ns).contains("ferrolb {"));

    // And the ARP table lists as many answered IPs.
    let answered: Vec<Ipv4Addr> = (0..n)
        .map(|i| Ipv4Addr::from([10, 251, (i >> 8) as u8, i as u8]))
        .collect();
    apply_arp(&ns, &answered);
    let text = listed(&ns);
    assert!(
        text.contains("10.251.0.0") && text.contains(&answered[answered.len() - 1].to_string())
    );
    apply_arp(&ns, &[]);
    assert!(!listed(&ns).contains("ferrolb {"));
    lab.teardown().unwrap();
}

fn apply_arp(ns: &Namespace, answered: &[Ipv4Addr]) {
    let answered: BTreeSet<Ipv4Addr> = answered.iter().copied().collect();
    ns.within(move || Nftables::open().unwrap().apply_arp(&answered).unwrap());
}

fn arp_exists(ns: &Namespace) -> bool {
    ns.within(|| Nftables::open().unwrap().arp_exists().unwrap())
}

/// The node's kernel drops ARP requests for the listed IPs (and counts them), and still
/// answers for its own address; the table follows the list and goes with an empty one.
#[test]
fn the_arp_table_drops_requests_for_the_listed_ips_only() {
    lab_or_skip!("nft");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let node = &lab.nodes()[0];
    let ns = node.ns().clone();
    let client = lab.client().ns();
    let own = node.ipv4();
    let vip: Ipv4Addr = "10.250.0.100".parse().unwrap();

    // Unlisted at first: the node's own address is what its kernel answers for.
    apply_arp(&ns, &[vip, "10.250.0.101".parse().unwrap()]);
    let text = listed(&ns);
    for line in [
        "table arp ferrolb {",
        "type ipv4_addr",
        "elements = { 10.250.0.100, 10.250.0.101 }",
        "type filter hook input priority filter; policy accept;",
        "arp daddr ip @answered counter packets 0 bytes 0 drop",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let interval = Duration::from_millis(100);
    assert_eq!(
        arping(client, "eth0", own, 2, interval).unwrap().len(),
        2,
        "the kernel still answers for the node's own address"
    );
    arping(client, "eth0", vip, 3, interval).unwrap();
    let text = listed(&ns);
    assert!(
        text.contains("@answered counter packets 3 "),
        "the three requests for the VIP were dropped, not the others:\n{text}"
    );

    // The node's own address listed: its kernel no longer answers for it.
    apply_arp(&ns, &[own]);
    assert!(arping(client, "eth0", own, 2, interval).unwrap().is_empty());
    assert!(!listed(&ns).contains("10.250.0.100"), "the old set is gone");

    // A flushed ruleset is noticed; an empty list leaves no table; the probe leaves nothing.
    assert!(arp_exists(&ns));
    ns.run(["nft", "flush", "ruleset"]).unwrap();
    assert!(!arp_exists(&ns));
    apply_arp(&ns, &[vip]);
    assert!(arp_exists(&ns));
    apply_arp(&ns, &[]);
    assert!(!arp_exists(&ns));
    apply_arp(&ns, &[vip]);
    ns.within(|| Nftables::open().unwrap().probe_arp().unwrap());
    assert!(
        !listed(&ns).contains("ferrolb {"),
        "the probe leaves nothing"
    );
    assert_eq!(
        arping(client, "eth0", own, 1, interval).unwrap().len(),
        1,
        "and the kernel answers again"
    );
    lab.teardown().unwrap();
}
