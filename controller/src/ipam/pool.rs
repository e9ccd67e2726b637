//! An IPAddressPool as the allocator uses it: its entries in listed order, each with the
//! addresses taken from it, which Services it serves, and its capacity per family.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ferrolb_proto::api::addresses::ordinal;
use ferrolb_proto::api::{
    AddressRange, IPAddressPoolSpec, IpFamily, PoolProblem, ServiceAllocation,
};

use super::runs::RunSet;
use super::service::Intent;
use ferrolb_proto::api::selector::matches;

/// One `spec.addresses` entry with the ordinals taken from it.
///
/// Ordinals live in the entry's own numbering: the address itself, or, when the pool avoids
/// buggy IPs, a numbering that leaves out every IPv4 address ending in .0 or .255 (254 per
/// /24). Skipped addresses then never appear at all, so "first free" stays one lookup and
/// capacity is a subtraction.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub range: AddressRange,
    skip_buggy: bool,
    /// Inclusive ordinals of the first and last usable address; None when none is usable.
    span: Option<(u128, u128)>,
    pub taken: RunSet,
}

impl Entry {
    fn new(range: AddressRange, avoid_buggy_ips: bool) -> Self {
        let skip_buggy = avoid_buggy_ips && range.family() == IpFamily::V4;
        let span = if skip_buggy {
            buggy_free_span(range)
        } else {
            Some((ordinal(range.first()), ordinal(range.last())))
        };
        Entry {
            range,
            skip_buggy,
            span,
            taken: RunSet::default(),
        }
    }

    pub(crate) fn family(&self) -> IpFamily {
        self.range.family()
    }

    /// The ordinal of `ip`, which must lie in the range; None for a skipped (buggy) address.
    pub(crate) fn index_of(&self, ip: IpAddr) -> Option<u128> {
        match ip {
            IpAddr::V4(v4) if self.skip_buggy => compress(u32::from(v4)),
            _ => Some(ordinal(ip)),
        }
    }

    pub(crate) fn ip_at(&self, index: u128) -> Option<IpAddr> {
        match self.family() {
            IpFamily::V4 if self.skip_buggy => expand(index).map(IpAddr::V4),
            IpFamily::V4 => u32::try_from(index)
                .ok()
                .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            IpFamily::V6 => Some(IpAddr::V6(Ipv6Addr::from(index))),
        }
    }

    /// Usable addresses, saturating for `::/0`.
    pub(crate) fn capacity(&self) -> u128 {
        self.span.map_or(0, |(lo, hi)| (hi - lo).saturating_add(1))
    }

    pub(crate) fn first_free(&self) -> Option<u128> {
        let (lo, hi) = self.span?;
        self.taken.first_free(lo, hi)
    }
}

fn is_buggy(a: u32) -> bool {
    matches!(a & 0xff, 0 | 255)
}

/// The ordinal of a non-buggy IPv4 address when .0 and .255 are left out.
fn compress(a: u32) -> Option<u128> {
    if is_buggy(a) {
        return None;
    }
    Some(u128::from(a >> 8) * 254 + u128::from(a & 0xff) - 1)
}

fn expand(index: u128) -> Option<Ipv4Addr> {
    let block = index / 254;
    let offset = index % 254 + 1;
    u32::try_from(block * 256 + offset).ok().map(Ipv4Addr::from)
}

/// The compressed ordinals of the first and last non-buggy addresses of an IPv4 range.
fn buggy_free_span(range: AddressRange) -> Option<(u128, u128)> {
    let first = u32::try_from(ordinal(range.first())).ok()?;
    let last = u32::try_from(ordinal(range.last())).ok()?;
    let up = match first & 0xff {
        0 => first.checked_add(1)?,
        255 => first.checked_add(2)?,
        _ => first,
    };
    let down = match last & 0xff {
        0 => last.checked_sub(2)?,
        255 => last.checked_sub(1)?,
        _ => last,
    };
    if up > down {
        return None;
    }
    Some((compress(up)?, compress(down)?))
}

/// A pool's name as a small number, so an assignment names its pool in 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PoolId(u32);

/// Every pool name ever seen, numbered in order of appearance. Ids outlive the pools: a
/// Service keeps naming a deleted pool until it is judged again, and a pool that comes back
/// gets its old id. Pool names are few, so keeping them all costs nothing worth reclaiming.
#[derive(Debug, Default)]
pub(crate) struct PoolNames {
    names: Vec<Arc<str>>,
    ids: BTreeMap<Arc<str>, PoolId>,
}

impl PoolNames {
    pub(crate) fn id(&mut self, name: &Arc<str>) -> PoolId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = PoolId(u32::try_from(self.names.len()).expect("fewer than 2^32 pool names"));
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    pub(crate) fn name(&self, id: PoolId) -> &str {
        // Ids are only made by `id`, so every one has its name.
        &self.names[id.0 as usize]
    }
}

/// A pool, valid (hands out addresses) or invalid (frozen: see the module documentation of
/// [`super`]).
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub id: PoolId,
    pub name: Arc<str>,
    pub auto_assign: bool,
    pub allocation: Option<ServiceAllocation>,
    /// The entries that could be read, in listed order (all of them for a valid pool).
    pub entries: Vec<Entry>,
    /// Empty when the pool is valid.
    pub problems: Vec<PoolProblem>,
}

impl Pool {
    pub(crate) fn new(
        names: &mut PoolNames,
        name: &str,
        spec: &IPAddressPoolSpec,
        problems: Vec<PoolProblem>,
    ) -> Self {
        let name: Arc<str> = name.into();
        let entries = spec
            .addresses
            .iter()
            .filter_map(|text| AddressRange::parse(text).ok())
            .map(|range| Entry::new(range, spec.avoid_buggy_ips))
            .collect();
        Pool {
            id: names.id(&name),
            name,
            auto_assign: spec.auto_assign,
            allocation: spec.service_allocation.clone(),
            entries,
            problems,
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems in one line, for messages.
    pub(crate) fn problem_text(&self) -> String {
        self.problems
            .iter()
            .map(|p| format!("{} {}: {}", p.field, p.value, p.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn capacity(&self, family: IpFamily) -> u128 {
        self.entries
            .iter()
            .filter(|e| e.family() == family)
            .fold(0u128, |sum, e| sum.saturating_add(e.capacity()))
    }

    pub(crate) fn taken(&self, family: IpFamily) -> u128 {
        self.entries
            .iter()
            .filter(|e| e.family() == family)
            .fold(0u128, |sum, e| sum.saturating_add(e.taken.len()))
    }

    pub(crate) fn has_family(&self, family: IpFamily) -> bool {
        self.capacity(family) > 0
    }

    /// The first free address of `family` (either when None), entries in listed order, as
    /// `(entry, ordinal)` so it compares with other positions in the pool.
    pub(crate) fn first_free(&self, family: Option<IpFamily>) -> Option<(usize, u128)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| family.is_none_or(|f| e.family() == f))
            .find_map(|(i, e)| e.first_free().map(|index| (i, index)))
    }

    pub(crate) fn ip_at(&self, (entry, index): (usize, u128)) -> Option<IpAddr> {
        self.entries.get(entry)?.ip_at(index)
    }

    /// Which entry holds `ip`, and its ordinal there (None when skipped as buggy). A linear
    /// scan: the allocator keeps an index for valid pools and uses this for invalid ones.
    pub(crate) fn locate(&self, ip: IpAddr) -> Option<(usize, Option<u128>)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.range.contains(ip))
            .map(|(i, e)| (i, e.index_of(ip)))
    }

    /// Whether the pool's serviceAllocation lets this Service in, and if not, why. As MetalLB:
    /// the namespace must be listed or selected (when either list is given), AND the Service's
    /// labels must match a serviceSelector (when any is given).
    pub(crate) fn admits(&self, namespace: &str, intent: &Intent) -> Result<(), String> {
        let Some(allocation) = &self.allocation else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let ns_labels = intent.namespace_labels().unwrap_or(&empty);
        let svc_labels = intent.service_labels().unwrap_or(&empty);

        let by_namespace = !allocation.namespaces.is_empty();
        let by_ns_selector = !allocation.namespace_selectors.is_empty();
        if by_namespace || by_ns_selector {
            let listed = allocation.namespaces.iter().any(|n| n == namespace);
            let selected = allocation
                .namespace_selectors
                .iter()
                .any(|s| matches(s, ns_labels));
            if !listed && !selected {
                let mut why = format!("namespace {namespace:?} is not");
                if by_namespace {
                    why += &format!(
                        " in spec.serviceAllocation.namespaces {:?}",
                        allocation.namespaces
                    );
                }
                if by_namespace && by_ns_selector {
                    why += " and is not";
                }
                if by_ns_selector {
                    why += " selected by spec.serviceAllocation.namespaceSelectors";
                }
                return Err(why);
            }
        }
        if !allocation.service_selectors.is_empty()
            && !allocation
                .service_selectors
                .iter()
                .any(|s| matches(s, svc_labels))
        {
            return Err(format!(
                "the Service's labels {svc_labels:?} match none of \
                 spec.serviceAllocation.serviceSelectors"
            ));
        }
        Ok(())
    }

    /// The automatic order: pools with a serviceAllocation by priority (lower first, 0 or
    /// unset after every numbered one), then pools without one; ties by name.
    pub(crate) fn rank(&self) -> (u8, u8, i32, &str) {
        match &self.allocation {
            Some(allocation) => match allocation.priority {
                Some(p) if p != 0 => (0, 0, p, &self.name),
                _ => (0, 1, 0, &self.name),
            },
            None => (1, 0, 0, &self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str, avoid: bool) -> Entry {
        Entry::new(AddressRange::parse(text).unwrap(), avoid)
    }

    #[test]
    fn buggy_numbering_round_trips_and_skips() {
        let e = entry("10.0.0.0/23", true);
        assert_eq!(e.capacity(), 508);
        let mut seen = Vec::new();
        let (lo, hi) = e.span.unwrap();
        for index in lo..=hi {
            let ip = e.ip_at(index).unwrap();
            assert_eq!(e.index_of(ip), Some(index));
            seen.push(ip.to_string());
        }
        assert_eq!(seen[0], "10.0.0.1");
        assert_eq!(seen[253], "10.0.0.254");
        assert_eq!(seen[254], "10.0.1.1");
        assert_eq!(seen.last().unwrap(), "10.0.1.254");
        assert_eq!(e.index_of("10.0.1.0".parse().unwrap()), None);
    }

    #[test]
    fn tiny_buggy_ranges() {
        assert_eq!(entry("10.0.0.255/32", true).capacity(), 0);
        assert_eq!(entry("10.0.0.0/32", true).capacity(), 0);
        assert_eq!(entry("10.0.0.255-10.0.1.0", true).capacity(), 0);
        assert_eq!(entry("10.0.0.254-10.0.1.1", true).capacity(), 2);
        assert_eq!(entry("0.0.0.0/32", true).capacity(), 0);
        assert_eq!(entry("255.255.255.255/32", true).capacity(), 0);
        assert_eq!(entry("0.0.0.0/0", true).capacity(), 254 << 24);
        assert_eq!(entry("0.0.0.0/0", false).capacity(), 1 << 32);
        assert_eq!(entry("fd00::/120", true).capacity(), 256);
        assert_eq!(entry("::/0", false).capacity(), u128::MAX);
    }
}
