//! Scenario tests of the allocator against MetalLB's documented behaviour: pool order, selectors,
//! sharing, dual-stack, restarts, pool edits and deletions, buggy IPs and huge pools.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

mod ipam_support;

use ferrolb_controller::ipam::{
    Allocator, BackendKey, FamilyPolicy, Port, ServiceRequest, ServiceUpdate,
};
use ferrolb_proto::api::{IpFamily, ServiceAllocation};
use ipam_support::*;

const POOL: &str = "metallb.io/address-pool";
const IPS: &str = "metallb.io/loadBalancerIPs";
const SHARE: &str = "metallb.io/allow-shared-ip";

#[test]
fn first_free_address_in_listed_entry_order() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.10-10.0.0.11", "10.0.0.0/31"])]);
    let got: Vec<String> = (0..4)
        .map(|i| give(&mut a, &svc("ns", &format!("s{i}"))))
        .collect();
    assert_eq!(
        got,
        [
            "lan: 10.0.0.10",
            "lan: 10.0.0.11",
            "lan: 10.0.0.0",
            "lan: 10.0.0.1"
        ]
    );
    // A hole is refilled first.
    a.release(&key("ns", "s1"));
    assert_eq!(give(&mut a, &svc("ns", "s9")), "lan: 10.0.0.11");
}

#[test]
fn priorities_and_namespaces() {
    let mut a = allocator(vec![
        pool("generic", &["10.0.9.0/32"]),
        allocation(pool("web-5", &["10.0.5.0/32"]), prio(5, &["web"])),
        allocation(pool("web-1", &["10.0.1.0/32"]), prio(1, &["web"])),
        allocation(
            pool("web-unset", &["10.0.0.0/32"]),
            ServiceAllocation {
                namespaces: vec!["web".into()],
                ..Default::default()
            },
        ),
        allocation(pool("web-zero", &["10.0.3.0/32"]), prio(0, &["web"])),
    ]);
    // Other namespaces only see the generic pool.
    assert_eq!(give(&mut a, &svc("db", "x")), "generic: 10.0.9.0");
    assert_eq!(
        fail(&mut a, &svc("db", "y")),
        "service db/y: no free IPv4 or IPv6 address in IPAddressPool(s) \"generic\"; free \
         some, or add addresses to a pool"
    );
    a.release(&key("db", "y"));
    a.release(&key("db", "x"));
    // web: 1, then 5, then the unnumbered ones by name (unset == 0), then generic.
    let order: Vec<String> = (0..5)
        .map(|i| give(&mut a, &svc("web", &format!("s{i}"))))
        .collect();
    assert_eq!(
        order,
        [
            "web-1: 10.0.1.0",
            "web-5: 10.0.5.0",
            "web-unset: 10.0.0.0",
            "web-zero: 10.0.3.0",
            "generic: 10.0.9.0"
        ]
    );
}

#[test]
fn equal_priorities_are_broken_by_name() {
    for pools in [["b", "a"], ["a", "b"]] {
        let mut a = allocator(
            pools
                .iter()
                .map(|n| {
                    let addr = if *n == "a" {
                        "10.0.1.0/32"
                    } else {
                        "10.0.2.0/32"
                    };
                    allocation(pool(n, &[addr]), prio(3, &[]))
                })
                .collect(),
        );
        assert_eq!(give(&mut a, &svc("ns", "s")), "a: 10.0.1.0");
    }
}

#[test]
fn a_priority_only_pool_goes_before_generic_pools_for_everyone() {
    let mut a = allocator(vec![
        pool("a-generic", &["10.0.1.0/32"]),
        allocation(pool("z-prio", &["10.0.2.0/32"]), prio(2, &[])),
    ]);
    assert_eq!(give(&mut a, &svc("any", "s")), "z-prio: 10.0.2.0");
}

#[test]
fn namespace_and_service_selectors() {
    let mut a = allocator(vec![
        pool("generic", &["10.0.9.0/24"]),
        allocation(
            pool("team-a", &["10.0.1.0/24"]),
            ServiceAllocation {
                namespace_selectors: vec![selector("team", "a")],
                ..Default::default()
            },
        ),
        allocation(
            pool("edge", &["10.0.2.0/24"]),
            ServiceAllocation {
                service_selectors: vec![selector("tier", "edge"), selector("tier", "dmz")],
                ..Default::default()
            },
        ),
        allocation(
            pool("web-edge", &["10.0.3.0/24"]),
            ServiceAllocation {
                priority: Some(1),
                namespaces: vec!["web".into()],
                service_selectors: vec![selector("tier", "edge")],
                ..Default::default()
            },
        ),
    ]);
    let team_a = svc("x", "s1").with_namespace_label("team", "a");
    assert_eq!(give(&mut a, &team_a), "team-a: 10.0.1.0");
    let team_b = svc("x", "s2").with_namespace_label("team", "b");
    assert_eq!(give(&mut a, &team_b), "generic: 10.0.9.0");
    // Selectors of one list are ORed.
    let dmz = svc("x", "s3").with_label("tier", "dmz");
    assert_eq!(give(&mut a, &dmz), "edge: 10.0.2.0");
    // Namespace AND service selector: both must hold.
    let web_edge = svc("web", "s4").with_label("tier", "edge");
    assert_eq!(give(&mut a, &web_edge), "web-edge: 10.0.3.0");
    let web_plain = svc("web", "s5");
    assert_eq!(give(&mut a, &web_plain), "generic: 10.0.9.1");
}

#[test]
fn a_pool_without_auto_assign_serves_only_those_who_ask() {
    let mut a = allocator(vec![manual(pool("manual", &["10.0.0.0/30"]))]);
    assert_eq!(
        fail(&mut a, &svc("ns", "auto")),
        "service ns/auto: no IPAddressPool with autoAssign serves namespace \"ns\" and this \
         Service's labels; add a pool, or name one with annotation metallb.io/address-pool"
    );
    let named = svc("ns", "named").with_annotation(POOL, "manual");
    assert_eq!(give(&mut a, &named), "manual: 10.0.0.0");
    let by_ip = svc("ns", "by-ip").with_annotation(IPS, "10.0.0.3");
    assert_eq!(give(&mut a, &by_ip), "manual: 10.0.0.3");
    let both = svc("ns", "both")
        .with_annotation(POOL, "manual")
        .with_load_balancer_ip("10.0.0.2");
    assert_eq!(give(&mut a, &both), "manual: 10.0.0.2");
    // The waiting Service is served once the pool allows automatic allocation.
    let mut open = pool("manual", &["10.0.0.0/30"]);
    open.spec.auto_assign = true;
    let change = a.set_pools(vec![open]);
    assert_eq!(
        change.updates,
        [ServiceUpdate::Allocated {
            service: key("ns", "auto"),
            assignment: ferrolb_controller::ipam::Assignment {
                pool: "manual".into(),
                ips: ips(&["10.0.0.1"]),
            },
        }]
    );
}

#[test]
fn sharing_is_gained_and_lost_as_ports_change() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24"])]);
    let dns_tcp = svc("ns", "dns-tcp")
        .with_annotation(SHARE, "dns")
        .with_ports(&[Port::tcp(53)]);
    let dns_udp = svc("ns", "dns-udp")
        .with_annotation(SHARE, "dns")
        .with_ports(&[Port::udp(53)]);
    assert_eq!(give(&mut a, &dns_tcp), "lan: 10.0.0.0");
    // Automatic allocation joins the first shareable address.
    assert_eq!(give(&mut a, &dns_udp), "lan: 10.0.0.0");
    assert_eq!(a.holders(ip("10.0.0.0")).len(), 2);
    let stats = a.pool_stats_for("lan").unwrap();
    assert_eq!(stats.ipv4.assigned, 1);

    // dns-udp now also listens on TCP/53: it no longer fits and moves; dns-tcp stays.
    let clash = dns_udp.clone().with_ports(&[Port::udp(53), Port::tcp(53)]);
    assert_eq!(give(&mut a, &clash), "lan: 10.0.0.1");
    assert_eq!(holds(&a, "ns", "dns-tcp").unwrap(), "lan: 10.0.0.0");
    // Back to UDP only: its new address is valid, it stays there.
    assert_eq!(give(&mut a, &dns_udp), "lan: 10.0.0.1");
    // A third Service with the key joins the first address it fits on.
    let dns_udp2 = svc("ns", "dns-udp2")
        .with_annotation(SHARE, "dns")
        .with_ports(&[Port::udp(53)]);
    assert_eq!(give(&mut a, &dns_udp2), "lan: 10.0.0.0");
}

#[test]
fn sharing_follows_the_traffic_policy_and_selector() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24"])]);
    let local = |name: &str, app: &str, port: u16| {
        svc("ns", name)
            .with_annotation(SHARE, "k")
            .with_ports(&[Port::tcp(port)])
            .with_backend(BackendKey::Local(
                [("app".to_string(), app.to_string())].into(),
            ))
    };
    assert_eq!(give(&mut a, &local("a", "x", 80)), "lan: 10.0.0.0");
    assert_eq!(give(&mut a, &local("b", "x", 443)), "lan: 10.0.0.0");
    // b selects other pods now: with Local traffic it cannot share a node with a.
    assert_eq!(give(&mut a, &local("b", "y", 443)), "lan: 10.0.0.1");
    // c is Cluster: it shares with neither Local Service, gets the next free address.
    let cluster = svc("ns", "c")
        .with_annotation(SHARE, "k")
        .with_ports(&[Port::tcp(8080)]);
    assert_eq!(give(&mut a, &cluster), "lan: 10.0.0.2");
    // b back to app=x: its address is still valid, so it stays (no needless change).
    assert_eq!(give(&mut a, &local("b", "x", 443)), "lan: 10.0.0.1");
    // A Service with a different key never shares.
    let other = svc("ns", "d")
        .with_annotation(SHARE, "other")
        .with_annotation(IPS, "10.0.0.0");
    assert!(fail(&mut a, &other).contains("keys differ"));
}

#[test]
fn losing_the_sharing_key_moves_the_service_that_changed() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24"])]);
    let s1 = svc("ns", "s1")
        .with_annotation(SHARE, "k")
        .with_ports(&[Port::tcp(1)]);
    let s2 = svc("ns", "s2")
        .with_annotation(SHARE, "k")
        .with_ports(&[Port::tcp(2)]);
    give(&mut a, &s1);
    give(&mut a, &s2);
    let s2_alone = svc("ns", "s2").with_ports(&[Port::tcp(2)]);
    assert_eq!(give(&mut a, &s2_alone), "lan: 10.0.0.1");
    assert_eq!(holds(&a, "ns", "s1").unwrap(), "lan: 10.0.0.0");
    // The sole holder may drop its key and keep its address.
    let s1_alone = svc("ns", "s1").with_ports(&[Port::tcp(1)]);
    assert_eq!(give(&mut a, &s1_alone), "lan: 10.0.0.0");
}

fn dual(name: &str, policy: FamilyPolicy, families: &[IpFamily]) -> ServiceRequest {
    svc("ns", name).with_families(policy, families)
}

#[test]
fn single_stack_takes_the_primary_family() {
    let mut a = allocator(vec![pool("dual", &["fd00::/120", "10.0.0.0/24"])]);
    let v6 = dual("v6", FamilyPolicy::SingleStack, &[IpFamily::V6]);
    assert_eq!(give(&mut a, &v6), "dual: fd00::");
    let v4 = dual("v4", FamilyPolicy::SingleStack, &[IpFamily::V4]);
    assert_eq!(give(&mut a, &v4), "dual: 10.0.0.0");
    // Families unknown: the first free address in listed order.
    assert_eq!(give(&mut a, &svc("ns", "any")), "dual: fd00::1");
}

/// Issue 19: ingress lists the primary family (`spec.ipFamilies[0]`) first, as MetalLB does;
/// IPv4 first only when the families are not known (automatic dual-stack).
#[test]
fn require_dual_stack_takes_both_from_one_pool_primary_family_first() {
    let mut a = allocator(vec![
        allocation(pool("a-v4", &["10.0.1.0/24"]), prio(1, &[])),
        pool("b-dual", &["fd00::/120", "10.0.2.0/24"]),
    ]);
    let req = dual(
        "r",
        FamilyPolicy::RequireDualStack,
        &[IpFamily::V6, IpFamily::V4],
    );
    assert_eq!(give(&mut a, &req), "b-dual: fd00::,10.0.2.0");
    let v4_first = dual(
        "s",
        FamilyPolicy::RequireDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &v4_first), "b-dual: 10.0.2.1,fd00::1");
    let unknown = dual("t", FamilyPolicy::RequireDualStack, &[]);
    assert_eq!(give(&mut a, &unknown), "b-dual: 10.0.2.2,fd00::2");
    // Kept as they are, also after a restart.
    assert_eq!(give(&mut a, &req), "b-dual: fd00::,10.0.2.0");
    let mut restarted = allocator(vec![pool("b-dual", &["fd00::/120", "10.0.2.0/24"])]);
    let rebuilt = restarted.rebuild(vec![(req.clone(), ips(&["fd00::", "10.0.2.0"]))]);
    assert_eq!(
        rebuilt[0].result.as_ref().map(show),
        Ok("b-dual: fd00::,10.0.2.0".into())
    );
    assert!(!rebuilt[0].changed());

    let mut b = allocator(vec![
        pool("v4", &["10.0.1.0/24"]),
        pool("v6", &["fd00::/120"]),
    ]);
    assert_eq!(
        fail(&mut b, &req),
        "service ns/r: RequireDualStack needs a pool with both IPv4 and IPv6 addresses, and none \
         that serves this Service has both; add the missing family to a pool, or use \
         PreferDualStack"
    );
}

#[test]
fn prefer_dual_stack_takes_a_dual_pool_if_any() {
    let mut a = allocator(vec![
        allocation(pool("a-v4", &["10.0.1.0/24"]), prio(1, &[])),
        pool("b-dual", &["10.0.2.0/24", "fd00::/120"]),
    ]);
    let p = dual(
        "p",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &p), "b-dual: 10.0.2.0,fd00::");
    let q = dual(
        "q",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V6, IpFamily::V4],
    );
    assert_eq!(give(&mut a, &q), "b-dual: fd00::1,10.0.2.1");
}

#[test]
fn prefer_dual_stack_gains_the_missing_family_from_its_own_pool() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24"])]);
    let p = dual(
        "p",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &p), "lan: 10.0.0.0");
    let change = a.set_pools(vec![pool("lan", &["10.0.0.0/24", "fd00::/120"])]);
    assert!(matches!(
        change.updates.as_slice(),
        [ServiceUpdate::Changed { assignment, .. }] if show(assignment) == "lan: 10.0.0.0,fd00::"
    ));
    // Resync changes nothing.
    assert_eq!(give(&mut a, &p), "lan: 10.0.0.0,fd00::");
}

#[test]
fn prefer_dual_stack_does_not_jump_to_a_new_dual_pool() {
    let mut a = allocator(vec![pool("v4", &["10.0.0.0/24"])]);
    let p = dual(
        "p",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &p), "v4: 10.0.0.0");
    let change = a.set_pools(vec![
        pool("v4", &["10.0.0.0/24"]),
        pool("dual", &["10.0.1.0/24", "fd00::/120"]),
    ]);
    assert!(change.updates.is_empty());
    assert_eq!(give(&mut a, &p), "v4: 10.0.0.0");
    // A new PreferDualStack Service does take the dual pool.
    let q = dual(
        "q",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &q), "dual: 10.0.1.0,fd00::");
}

#[test]
fn prefer_dual_stack_waits_for_a_free_address_of_the_missing_family() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/30", "fd00::1/128"])]);
    let hog = dual("hog", FamilyPolicy::SingleStack, &[IpFamily::V6]);
    assert_eq!(give(&mut a, &hog), "lan: fd00::1");
    let p = dual(
        "p",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    );
    assert_eq!(give(&mut a, &p), "lan: 10.0.0.0");
    a.release(&key("ns", "hog"));
    assert_eq!(give(&mut a, &p), "lan: 10.0.0.0,fd00::1");
}

#[test]
fn dual_stack_becoming_single_stack_keeps_the_primary_address() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24", "fd00::/120"])]);
    let p = dual(
        "p",
        FamilyPolicy::RequireDualStack,
        &[IpFamily::V6, IpFamily::V4],
    );
    assert_eq!(give(&mut a, &p), "lan: fd00::,10.0.0.0");
    let s = dual("p", FamilyPolicy::SingleStack, &[IpFamily::V6]);
    assert_eq!(give(&mut a, &s), "lan: fd00::");
    assert_eq!(a.pool_stats_for("lan").unwrap().ipv4.assigned, 0);
}

#[test]
fn requested_dual_stack_addresses_keep_request_order() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/24", "fd00::/120"])]);
    let p = dual(
        "p",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    )
    .with_annotation(IPS, "fd00::5, 10.0.0.5");
    assert_eq!(give(&mut a, &p), "lan: fd00::5,10.0.0.5");
    // One requested address is all a PreferDualStack Service gets: nothing is added.
    let one = dual(
        "q",
        FamilyPolicy::PreferDualStack,
        &[IpFamily::V4, IpFamily::V6],
    )
    .with_annotation(IPS, "10.0.0.6");
    assert_eq!(give(&mut a, &one), "lan: 10.0.0.6");
}

fn busy_allocator() -> (Allocator, Vec<ServiceRequest>) {
    let pools = vec![
        pool("a", &["10.0.0.0/29", "fd00::/125"]),
        allocation(pool("b", &["10.0.1.0/30"]), prio(1, &["web"])),
        manual(pool("c", &["10.0.2.0/30"])),
    ];
    let mut a = allocator(pools);
    let requests = vec![
        svc("web", "w1"),
        svc("web", "w2"),
        svc("web", "w3"),
        svc("web", "w4"),
        svc("web", "w5")
            .with_annotation(SHARE, "k")
            .with_ports(&[Port::tcp(80)]),
        svc("web", "w6")
            .with_annotation(SHARE, "k")
            .with_ports(&[Port::tcp(81)]),
        svc("db", "d1").with_families(
            FamilyPolicy::RequireDualStack,
            &[IpFamily::V4, IpFamily::V6],
        ),
        svc("db", "d2").with_annotation(POOL, "c"),
        svc("db", "d3").with_annotation(IPS, "10.0.0.7"),
        svc("db", "d4").with_families(FamilyPolicy::PreferDualStack, &[IpFamily::V6, IpFamily::V4]),
    ];
    for r in &requests {
        a.assign(r).unwrap();
    }
    // Holes: release two and reallocate one elsewhere.
    a.release(&key("web", "w1"));
    a.release(&key("web", "w3"));
    (a, requests)
}

#[test]
fn five_restarts_change_nothing() {
    let (a, requests) = busy_allocator();
    let pools = vec![
        pool("a", &["10.0.0.0/29", "fd00::/125"]),
        allocation(pool("b", &["10.0.1.0/30"]), prio(1, &["web"])),
        manual(pool("c", &["10.0.2.0/30"])),
    ];
    let before: Vec<_> = a.assignments().map(|(k, v)| (k.clone(), v)).collect();
    let mut current = a;
    for round in 0..5 {
        let mut status: Vec<(ServiceRequest, Vec<std::net::IpAddr>)> = requests
            .iter()
            .filter(|r| !matches!(r.key.name(), "w1" | "w3"))
            .map(|r| {
                let ips = current
                    .assignment(&r.key)
                    .map(|a| a.ips)
                    .unwrap_or_default();
                (r.clone(), ips)
            })
            .collect();
        // The API server's list order must not matter.
        let n = status.len();
        status.rotate_left(round * 3 % n);
        status.reverse();
        let mut fresh = Allocator::new();
        fresh.set_pools(pools.clone());
        let outcomes = fresh.rebuild(status);
        assert!(
            outcomes.iter().all(|o| !o.changed() && o.problem.is_none()),
            "{outcomes:?}"
        );
        let after: Vec<_> = fresh.assignments().map(|(k, v)| (k.clone(), v)).collect();
        assert_eq!(after, before, "round {round}");
        current = fresh;
    }
}

#[test]
fn rebuild_restores_assigned_services_before_allocating_pending_ones() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/31"])]);
    // "a-new" sorts first but has no status; it must not take z-old's address.
    let outcomes = a.rebuild(vec![
        (svc("ns", "a-new"), vec![]),
        (svc("ns", "z-old"), ips(&["10.0.0.0"])),
    ]);
    assert_eq!(holds(&a, "ns", "z-old").unwrap(), "lan: 10.0.0.0");
    assert_eq!(holds(&a, "ns", "a-new").unwrap(), "lan: 10.0.0.1");
    assert!(
        outcomes
            .iter()
            .find(|o| o.service == key("ns", "a-new"))
            .unwrap()
            .changed()
    );
    assert!(
        !outcomes
            .iter()
            .find(|o| o.service == key("ns", "z-old"))
            .unwrap()
            .changed()
    );
}

#[test]
fn rebuild_replaces_stale_status() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/30"])]);
    let outcomes = a.rebuild(vec![
        (svc("ns", "gone"), ips(&["192.168.0.1"])),
        (
            svc("ns", "moved").with_annotation(IPS, "10.0.0.3"),
            ips(&["10.0.0.1"]),
        ),
    ]);
    assert_eq!(holds(&a, "ns", "gone").unwrap(), "lan: 10.0.0.0");
    assert_eq!(holds(&a, "ns", "moved").unwrap(), "lan: 10.0.0.3");
    let problems: Vec<String> = outcomes
        .iter()
        .map(|o| o.problem.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        problems,
        [
            "service ns/gone: status.loadBalancer.ingress \"192.168.0.1\": 192.168.0.1 is in no \
             IPAddressPool; use an address from a pool, or add a pool that holds it",
            "service ns/moved: status.loadBalancer.ingress \"10.0.0.1\" no longer matches \
             annotation metallb.io/loadBalancerIPs \"10.0.0.3\"; the Service gets the requested \
             addresses instead",
        ]
    );
}

#[test]
fn a_restart_keeps_the_address_of_a_service_whose_request_became_unreadable() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/30"])]);
    let typo = svc("ns", "typo").with_annotation(IPS, "10.0.0.x");
    let outcomes = a.rebuild(vec![
        (typo, ips(&["10.0.0.0"])),
        (svc("ns", "other"), vec![]),
    ]);
    assert_eq!(holds(&a, "ns", "typo").unwrap(), "lan: 10.0.0.0");
    assert_eq!(holds(&a, "ns", "other").unwrap(), "lan: 10.0.0.1");
    assert_eq!(outcomes[1].problem.as_ref().unwrap().reason(), "InvalidIP");
    // Once readable, the Service is handled normally.
    give(&mut a, &svc("ns", "typo").with_annotation(IPS, "10.0.0.3"));
    assert_eq!(holds(&a, "ns", "typo").unwrap(), "lan: 10.0.0.3");
}

#[test]
fn an_unreadable_request_keeps_the_old_assignment() {
    let mut a = allocator(vec![pool("lan", &["10.0.0.0/30"])]);
    give(&mut a, &svc("ns", "s"));
    let err = a
        .assign(&svc("ns", "s").with_annotation(IPS, "10.0.0.1,10.0.0.2"))
        .unwrap_err();
    assert!(err.is_unreadable_request());
    assert_eq!(holds(&a, "ns", "s").unwrap(), "lan: 10.0.0.0");
}

#[test]
fn an_address_that_moved_to_another_pool_keeps_its_service() {
    let mut a = allocator(vec![pool("old", &["10.0.0.0/30"])]);
    give(&mut a, &svc("ns", "s"));
    let change = a.set_pools(vec![
        pool("old", &["10.0.1.0/30"]),
        pool("new", &["10.0.0.0/29"]),
    ]);
    assert_eq!(
        change.updates,
        [ServiceUpdate::Moved {
            service: key("ns", "s"),
            from_pool: "old".into(),
            assignment: ferrolb_controller::ipam::Assignment {
                pool: "new".into(),
                ips: ips(&["10.0.0.0"]),
            },
        }]
    );
}

#[test]
fn deleting_one_pool_then_all_pools() {
    let mut a = allocator(vec![
        pool("a", &["10.0.0.0/30"]),
        pool("b", &["10.0.1.0/30"]),
    ]);
    give(&mut a, &svc("ns", "on-a").with_annotation(POOL, "a"));
    give(&mut a, &svc("ns", "on-b").with_annotation(POOL, "b"));
    give(&mut a, &svc("ns", "auto"));

    let change = a.set_pools(vec![pool("b", &["10.0.1.0/30"])]);
    let summary: Vec<String> = change
        .updates
        .iter()
        .map(|u| match u {
            ServiceUpdate::Reallocated {
                service,
                assignment,
                why,
                ..
            } => {
                format!("{service} -> {} ({})", show(assignment), why.reason())
            }
            ServiceUpdate::Cleared { service, error, .. } => {
                format!("{service} cleared: {}", error.reason())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "ns/auto -> b: 10.0.1.1 (IPNotInPool)",
            "ns/on-a cleared: UnknownPool",
        ]
    );

    let change = a.set_pools(vec![]);
    let cleared: Vec<String> = change
        .updates
        .iter()
        .map(|u| match u {
            ServiceUpdate::Cleared { service, error, .. } => format!("{service}: {error}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        cleared,
        [
            "ns/auto: service ns/auto: no IPAddressPool with autoAssign serves namespace \"ns\" \
             and this Service's labels; add a pool, or name one with annotation \
             metallb.io/address-pool",
            "ns/on-b: service ns/on-b: annotation metallb.io/address-pool \"b\": no \
             IPAddressPool has that name; known pools: none",
        ]
    );
    assert_eq!(a.assignments().count(), 0);
    assert_eq!(a.pending().count(), 3);
    // A pool comes back: every waiting Service gets an address, by name.
    let change = a.set_pools(vec![pool("a", &["10.0.0.0/30"])]);
    let got: Vec<String> = change
        .updates
        .iter()
        .map(|u| format!("{} {}", u.service(), show(u.assignment().unwrap())))
        .collect();
    assert_eq!(got, ["ns/auto a: 10.0.0.0", "ns/on-a a: 10.0.0.1"]);
}

#[test]
fn a_single_address_pool_is_handed_on_when_its_service_goes() {
    let mut a = allocator(vec![pool("one", &["10.0.0.1/32"])]);
    assert_eq!(give(&mut a, &svc("ns", "first")), "one: 10.0.0.1");
    assert_eq!(
        fail(&mut a, &svc("ns", "second")),
        "service ns/second: no free IPv4 or IPv6 address in IPAddressPool(s) \"one\"; free some, \
         or add addresses to a pool"
    );
    // "first" is deleted, or turned into a ClusterIP Service: both are a release.
    let released = a.release(&key("ns", "first"));
    assert_eq!(show(&released.assignment.unwrap()), "one: 10.0.0.1");
    assert_eq!(released.updates.len(), 1);
    assert_eq!(
        show(released.updates[0].assignment().unwrap()),
        "one: 10.0.0.1"
    );
    assert_eq!(released.updates[0].service(), &key("ns", "second"));
}

#[test]
fn another_service_moving_away_hands_its_address_on() {
    let mut a = allocator(vec![
        pool("one", &["10.0.0.1/32"]),
        manual(pool("m", &["10.0.9.0/32"])),
    ]);
    give(&mut a, &svc("ns", "first"));
    fail(&mut a, &svc("ns", "second"));
    give(&mut a, &svc("ns", "first").with_annotation(POOL, "m"));
    let updates = a.take_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(show(updates[0].assignment().unwrap()), "one: 10.0.0.1");
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut a = allocator(vec![avoid_buggy(pool(
        "b",
        &["10.0.0.254-10.0.1.1", "fd00::/127"],
    ))]);
    let got: Vec<String> = (0..4)
        .map(|i| give(&mut a, &svc("ns", &format!("s{i}"))))
        .collect();
    // IPv6 is never skipped.
    assert_eq!(
        got,
        ["b: 10.0.0.254", "b: 10.0.1.1", "b: fd00::", "b: fd00::1"]
    );
    let stats = a.pool_stats_for("b").unwrap();
    assert_eq!((stats.ipv4.capacity, stats.ipv4.available), (2, 0));
}

#[test]
fn without_avoid_buggy_ips_a_slash_30_gives_four() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    let got: Vec<String> = (0..4)
        .map(|i| give(&mut a, &svc("ns", &format!("s{i}"))))
        .collect();
    assert_eq!(
        got,
        ["p: 10.0.0.0", "p: 10.0.0.1", "p: 10.0.0.2", "p: 10.0.0.3"]
    );
}

#[test]
fn turning_avoid_buggy_ips_on_moves_services_off_buggy_addresses() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    give(&mut a, &svc("ns", "zero"));
    give(&mut a, &svc("ns", "one"));
    let change = a.set_pools(vec![avoid_buggy(pool("p", &["10.0.0.0/30"]))]);
    assert!(matches!(
        change.updates.as_slice(),
        [ServiceUpdate::Reallocated { service, assignment, why, .. }]
            if *service == key("ns", "zero") && show(assignment) == "p: 10.0.0.2"
            && why.reason() == "BuggyIP"
    ));
}

#[test]
fn huge_pools_report_their_true_size() {
    let a = allocator(vec![
        pool("v6", &["fd00::/64"]),
        pool("v4", &["10.0.0.0/8"]),
    ]);
    let v6 = a.pool_stats_for("v6").unwrap();
    assert_eq!(v6.ipv6.capacity, 1 << 64);
    assert_eq!(v6.status().available_ipv6, i64::MAX);
    assert_eq!(
        a.pool_stats_for("v4").unwrap().status().available_ipv4,
        1 << 24
    );

    let mut a = allocator(vec![pool("all", &["::/0"]), pool("v4", &["0.0.0.0/0"])]);
    let stats = a.pool_stats_for("all").unwrap();
    assert_eq!(stats.ipv6.capacity, u128::MAX);
    let req = svc("ns", "s").with_families(FamilyPolicy::SingleStack, &[IpFamily::V6]);
    assert_eq!(give(&mut a, &req), "all: ::");
    let last = svc("ns", "last").with_annotation(IPS, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    assert_eq!(
        give(&mut a, &last),
        "all: ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    assert_eq!(a.pool_stats_for("all").unwrap().ipv6.assigned, 2);
    assert_eq!(a.pool_stats_for("v4").unwrap().ipv4.capacity, 1 << 32);
}

#[test]
fn a_pool_that_becomes_invalid_is_frozen() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    give(&mut a, &svc("ns", "held"));
    // A typo in an edit: the pool hands out nothing, but "held" keeps its address.
    let change = a.set_pools(vec![pool("p", &["10.0.0.0/30", "10.0.1.0/33"])]);
    assert_eq!(change.problems.len(), 1);
    assert!(change.updates.is_empty());
    assert_eq!(holds(&a, "ns", "held").unwrap(), "p: 10.0.0.0");
    assert_eq!(give(&mut a, &svc("ns", "held")), "p: 10.0.0.0");
    assert_eq!(
        fail(&mut a, &svc("ns", "new").with_annotation(IPS, "10.0.0.1")),
        "service ns/new: IPAddressPool \"p\" is invalid and hands out no addresses: \
         spec.addresses[1] \"10.0.1.0/33\": prefix length \"33\" is not a number from 0 to 32"
    );
    let stats = a.pool_stats_for("p").unwrap();
    assert_eq!(
        (stats.valid, stats.ipv4.assigned, stats.ipv4.available),
        (false, 1, 0)
    );
    // And across a restart.
    let mut fresh = Allocator::new();
    fresh.set_pools(vec![pool("p", &["10.0.0.0/30", "10.0.1.0/33"])]);
    let outcomes = fresh.rebuild(vec![
        (svc("ns", "held"), ips(&["10.0.0.0"])),
        (svc("ns", "new"), vec![]),
    ]);
    assert!(!outcomes[0].changed());
    assert_eq!(
        outcomes[1].result.as_ref().unwrap_err().reason(),
        "NoMatchingPool"
    );
    // Fixed: the waiting Service is served.
    let change = fresh.set_pools(vec![pool("p", &["10.0.0.0/30"])]);
    assert_eq!(change.updates.len(), 1);
    assert_eq!(holds(&fresh, "ns", "new").unwrap(), "p: 10.0.0.1");
}

#[test]
fn an_overlapping_newcomer_is_rejected_and_the_older_pool_keeps_serving() {
    let mut a = allocator(vec![pool("a-old", &["10.0.0.0/29"])]);
    give(&mut a, &svc("ns", "s"));
    let mut newcomer = pool("b-new", &["10.0.0.4/30", "10.0.5.0/30"]);
    newcomer.spec.service_allocation = Some(prio(1, &[]));
    let change = a.set_pools(vec![pool("a-old", &["10.0.0.0/29"]), newcomer]);
    assert_eq!(change.problems.len(), 1);
    assert_eq!(change.problems[0].pool, "metallb-system/b-new");
    assert_eq!(give(&mut a, &svc("ns", "t")), "a-old: 10.0.0.1");
}

#[test]
fn a_pool_that_stops_admitting_a_service_moves_it() {
    let mut a = allocator(vec![
        allocation(pool("web", &["10.0.1.0/30"]), prio(1, &["web", "db"])),
        pool("generic", &["10.0.9.0/30"]),
    ]);
    assert_eq!(give(&mut a, &svc("db", "s")), "web: 10.0.1.0");
    let change = a.set_pools(vec![
        allocation(pool("web", &["10.0.1.0/30"]), prio(1, &["web"])),
        pool("generic", &["10.0.9.0/30"]),
    ]);
    match change.updates.as_slice() {
        [
            ServiceUpdate::Reallocated {
                assignment, why, ..
            },
        ] => {
            assert_eq!(show(assignment), "generic: 10.0.9.0");
            assert_eq!(
                why.to_string(),
                "service db/s: IPAddressPool \"web\" does not serve this Service: namespace \
                 \"db\" is not in spec.serviceAllocation.namespaces [\"web\"]"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_same_calls_give_the_same_results() {
    let run = || {
        let (a, _) = busy_allocator();
        a.assignments()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
