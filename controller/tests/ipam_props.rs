//! Property tests of the allocator: random interleavings of pool creates, edits and deletes and
//! Service creates, updates and deletes never put an address outside its pool, never give one
//! address to two Services that may not share it, never change an assignment that stayed
//! valid, and a fresh allocator rebuilt from the resulting status reproduces it exactly.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

mod ipam_support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_controller::ipam::{
    Allocator, Assignment, BackendKey, FamilyPolicy, Port, ServiceKey, ServiceRequest,
};
use ferrolb_proto::api::{AddressRange, IPAddressPool, IpFamily, ServiceAllocation};
use ipam_support::*;
use proptest::prelude::*;

const SHARE: &str = "metallb.io/allow-shared-ip";
const IPS: &str = "metallb.io/loadBalancerIPs";
const POOL: &str = "metallb.io/address-pool";

/// The few shapes each of three pool slots can take; small, so Services collide often.
fn pool_variant(slot: usize, variant: u8) -> Option<IPAddressPool> {
    let p = match (slot, variant % 6) {
        (_, 0) => return None,
        (0, 1) => pool("p0", &["10.0.0.0/30"]),
        (0, 2) => pool("p0", &["10.0.0.0/30", "fd00::/126"]),
        (0, 3) => pool("p0", &["10.0.0.2/31", "10.0.1.0/31"]),
        (0, 4) => pool("p0", &["10.0.0.0/30", "bogus"]),
        (0, _) => avoid_buggy(pool("p0", &["10.0.0.0/30", "fd00::/127"])),
        (1, 1) => pool("p1", &["10.0.1.0/30"]),
        (1, 2) => pool("p1", &["fd00::4/126"]),
        (1, 3) => manual(pool("p1", &["10.0.2.0/30"])),
        (1, 4) => pool("p1", &["10.0.0.0/29"]),
        (1, _) => avoid_buggy(pool("p1", &["10.0.2.254-10.0.3.1"])),
        (_, 1) => allocation(pool("p2", &["10.0.4.0/31"]), prio(1, &["a"])),
        (_, 2) => pool("p2", &["fd00::10/127", "10.0.4.0/31"]),
        (_, 3) => allocation(
            pool("p2", &["10.0.4.0/30"]),
            ServiceAllocation {
                priority: Some(2),
                ..Default::default()
            },
        ),
        (_, 4) => manual(pool("p2", &["10.0.5.0/32", "fd00::20/128"])),
        (_, _) => pool("p2", &["10.0.4.0/31"]),
    };
    Some(p)
}

/// A Service's request from a few drawn numbers.
fn request(index: u8, namespace: bool, shape: u8, detail: u8) -> ServiceRequest {
    let ns = if namespace { "a" } else { "b" };
    let r = svc(ns, &format!("s{index}"));
    let ports = [Port::tcp(80), Port::tcp(81), Port::udp(80)];
    let port = ports[usize::from(detail) % ports.len()];
    let requested = [
        "10.0.0.1", "10.0.1.1", "10.0.2.1", "fd00::1", "10.0.0.2", "10.0.4.0",
    ];
    match shape % 9 {
        0 => r,
        1 => r.with_families(FamilyPolicy::SingleStack, &[IpFamily::V6]),
        2 => r.with_families(FamilyPolicy::PreferDualStack, &[IpFamily::V4, IpFamily::V6]),
        3 => r.with_families(
            FamilyPolicy::RequireDualStack,
            &[IpFamily::V4, IpFamily::V6],
        ),
        4 => r.with_annotation(IPS, requested[usize::from(detail) % requested.len()]),
        5 => r.with_annotation(POOL, ["p0", "p1", "p2"][usize::from(detail) % 3]),
        6 => r
            .with_annotation(SHARE, "k")
            .with_ports(&[port])
            .with_backend(if detail.is_multiple_of(4) {
                BackendKey::Local([("app".into(), "x".into())].into())
            } else {
                BackendKey::Cluster
            }),
        7 => r
            .with_annotation(SHARE, "k")
            .with_ports(&[port])
            .with_annotation(IPS, "10.0.0.1"),
        _ => r
            .with_families(FamilyPolicy::PreferDualStack, &[IpFamily::V4, IpFamily::V6])
            .with_annotation(IPS, "10.0.0.1,fd00::1"),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Pools([u8; 3]),
    Upsert {
        index: u8,
        namespace: bool,
        shape: u8,
        detail: u8,
    },
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => any::<[u8; 3]>().prop_map(Op::Pools),
        4 => (0u8..6, any::<bool>(), any::<u8>(), any::<u8>()).prop_map(
            |(index, namespace, shape, detail)| Op::Upsert { index, namespace, shape, detail }
        ),
        1 => (0u8..6).prop_map(Op::Delete),
    ]
}

/// The world as the test sees it: current pool specs and Service requests.
#[derive(Default)]
struct World {
    pools: Vec<IPAddressPool>,
    requests: BTreeMap<ServiceKey, ServiceRequest>,
}

impl World {
    fn ranges_of(&self, name: &str) -> Vec<AddressRange> {
        self.pools
            .iter()
            .filter(|p| p.metadata.name.as_deref() == Some(name))
            .flat_map(|p| p.spec.addresses.iter())
            .filter_map(|a| AddressRange::parse(a).ok())
            .collect()
    }
}

fn snapshot(a: &Allocator) -> BTreeMap<ServiceKey, Assignment> {
    a.assignments().map(|(k, v)| (k.clone(), v)).collect()
}

fn sharing_of(r: &ServiceRequest) -> Option<String> {
    r.annotations.get(SHARE).cloned().filter(|k| !k.is_empty())
}

fn may_share(x: &ServiceRequest, y: &ServiceRequest) -> bool {
    let ports_disjoint = x.ports.iter().all(|p| !y.ports.contains(p));
    sharing_of(x).is_some()
        && sharing_of(x) == sharing_of(y)
        && x.backend == y.backend
        && ports_disjoint
}

fn check_invariants(a: &Allocator, world: &World) -> Result<(), TestCaseError> {
    let now = snapshot(a);
    let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceKey>> = BTreeMap::new();
    for (key, assignment) in &now {
        let ranges = world.ranges_of(&assignment.pool);
        prop_assert!(!assignment.ips.is_empty() && assignment.ips.len() <= 2);
        for ip in &assignment.ips {
            prop_assert!(
                ranges.iter().any(|r| r.contains(*ip)),
                "{key}: {ip} is outside pool {}",
                assignment.pool
            );
            by_ip.entry(*ip).or_default().push(key);
        }
        if let [x, y] = assignment.ips.as_slice() {
            prop_assert_ne!(IpFamily::of(*x), IpFamily::of(*y));
        }
    }
    for (ip, holders) in by_ip {
        for (i, x) in holders.iter().enumerate() {
            for y in holders.iter().skip(i + 1) {
                let (rx, ry) = (&world.requests[*x], &world.requests[*y]);
                prop_assert!(may_share(rx, ry), "{x} and {y} both hold {ip}");
            }
        }
    }
    Ok(())
}

/// A fresh allocator given the same pools and every Service's status reproduces the state.
fn check_rebuild(a: &Allocator, world: &World) -> Result<(), TestCaseError> {
    let mut fresh = Allocator::new();
    fresh.set_pools(world.pools.clone());
    let status: Vec<(ServiceRequest, Vec<IpAddr>)> = world
        .requests
        .values()
        .rev()
        .map(|r| match a.assignment(&r.key) {
            // The reconciler writes the pool next to the status; a restart reads both.
            Some(x) => (
                r.clone()
                    .with_annotation("metallb.io/ip-allocated-from-pool", &x.pool),
                x.ips,
            ),
            None => (r.clone(), Vec::new()),
        })
        .collect();
    fresh.rebuild(status);
    prop_assert_eq!(snapshot(&fresh), snapshot(a));
    Ok(())
}

fn run(ops: &[Op]) -> Result<BTreeMap<ServiceKey, Assignment>, TestCaseError> {
    let mut a = Allocator::new();
    let mut world = World::default();
    for op in ops {
        let before = snapshot(&a);
        match op {
            Op::Pools(variants) => {
                let old_pools = world.pools.clone();
                world.pools = (0..3)
                    .filter_map(|slot| pool_variant(slot, variants[slot]))
                    .collect();
                a.set_pools(world.pools.clone());
                // An assignment whose pool did not change keeps its addresses (it may gain
                // its second family).
                let after = snapshot(&a);
                for (key, old) in &before {
                    let spec = |pools: &[IPAddressPool]| {
                        pools
                            .iter()
                            .find(|p| p.metadata.name.as_deref() == Some(&old.pool))
                            .map(|p| p.spec.clone())
                    };
                    let unchanged =
                        spec(&old_pools).is_some() && spec(&old_pools) == spec(&world.pools);
                    if unchanged {
                        let new = after.get(key);
                        prop_assert!(new.is_some(), "{key} lost {old:?}");
                        let new = new.unwrap();
                        for ip in &old.ips {
                            prop_assert!(
                                new.ips.contains(ip),
                                "{key} lost {ip}: {old:?} -> {new:?}"
                            );
                        }
                    }
                }
            }
            Op::Upsert {
                index,
                namespace,
                shape,
                detail,
            } => {
                let r = request(*index, *namespace, *shape, *detail);
                // A Service's namespace never changes: the name is taken in the other one.
                let other_ns = svc(if *namespace { "b" } else { "a" }, &format!("s{index}")).key;
                if world.requests.contains_key(&other_ns) {
                    continue;
                }
                let same = world.requests.get(&r.key) == Some(&r);
                world.requests.insert(r.key.clone(), r.clone());
                let _ = a.assign(&r);
                a.take_updates();
                let after = snapshot(&a);
                for (key, old) in &before {
                    if *key == r.key {
                        if same {
                            let new = after.get(key);
                            prop_assert!(
                                new.is_some_and(|n| old.ips.iter().all(|ip| n.ips.contains(ip))),
                                "a resync changed {key}: {old:?} -> {new:?}"
                            );
                        }
                        continue;
                    }
                    prop_assert_eq!(after.get(key), Some(old), "{} changed {}", r.key, key);
                }
            }
            Op::Delete(index) => {
                for ns in ["a", "b"] {
                    let key = svc(ns, &format!("s{index}")).key;
                    world.requests.remove(&key);
                    a.release(&key);
                }
                let after = snapshot(&a);
                for (key, old) in &before {
                    if world.requests.contains_key(key) {
                        prop_assert_eq!(after.get(key), Some(old));
                    }
                }
            }
        }
        check_invariants(&a, &world)?;
        check_rebuild(&a, &world)?;
    }
    Ok(snapshot(&a))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let first = run(&ops)?;
        // Deterministic: the same calls give the same state.
        prop_assert_eq!(run(&ops)?, first);
    }
}
