//! Validation of IPAddressPools, alone and as a set: every problem at once, each naming the pool,
//! the field, the offending value and what is allowed.

use std::cmp::Ordering;
use std::fmt;

use kube::ResourceExt;
use serde::Serialize;

use super::addresses::{ALLOWED_FORMS, AddressRange};
use super::pool::IPAddressPool;

/// One thing wrong with one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolProblem {
    /// `namespace/name` of the pool.
    pub pool: String,
    /// The path of the offending field, e.g. `spec.addresses[1]`.
    pub field: String,
    /// The offending value as the user wrote it.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
    /// What would be accepted instead.
    pub allowed: String,
}

impl fmt::Display for PoolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPAddressPool {}: {} {}: {} (allowed: {})",
            self.pool, self.field, self.value, self.reason, self.allowed
        )
    }
}

impl std::error::Error for PoolProblem {}

/// Checks one pool on its own: addresses present and well formed, no overlap between its own
/// entries, no namespace or selector listed twice. Returns the parsed ranges when all is well.
pub fn check_pool(pool: &IPAddressPool) -> Result<Vec<AddressRange>, Vec<PoolProblem>> {
    let (ranges, problems) = read_pool(pool);
    let mut problems = problems;
    let entries: Vec<Entry> = ranges
        .iter()
        .map(|&(index, range)| Entry {
            pool: 0,
            index,
            range,
        })
        .collect();
    problems.extend(overlaps(&entries, &[pool]));
    if problems.is_empty() {
        Ok(ranges.into_iter().map(|(_, range)| range).collect())
    } else {
        Err(problems)
    }
}

/// Checks a set of pools: each on its own, plus overlaps across pools. Of two overlapping pools
/// the younger ([`seniority`]) is the one at fault, so the older pool keeps serving, as
/// MetalLB's webhook would have refused the newcomer.
pub fn check_pools(pools: &[IPAddressPool]) -> Vec<PoolProblem> {
    let mut ordered: Vec<&IPAddressPool> = pools.iter().collect();
    ordered.sort_by(|a, b| seniority(a, b));

    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for (rank, pool) in ordered.iter().enumerate() {
        let (ranges, own) = read_pool(pool);
        problems.extend(own);
        entries.extend(ranges.into_iter().map(|(index, range)| Entry {
            pool: rank,
            index,
            range,
        }));
    }
    problems.extend(overlaps(&entries, &ordered));

    let rank_of = |name: &str| ordered.iter().position(|p| pool_key(p) == name);
    problems.sort_by_key(|p| rank_of(&p.pool));
    problems
}

/// Older pools first: by creation time (in standalone mode the time the controller first saw
/// the pool, recorded in its status file), pools without one after (new to the controller),
/// ties by namespace/name.
pub fn seniority(a: &IPAddressPool, b: &IPAddressPool) -> Ordering {
    let created = |p: &IPAddressPool| p.metadata.creation_timestamp.clone();
    match (created(a), created(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| pool_key(a).cmp(&pool_key(b)))
}

fn pool_key(pool: &IPAddressPool) -> String {
    match pool.namespace() {
        Some(ns) => format!("{ns}/{}", pool.name_any()),
        None => pool.name_any(),
    }
}

/// Parses the entries and checks the per-field rules; overlap is left to the caller.
fn read_pool(pool: &IPAddressPool) -> (Vec<(usize, AddressRange)>, Vec<PoolProblem>) {
    let name = pool_key(pool);
    let problem = |field: String, value: String, reason: String, allowed: &str| PoolProblem {
        pool: name.clone(),
        field,
        value,
        reason,
        allowed: allowed.to_owned(),
    };
    let mut problems = Vec::new();
    let mut ranges = Vec::new();

    if pool.spec.addresses.is_empty() {
        problems.push(problem(
            "spec.addresses".into(),
            "[]".into(),
            "a pool needs at least one address entry".into(),
            ALLOWED_FORMS,
        ));
    }
    for (index, entry) in pool.spec.addresses.iter().enumerate() {
        match AddressRange::parse(entry) {
            Ok(range) => ranges.push((index, range)),
            Err(err) => problems.push(problem(
                format!("spec.addresses[{index}]"),
                format!("{entry:?}"),
                err.to_string(),
                ALLOWED_FORMS,
            )),
        }
    }

    if let Some(allocation) = &pool.spec.service_allocation {
        let lists = [
            (
                "namespaces",
                json_items(&allocation.namespaces),
                "each namespace once",
            ),
            (
                "namespaceSelectors",
                json_items(&allocation.namespace_selectors),
                "each namespace selector once",
            ),
            (
                "serviceSelectors",
                json_items(&allocation.service_selectors),
                "each service selector once",
            ),
        ];
        for (list, items, allowed) in lists {
            for (index, earlier) in duplicates(&items) {
                problems.push(problem(
                    format!("spec.serviceAllocation.{list}[{index}]"),
                    items[index].clone(),
                    format!("is listed twice (first at {list}[{earlier}])"),
                    allowed,
                ));
            }
        }
    }
    (ranges, problems)
}

/// Items rendered as JSON, so selectors compare and print the way the user wrote them.
fn json_items<T: Serialize>(items: &[T]) -> Vec<String> {
    items
        .iter()
        .map(|item| serde_json::to_string(item).unwrap_or_else(|err| format!("<{err}>")))
        .collect()
}

/// `(index, index of its first occurrence)` for every repeated item.
fn duplicates(items: &[String]) -> Vec<(usize, usize)> {
    items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            let first = items.iter().position(|other| other == item)?;
            (first < index).then_some((index, first))
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Entry {
    /// Seniority rank of the pool in the slice given to `overlaps`.
    pool: usize,
    index: usize,
    range: AddressRange,
}

/// Finds overlapping entries by a sweep over entries sorted by first address: each entry is
/// compared with the one reaching furthest so far, which it overlaps if anything earlier does.
/// The junior entry of each pair carries the problem. O(n log n) in the number of entries.
fn overlaps(entries: &[Entry], pools: &[&IPAddressPool]) -> Vec<PoolProblem> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.range.first(), e.pool, e.index));

    let mut problems = Vec::new();
    let mut reach: Option<Entry> = None;
    for entry in sorted {
        if let Some(widest) = reach
            && widest.range.overlaps(&entry.range)
        {
            let (junior, senior) = if (widest.pool, widest.index) < (entry.pool, entry.index) {
                (entry, widest)
            } else {
                (widest, entry)
            };
            problems.push(overlap_problem(junior, senior, pools));
        }
        if reach.is_none_or(|r| entry.range.last() > r.range.last()) {
            reach = Some(entry);
        }
    }
    problems.dedup();
    problems
}

fn overlap_problem(junior: Entry, senior: Entry, pools: &[&IPAddressPool]) -> PoolProblem {
    let entry_text = |e: Entry| {
        pools
            .get(e.pool)
            .and_then(|p| p.spec.addresses.get(e.index))
            .cloned()
            .unwrap_or_else(|| e.range.to_string())
    };
    let name = |e: Entry| pools.get(e.pool).map(|p| pool_key(p)).unwrap_or_default();
    let whose = if junior.pool == senior.pool {
        "of this pool".to_owned()
    } else {
        format!("of IPAddressPool {}", name(senior))
    };
    PoolProblem {
        pool: name(junior),
        field: format!("spec.addresses[{}]", junior.index),
        value: format!("{:?}", entry_text(junior)),
        reason: format!(
            "overlaps {:?} (spec.addresses[{}]) {whose}",
            entry_text(senior),
            senior.index
        ),
        allowed: "address entries that share no address, within and across pools".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pool::{IPAddressPoolSpec, ServiceAllocation};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        let mut pool = IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
            },
        );
        pool.metadata.namespace = Some("metallb-system".into());
        pool
    }

    fn messages(problems: &[PoolProblem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    fn selector(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(key.to_owned(), value.to_owned())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_pool_yields_its_ranges() {
        let ranges = check_pool(&pool("lan", &["10.0.0.0/30", "fd00::1 - fd00::5"])).unwrap();
        assert_eq!(ranges.iter().map(AddressRange::size).sum::<u128>(), 9);
    }

    #[test]
    fn empty_addresses() {
        assert_eq!(
            messages(&check_pool(&pool("lan", &[])).unwrap_err()),
            [
                "IPAddressPool metallb-system/lan: spec.addresses []: a pool needs at least one address \
              entry (allowed: a CIDR like 192.168.10.0/24 or fd00:10::/120, or a range like \
              192.168.10.10-192.168.10.20)"
            ]
        );
    }

    #[test]
    fn each_bad_entry_is_reported_with_its_index() {
        let problems = check_pool(&pool(
            "lan",
            &[
                "10.0.0.0/33",
                "10.0.0.9-10.0.0.1",
                "10.0.1.1-fd00::1",
                "bogus",
                "10.0.2.7",
            ],
        ))
        .unwrap_err();
        let allowed = "(allowed: a CIDR like 192.168.10.0/24 or fd00:10::/120, or a range like \
                       192.168.10.10-192.168.10.20)";
        assert_eq!(
            messages(&problems),
            [
                format!(
                    "IPAddressPool metallb-system/lan: spec.addresses[0] \"10.0.0.0/33\": prefix \
                     length \"33\" is not a number from 0 to 32 {allowed}"
                ),
                format!(
                    "IPAddressPool metallb-system/lan: spec.addresses[1] \"10.0.0.9-10.0.0.1\": \
                     range start 10.0.0.9 is after its end 10.0.0.1; write the lower address first \
                     {allowed}"
                ),
                format!(
                    "IPAddressPool metallb-system/lan: spec.addresses[2] \"10.0.1.1-fd00::1\": \
                     range mixes 10.0.1.1 (IPv4) and fd00::1 (IPv6); a range holds one family \
                     {allowed}"
                ),
                format!(
                    "IPAddressPool metallb-system/lan: spec.addresses[3] \"bogus\": \"bogus\" is \
                     not an IP address {allowed}"
                ),
                format!(
                    "IPAddressPool metallb-system/lan: spec.addresses[4] \"10.0.2.7\": \
                     \"10.0.2.7\" is a single address without a prefix length; write it as a CIDR \
                     such as 10.0.2.7/32 {allowed}"
                ),
            ]
        );
    }

    #[test]
    fn overlap_within_a_pool() {
        let problems = check_pool(&pool(
            "lan",
            &["10.0.0.0/24", "10.0.1.0/24", "10.0.0.200-10.0.0.210"],
        ))
        .unwrap_err();
        assert_eq!(
            messages(&problems),
            [
                "IPAddressPool metallb-system/lan: spec.addresses[2] \"10.0.0.200-10.0.0.210\": \
              overlaps \"10.0.0.0/24\" (spec.addresses[0]) of this pool (allowed: address entries \
              that share no address, within and across pools)"
            ]
        );
    }

    #[test]
    fn overlap_across_pools_blames_the_junior_pool() {
        // Without creation times the pool whose name sorts later is at fault.
        let problems = check_pools(&[
            pool("b-later", &["fd00::/120", "10.0.0.5/32"]),
            pool("a-first", &["10.0.0.0/29"]),
            pool("c-clean", &["10.0.9.0/24"]),
        ]);
        assert_eq!(
            messages(&problems),
            [
                "IPAddressPool metallb-system/b-later: spec.addresses[1] \"10.0.0.5/32\": overlaps \
              \"10.0.0.0/29\" (spec.addresses[0]) of IPAddressPool metallb-system/a-first (allowed: \
              address entries that share no address, within and across pools)"
            ]
        );
    }

    #[test]
    fn older_pool_wins_an_overlap() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut old = pool("z-old", &["10.0.0.0/24"]);
        old.metadata.creation_timestamp = Some(Time("2024-01-01T00:00:00Z".parse().unwrap()));
        let mut new = pool("a-new", &["10.0.0.128/25"]);
        new.metadata.creation_timestamp = Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
        let problems = check_pools(&[old.clone(), new]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].pool, "metallb-system/a-new");

        // Created in the same second (the API server's resolution): by name; a pool without a
        // creation time (new to a standalone controller) is younger than any with one.
        let mut twin = pool("zz-twin", &["10.0.0.0/25"]);
        twin.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
        let problems = check_pools(&[old.clone(), twin]);
        assert_eq!(problems[0].pool, "metallb-system/zz-twin");
        let problems = check_pools(&[old, pool("a-unseen", &["10.0.0.0/25"])]);
        assert_eq!(problems[0].pool, "metallb-system/a-unseen");
    }

    #[test]
    fn families_never_overlap_each_other() {
        assert!(check_pools(&[pool("v4", &["0.0.0.0/0"]), pool("v6", &["::/0"])]).is_empty());
    }

    #[test]
    fn duplicate_namespaces_and_selectors() {
        let mut p = pool("lan", &["10.0.0.0/24"]);
        p.spec.service_allocation = Some(ServiceAllocation {
            priority: Some(5),
            namespaces: vec!["web".into(), "db".into(), "web".into()],
            namespace_selectors: vec![selector("team", "a"), selector("team", "a")],
            service_selectors: vec![
                selector("tier", "edge"),
                selector("tier", "core"),
                selector("tier", "edge"),
            ],
        });
        assert_eq!(
            messages(&check_pool(&p).unwrap_err()),
            [
                "IPAddressPool metallb-system/lan: spec.serviceAllocation.namespaces[2] \"web\": is \
                 listed twice (first at namespaces[0]) (allowed: each namespace once)",
                "IPAddressPool metallb-system/lan: spec.serviceAllocation.namespaceSelectors[1] \
                 {\"matchLabels\":{\"team\":\"a\"}}: is listed twice (first at \
                 namespaceSelectors[0]) (allowed: each namespace selector once)",
                "IPAddressPool metallb-system/lan: spec.serviceAllocation.serviceSelectors[2] \
                 {\"matchLabels\":{\"tier\":\"edge\"}}: is listed twice (first at \
                 serviceSelectors[0]) (allowed: each service selector once)",
            ]
        );
    }

    #[test]
    fn all_problems_of_all_pools_come_at_once() {
        let problems = check_pools(&[
            pool("a", &["10.0.0.0/24", "nonsense"]),
            pool("b", &[]),
            pool("c", &["10.0.0.1-10.0.0.2"]),
        ]);
        let fields: Vec<_> = problems
            .iter()
            .map(|p| (p.pool.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("metallb-system/a", "spec.addresses[1]"),
                ("metallb-system/b", "spec.addresses"),
                ("metallb-system/c", "spec.addresses[0]"),
            ]
        );
    }
}
