//! Owner election: which node announces an IP, computed identically by every speaker.
//!
//! Rendezvous (highest-random-weight) hashing: each candidate node gets a score from a hash of
//! (node name, election key), and candidates are ranked by score. The first one owns the key.
//! When a node leaves, only the keys it owned move; when it returns, they come back. Services
//! sharing an IP use that IP as key and so elect the same node.
//!
//! The hash is SHA-256, fixed here for good: every speaker of every version must rank alike, so
//! changing it is a wire-protocol change.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// What an election is about: a Service's first ingress IP, so all its IPs (and every Service
/// sharing that IP) go to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElectionKey(pub IpAddr);

impl ElectionKey {
    /// The key of a Service: its first ingress IP, as written in its status. `None` when the
    /// Service has no IP yet.
    pub fn for_service(ingress_ips: &[IpAddr]) -> Option<Self> {
        ingress_ips.first().copied().map(ElectionKey)
    }
}

/// A node's standing in one election; lower ranks first. Public so that two speakers that both
/// claim an IP can settle who keeps it by the order the election would have chosen
/// ([`crate::wire::mark`]).
pub fn score(node: &str, key: ElectionKey) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(node.as_bytes());
    // The separator keeps ("ab", key) and ("a", "b"+key) apart.
    hash.update([0u8]);
    match key.0 {
        IpAddr::V4(ip) => hash.update(ip.octets()),
        IpAddr::V6(ip) => hash.update(ip.octets()),
    }
    hash.finalize().into()
}

/// The candidates in election order for `key`: the owner first, then its successors. Duplicate
/// names count once; ties (impossible in practice) fall back to the name so the order is total.
pub fn ranking<'a, I>(key: ElectionKey, candidates: I) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut scored: Vec<([u8; 32], &'a str)> = candidates
        .into_iter()
        .map(|node| (score(node, key), node))
        .collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The node that announces `key`, or `None` when there is no candidate. O(n), no allocation.
pub fn owner<'a, I>(key: ElectionKey, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    candidates
        .into_iter()
        .map(|node| (score(node, key), node))
        .min()
        .map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    fn key(n: u32) -> ElectionKey {
        ElectionKey(IpAddr::V4(Ipv4Addr::from(0x0a00_0000_u32.wrapping_add(n))))
    }

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn a_known_ranking_never_changes() {
        // Pinned (computed independently with Python's hashlib) so an accidental change of hash
        // or encoding fails here, not in a mixed-version cluster.
        let names = ["n1", "n2", "n3"];
        let at = |ip: &str| ranking(ElectionKey(ip.parse().unwrap()), names);
        assert_eq!(at("10.250.0.100"), ["n1", "n2", "n3"]);
        assert_eq!(at("10.250.0.101"), ["n3", "n2", "n1"]);
        assert_eq!(at("10.250.0.104"), ["n1", "n3", "n2"]);
        let k = ElectionKey("10.250.0.100".parse().unwrap());
        assert_eq!(hex(&score("n1", k)[..8]), "5d3096c3653e099f");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn no_candidates_no_owner() {
        assert_eq!(owner(key(1), []), None);
        assert!(ranking(key(1), []).is_empty());
    }

    #[test]
    fn duplicates_count_once() {
        assert_eq!(ranking(key(7), ["a", "b", "a", "b"]).len(), 2);
    }

    #[test]
    fn ten_nodes_share_ten_thousand_ips_evenly() {
        let names = nodes(10);
        let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..10_000 {
            let node = owner(key(i), names.iter().map(String::as_str)).unwrap();
            *owned.entry(node).or_default() += 1;
        }
        assert_eq!(owned.len(), 10);
        for (node, count) in owned {
            assert!(
                (850..=1150).contains(&count),
                "{node} owns {count} of 10000 IPs"
            );
        }
    }

    #[test]
    fn ipv6_keys_elect_too() {
        let k = ElectionKey(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        assert!(owner(k, ["a", "b"]).is_some());
    }

    fn node_set() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z][a-z0-9-]{0,12}", 1..12)
            .prop_map(|set| set.into_iter().collect())
    }

    proptest! {
        #[test]
        fn owner_ignores_input_order(names in node_set(), seed in any::<u32>(), rotate in 0usize..12) {
            let k = key(seed);
            let mut shuffled = names.clone();
            shuffled.reverse();
            shuffled.rotate_left(rotate % names.len());
            prop_assert_eq!(
                owner(k, names.iter().map(String::as_str)),
                owner(k, shuffled.iter().map(String::as_str))
            );
            prop_assert_eq!(
                ranking(k, names.iter().map(String::as_str)),
                ranking(k, shuffled.iter().map(String::as_str))
            );
        }

        #[test]
        fn all_ips_of_a_key_go_to_one_node(names in node_set(), first in any::<u32>(), others in prop::collection::vec(any::<u128>(), 0..3)) {
            // A dual-stack Service and every Service sharing its first IP elect by that IP alone.
            let first = IpAddr::V4(Ipv4Addr::from(first));
            let mut ips = vec![first];
            ips.extend(others.into_iter().map(|o| IpAddr::V6(Ipv6Addr::from(o))));
            let whole = ElectionKey::for_service(&ips).unwrap();
            let alone = ElectionKey::for_service(&[first]).unwrap();
            prop_assert_eq!(
                owner(whole, names.iter().map(String::as_str)),
                owner(alone, names.iter().map(String::as_str))
            );
        }

        #[test]
        fn owner_is_the_head_of_the_ranking(names in node_set(), seed in any::<u32>()) {
            let k = key(seed);
            prop_assert_eq!(
                owner(k, names.iter().map(String::as_str)),
                ranking(k, names.iter().map(String::as_str)).first().copied()
            );
        }

        #[test]
        fn removing_a_non_owner_moves_nothing(names in node_set(), seeds in prop::collection::vec(any::<u32>(), 1..50), drop in 0usize..12) {
            let dropped = &names[drop % names.len()];
            let rest: Vec<&str> = names.iter().map(String::as_str).filter(|n| n != dropped).collect();
            for seed in seeds {
                let k = key(seed);
                let before = owner(k, names.iter().map(String::as_str)).unwrap();
                if before != dropped {
                    prop_assert_eq!(owner(k, rest.iter().copied()), Some(before));
                }
            }
        }

        #[test]
        fn removing_the_owner_moves_only_its_ips_and_they_come_back(names in node_set(), seeds in prop::collection::vec(any::<u32>(), 1..50), victim in 0usize..12) {
            let all: Vec<&str> = names.iter().map(String::as_str).collect();
            let victim = all[victim % all.len()];
            let rest: Vec<&str> = all.iter().copied().filter(|n| *n != victim).collect();
            for seed in seeds {
                let k = key(seed);
                let before = owner(k, all.iter().copied());
                let during = owner(k, rest.iter().copied());
                if before == Some(victim) {
                    // Its successor takes over: the next in the full ranking.
                    prop_assert_eq!(during, ranking(k, all.iter().copied()).get(1).copied());
                } else {
                    prop_assert_eq!(during, before);
                }
                prop_assert_eq!(owner(k, all.iter().copied()), before);
            }
        }
    }
}
