//! IP address management: which addresses each LoadBalancer Service holds, and from which
//! IPAddressPool, decided from values alone (no I/O, no clock), MetalLB-compatible.
//!
//! The rules, as in `shared/reference/metallb-behaviour.md`:
//! - A Service asks for addresses (`metallb.io/loadBalancerIPs` or `spec.loadBalancerIP`), for a
//!   pool (`metallb.io/address-pool`, which ignores autoAssign), or for nothing, and then takes
//!   the first free address of the first pool in the automatic order: pools with a
//!   serviceAllocation that admits it, by priority (0/unset last), then generic pools; ties by
//!   name. Inside a pool, entries in listed order, lowest address first; an address already
//!   held by Services it may share with counts as free.
//! - SingleStack takes one address of the primary family; RequireDualStack one of each from
//!   the same pool; PreferDualStack both from the first pool that has both, else one. A
//!   PreferDualStack Service holding one family gains the other from the same pool when that
//!   pool gains it (on [`Allocator::set_pools`] or [`Allocator::assign`]); it never jumps pools.
//! - An assignment that is still valid is never changed: not by pool edits (an address that
//!   moved to another pool keeps its Service; only the pool name changes), not by a restart
//!   ([`Allocator::rebuild`] restores what Services' status holds before allocating anything).
//!   A Service whose addresses left every pool, or whose pool stopped admitting it, is cleared
//!   and allocated again from what remains, or waits.
//! - A request that cannot be read (bad annotation, two addresses of one family, ...) changes
//!   nothing: the Service keeps what it held. A request that can be read but not met clears
//!   the Service, as MetalLB does.
//! - Every time addresses are freed or a pool changes, waiting Services are tried again, in
//!   name order, so the state never depends on when a Service happened to be retried.
//!
//! Invalid pools (any problem from `check_pools`: unreadable entry, overlap, duplicate
//! selector) are **frozen**: they hand out nothing (no automatic allocation, and a Service
//! that asks for the pool or one of its addresses gets [`AllocationError::InvalidPool`]), but a
//! Service that already holds an address in one of the pool's readable entries keeps it, also
//! across restarts, until the pool is fixed or deleted. An overlapping pool's addresses that
//! also lie in a valid pool belong to the valid one. Why: MetalLB's webhook would have refused
//! the bad edit and the Services would have kept their addresses; a typo in a pool must not
//! take addresses away from running Services, and the rule needs no memory of past pool
//! versions, so a restart gives the same result.

// Errors carry the user's values so each message is complete; they are built only when an
// allocation fails, so their size costs nothing on the common path.
#![allow(clippy::result_large_err)]

mod error;
mod owners;
mod pool;
mod records;
mod runs;
mod service;
mod sharing;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_proto::api::{IPAddressPool, IPAddressPoolStatus, IpFamily, PoolProblem, check_pools};

pub use error::AllocationError;
pub use service::{FamilyPolicy, ServiceKey, ServiceRequest, handled_by, status_ips};
pub use sharing::{BackendKey, Port, Protocol, SharingMismatch};

use owners::Owners;
use pool::{Pool, PoolNames};
use records::{Held, Record, Records, Slot};
use service::{Intent, Ips, PoolRequest, Requested};
use sharing::compatible;

/// The field named when judging addresses a Service already holds.
const STATUS_FIELD: &str = "status.loadBalancer.ingress";

/// What a Service holds: the pool and its addresses in status order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The name written to `metallb.io/ip-allocated-from-pool`.
    pub pool: String,
    /// `status.loadBalancer.ingress[].ip`, in order.
    pub ips: Vec<IpAddr>,
}

/// A change to a Service that an operation made besides the one it was asked for; the caller
/// writes the Service's status (and events) accordingly, applying updates in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceUpdate {
    /// Same addresses, now in another pool (only `ip-allocated-from-pool` changes).
    Moved {
        service: ServiceKey,
        from_pool: String,
        assignment: Assignment,
    },
    /// The primary address stayed; the other family was added (PreferDualStack gaining it)
    /// or dropped (its address left the pool, or the Service became single-stack).
    Changed {
        service: ServiceKey,
        previous: Assignment,
        assignment: Assignment,
    },
    /// The old addresses were no longer valid (`why`) and new ones were allocated.
    Reallocated {
        service: ServiceKey,
        previous: Assignment,
        why: AllocationError,
        assignment: Assignment,
    },
    /// The old addresses were no longer valid (`why`) and nothing else could be allocated
    /// (`error`); the Service waits.
    Cleared {
        service: ServiceKey,
        previous: Assignment,
        why: AllocationError,
        error: AllocationError,
    },
    /// A waiting Service got addresses.
    Allocated {
        service: ServiceKey,
        assignment: Assignment,
    },
}

impl ServiceUpdate {
    pub fn service(&self) -> &ServiceKey {
        match self {
            ServiceUpdate::Moved { service, .. }
            | ServiceUpdate::Changed { service, .. }
            | ServiceUpdate::Reallocated { service, .. }
            | ServiceUpdate::Cleared { service, .. }
            | ServiceUpdate::Allocated { service, .. } => service,
        }
    }

    /// What the Service holds after the update; None when it was cleared.
    pub fn assignment(&self) -> Option<&Assignment> {
        match self {
            ServiceUpdate::Moved { assignment, .. }
            | ServiceUpdate::Changed { assignment, .. }
            | ServiceUpdate::Reallocated { assignment, .. }
            | ServiceUpdate::Allocated { assignment, .. } => Some(assignment),
            ServiceUpdate::Cleared { .. } => None,
        }
    }
}

/// The result of [`Allocator::set_pools`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolChange {
    /// Every problem of every pool; a pool with problems is frozen.
    pub problems: Vec<PoolProblem>,
    /// Services whose assignment changed, in the order the changes were made.
    pub updates: Vec<ServiceUpdate>,
}

/// The result of [`Allocator::release`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// What the Service held.
    pub assignment: Option<Assignment>,
    /// Waiting Services that got the freed addresses (or others).
    pub updates: Vec<ServiceUpdate>,
}

/// What a restart made of one Service ([`Allocator::restore`], [`Allocator::rebuild`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    pub service: ServiceKey,
    /// The addresses its status held.
    pub previous: Vec<IpAddr>,
    /// What it holds now, or why it holds nothing.
    pub result: Result<Assignment, AllocationError>,
    /// Why the status addresses were not kept, or why the request could not be read (the
    /// addresses are then kept as they are).
    pub problem: Option<AllocationError>,
}

impl Rebuilt {
    /// Whether the Service's status must be rewritten.
    pub fn changed(&self) -> bool {
        match &self.result {
            Ok(assignment) => assignment.ips != self.previous,
            Err(_) => !self.previous.is_empty(),
        }
    }
}

/// Usage of one family in one pool. Counts are exact (`u128`); [`PoolStats::status`] gives
/// the saturating `int64` form the CRD status uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyStats {
    /// Usable addresses (without .0/.255 when the pool avoids buggy IPs).
    pub capacity: u128,
    /// Addresses held by at least one Service (a shared address counts once).
    pub assigned: u128,
    /// Addresses that can still be handed out; 0 for an invalid pool.
    pub available: u128,
}

/// Usage of one pool, for its status and for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: String,
    pub valid: bool,
    pub ipv4: FamilyStats,
    pub ipv6: FamilyStats,
}

impl PoolStats {
    /// The counters of `IPAddressPoolStatus`, saturating at `i64::MAX` (a /64 has 2^64
    /// addresses); conditions are left to the caller.
    pub fn status(&self) -> IPAddressPoolStatus {
        IPAddressPoolStatus {
            assigned_ipv4: saturating_i64(self.ipv4.assigned),
            assigned_ipv6: saturating_i64(self.ipv6.assigned),
            available_ipv4: saturating_i64(self.ipv4.available),
            available_ipv6: saturating_i64(self.ipv6.available),
            conditions: Vec::new(),
        }
    }
}

/// `n` as an `i64`, or `i64::MAX` when it does not fit.
pub fn saturating_i64(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where an address is.
enum Located<'a> {
    /// In a valid pool's entry; `index` None when the pool skips it as buggy.
    Valid {
        pool: &'a Pool,
        entry: usize,
        index: Option<u128>,
    },
    /// Only in an invalid (frozen) pool.
    Frozen {
        pool: &'a Pool,
        index: Option<u128>,
    },
    Nowhere,
}

/// The allocator: pools, and what every LoadBalancer Service it was told about holds or waits
/// for. Deterministic: the same calls in the same order give the same results.
#[derive(Debug, Default)]
pub struct Allocator {
    /// Every pool by name, valid or frozen.
    pools: BTreeMap<Arc<str>, Pool>,
    /// The names behind the pool ids that assignments hold.
    names: PoolNames,
    /// First address of every valid pool's entries, to find an address's entry in O(log n);
    /// valid entries never overlap.
    starts: BTreeMap<IpAddr, (Arc<str>, usize)>,
    problems: Vec<PoolProblem>,
    /// Every Service: its request and what it holds, one 64-byte record each.
    services: Records,
    /// Services that wait for addresses (readable request, nothing held).
    pending: BTreeSet<ServiceKey>,
    /// Who holds each address, by record slot.
    owners: Owners,
    /// Addresses held by Services with each sharing key, to offer them to newcomers.
    shared: BTreeMap<Box<str>, BTreeSet<IpAddr>>,
    /// Updates to other Services caused by [`Allocator::assign`], for [`Allocator::take_updates`].
    outbox: Vec<ServiceUpdate>,
}

impl Allocator {
    pub fn new() -> Self {
        Allocator::default()
    }

    // ----- public operations -----

    /// Replaces the pool set. Checks the pools (problems freeze a pool), re-homes every
    /// assignment: addresses that moved to another pool keep their Service, Services whose
    /// addresses left every pool (or whose pool no longer admits them) are allocated again or
    /// wait, PreferDualStack Services gain a family their pool gained, and waiting Services
    /// are tried again.
    pub fn set_pools(&mut self, specs: Vec<IPAddressPool>) -> PoolChange {
        let mut problems = check_pools(&specs);
        let mut pools: BTreeMap<Arc<str>, Pool> = BTreeMap::new();
        let mut specs: Vec<(String, String, IPAddressPool)> = specs
            .into_iter()
            .map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                let key = match &p.metadata.namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                };
                (name, key, p)
            })
            .collect();
        specs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (name, key, spec) in &specs {
            if name.is_empty() || pools.contains_key(name.as_str()) {
                problems.push(PoolProblem {
                    pool: key.clone(),
                    field: "metadata.name".into(),
                    value: format!("{name:?}"),
                    reason: if name.is_empty() {
                        "is missing".into()
                    } else {
                        "is used by another IPAddressPool (in another namespace)".into()
                    },
                    allowed: "one IPAddressPool per name: Services name pools by name alone".into(),
                });
                continue;
            }
            let own: Vec<PoolProblem> = problems
                .iter()
                .filter(|p| p.pool == *key)
                .cloned()
                .collect();
            pools.insert(
                name.as_str().into(),
                Pool::new(&mut self.names, name, &spec.spec, own),
            );
        }
        self.pools = pools;
        self.problems = problems.clone();
        self.reindex();

        let mut updates = Vec::new();
        let mut displaced = Vec::new();
        let holding: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|r| r.held.is_some())
            .map(|r| r.key.clone())
            .collect();
        for key in holding {
            let Some(old) = self.take_out(&key) else {
                continue;
            };
            let Some(intent) = self.services.get(&key).map(|r| r.intent.clone()) else {
                continue;
            };
            let kept = self
                .judge(
                    &key,
                    &intent,
                    &old.ips,
                    Some(self.names.name(old.pool)),
                    STATUS_FIELD,
                )
                .and_then(|held| self.complete(&key, &intent, held));
            match kept {
                Ok(held) => {
                    self.put_in(&key, held);
                    if held.ips != old.ips {
                        updates.push(ServiceUpdate::Changed {
                            service: key,
                            previous: old.assignment(&self.names),
                            assignment: held.assignment(&self.names),
                        });
                    } else if held.pool != old.pool {
                        updates.push(ServiceUpdate::Moved {
                            service: key,
                            from_pool: self.names.name(old.pool).to_owned(),
                            assignment: held.assignment(&self.names),
                        });
                    }
                }
                Err(why) => displaced.push((key, old, why)),
            }
        }
        // Displaced Services were serving: they go before those that never had addresses.
        for (key, old, why) in displaced {
            let hold_only = self.services.get(&key).is_some_and(|r| r.hold_only);
            let result = match self.services.get(&key) {
                Some(record) if !hold_only => {
                    let intent = record.intent.clone();
                    self.allocate(&key, &intent)
                }
                _ => Err(why.clone()),
            };
            match result {
                Ok(held) => {
                    self.put_in(&key, held);
                    updates.push(ServiceUpdate::Reallocated {
                        service: key,
                        previous: old.assignment(&self.names),
                        why,
                        assignment: held.assignment(&self.names),
                    });
                }
                Err(error) => {
                    if hold_only {
                        self.forget(&key);
                    }
                    updates.push(ServiceUpdate::Cleared {
                        service: key,
                        previous: old.assignment(&self.names),
                        why,
                        error,
                    });
                }
            }
        }
        updates.extend(self.retry_pending(None));
        updates.extend(std::mem::take(&mut self.outbox));
        PoolChange { problems, updates }
    }

    /// Gives the Service what it asks for, or tells why not. An assignment that is still
    /// valid is kept (a PreferDualStack one may gain its second family). On `Err` the Service
    /// holds nothing and waits, except when the request could not be read
    /// ([`AllocationError::is_unreadable_request`]): then nothing changed and it keeps what
    /// it held ([`Allocator::assignment`] tells). Other Services this affected are reported by
    /// [`Allocator::take_updates`].
    pub fn assign(&mut self, request: &ServiceRequest) -> Result<Assignment, AllocationError> {
        let intent = request.intent()?;
        let key = request.key.clone();
        let before = self.take_out(&key);
        let previous_intent = self.services.get(&key).map(|r| r.intent.clone());
        self.services.insert(Record {
            key: key.clone(),
            intent: intent.clone(),
            held: None,
            hold_only: false,
        });
        self.pending.insert(key.clone());

        let result = self.place(&key, &intent, before.as_ref());
        let after = self.services.get(&key).and_then(|r| r.held);
        if previous_intent.as_ref() != Some(&intent) || before != after {
            let updates = self.retry_pending(Some(&key));
            self.outbox.extend(updates);
        }
        result
    }

    /// Forgets the Service (deleted, or no longer a LoadBalancer this controller handles),
    /// freeing its addresses; waiting Services are tried again.
    pub fn release(&mut self, key: &ServiceKey) -> Released {
        let held = self.take_out(key);
        self.forget(key);
        let mut updates = Vec::new();
        if held.is_some() {
            updates = self.retry_pending(None);
        }
        Released {
            assignment: held.map(|h| h.assignment(&self.names)),
            updates,
        }
    }

    /// Takes back, after a restart, the addresses the Service's status holds, exactly, when
    /// they are still valid for its request. When they are not (or there are none) the
    /// Service waits: call [`Allocator::assign`], or use [`Allocator::rebuild`], which does
    /// it in the right order. A Service whose request cannot be read keeps valid status
    /// addresses as they are and gets nothing new. Where a frozen pool overlaps another, the
    /// pool named by the request's `metallb.io/ip-allocated-from-pool` annotation is kept.
    pub fn restore(&mut self, request: &ServiceRequest, ips: &[IpAddr]) -> Rebuilt {
        let key = request.key.clone();
        self.take_out(&key);
        self.forget(&key);
        let previous = ips.to_vec();
        let (intent, unreadable) = match request.intent() {
            Ok(intent) => (intent, None),
            Err(error) if !ips.is_empty() => (Intent::lenient(request, ips.len()), Some(error)),
            Err(error) => {
                return Rebuilt {
                    service: key,
                    previous,
                    result: Err(error),
                    problem: None,
                };
            }
        };
        let hold_only = unreadable.is_some();
        self.services.insert(Record {
            key: key.clone(),
            intent: intent.clone(),
            held: None,
            hold_only,
        });
        if !hold_only {
            self.pending.insert(key.clone());
        }
        let kept = status_set(&key, ips).and_then(|ips| {
            // The pool recorded on the Service, to stay with it where pools overlap.
            let recorded = request
                .annotations
                .get(IP_ALLOCATED_FROM_POOL)
                .map(String::as_str);
            let held = self.judge(&key, &intent, &ips, recorded, STATUS_FIELD)?;
            // A restart adds nothing: a RequireDualStack Service left with one address is
            // allocated anew instead.
            if intent.policy == FamilyPolicy::RequireDualStack && held.ips.len() < 2 {
                return Err(AllocationError::DualStackIncomplete {
                    service: key.clone(),
                    field: STATUS_FIELD.into(),
                    value: held.ips.text(),
                    missing: missing_family(held.ips.first()),
                });
            }
            Ok(held)
        });
        match kept {
            Ok(held) => {
                self.put_in(&key, held);
                Rebuilt {
                    service: key,
                    previous,
                    result: Ok(held.assignment(&self.names)),
                    problem: unreadable,
                }
            }
            Err(why) => {
                let error = unreadable.clone().unwrap_or_else(|| why.clone());
                if hold_only {
                    self.forget(&key);
                }
                Rebuilt {
                    service: key,
                    previous,
                    result: Err(error),
                    problem: Some(why),
                }
            }
        }
    }

    /// A Service this controller does not serve (another loadBalancerClass: another install, or
    /// another load balancer) holds `ips` in its status. Those valid in a pool are counted as
    /// used and handed to nobody else: two answers for one IP would break both Services. Its
    /// addresses are never changed (nothing is pending for it); [`Allocator::release`] forgets
    /// it. Returns whether anything is held.
    pub fn hold_foreign(&mut self, request: &ServiceRequest, ips: &[IpAddr]) -> bool {
        let key = request.key.clone();
        self.take_out(&key);
        self.forget(&key);
        if ips.is_empty() {
            return false;
        }
        let intent = Intent::lenient(request, ips.len());
        self.services.insert(Record {
            key: key.clone(),
            intent: intent.clone(),
            held: None,
            hold_only: true,
        });
        let recorded = request
            .annotations
            .get(IP_ALLOCATED_FROM_POOL)
            .map(String::as_str);
        match status_set(&key, ips)
            .and_then(|ips| self.judge(&key, &intent, &ips, recorded, STATUS_FIELD))
        {
            Ok(held) => {
                self.put_in(&key, held);
                true
            }
            Err(_) => {
                self.forget(&key);
                false
            }
        }
    }

    /// Rebuilds the state after a restart from every Service and the addresses its status
    /// holds: first every Service with addresses is restored (name order), then the others
    /// are allocated (name order). Call [`Allocator::set_pools`] first.
    pub fn rebuild(&mut self, mut services: Vec<(ServiceRequest, Vec<IpAddr>)>) -> Vec<Rebuilt> {
        services.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        services.dedup_by(|a, b| a.0.key == b.0.key);
        let mut outcomes: Vec<Rebuilt> = Vec::with_capacity(services.len());
        for (request, ips) in &services {
            if !ips.is_empty() {
                outcomes.push(self.restore(request, ips));
                continue;
            }
            let key = request.key.clone();
            self.take_out(&key);
            self.forget(&key);
            let result = request.intent().map(|intent| {
                self.services.insert(Record {
                    key: key.clone(),
                    intent,
                    held: None,
                    hold_only: false,
                });
                self.pending.insert(key.clone());
            });
            outcomes.push(Rebuilt {
                service: key,
                previous: Vec::new(),
                // Replaced below for every Service that waits.
                result: result.map(|()| Assignment {
                    pool: String::new(),
                    ips: Vec::new(),
                }),
                problem: None,
            });
        }
        for outcome in &mut outcomes {
            if !self.pending.contains(&outcome.service) {
                continue;
            }
            let key = outcome.service.clone();
            let Some(intent) = self.services.get(&key).map(|r| r.intent.clone()) else {
                continue;
            };
            outcome.result = self.allocate(&key, &intent).map(|held| {
                self.put_in(&key, held);
                held.assignment(&self.names)
            });
        }
        // Allocating one may have made room to share for another: settle.
        for update in self.retry_pending(None) {
            if let Some(outcome) = outcomes.iter_mut().find(|o| o.service == *update.service())
                && let Some(assignment) = update.assignment()
            {
                outcome.result = Ok(assignment.clone());
            }
        }
        outcomes
    }

    /// Updates to other Services caused by [`Allocator::assign`] calls since the last call
    /// (a waiting Service that got addresses another one gave up).
    pub fn take_updates(&mut self) -> Vec<ServiceUpdate> {
        std::mem::take(&mut self.outbox)
    }

    // ----- queries -----

    pub fn assignment(&self, key: &ServiceKey) -> Option<Assignment> {
        let held = self.services.get(key)?.held?;
        Some(held.assignment(&self.names))
    }

    /// Every assignment, by Service name.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, Assignment)> {
        self.services
            .iter()
            .filter_map(|r| r.held.map(|h| (&r.key, h.assignment(&self.names))))
    }

    /// Services waiting for addresses, by name.
    pub fn pending(&self) -> impl Iterator<Item = &ServiceKey> {
        self.pending.iter()
    }

    /// The Services holding `ip`, by name.
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.holding(ip).map(|r| r.key.clone()).collect()
    }

    /// The problems found by the last [`Allocator::set_pools`].
    pub fn problems(&self) -> &[PoolProblem] {
        &self.problems
    }

    /// Usage of every pool, by name.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools.values().map(|p| self.stats_of(p)).collect()
    }

    pub fn pool_stats_for(&self, name: &str) -> Option<PoolStats> {
        self.pools.get(name).map(|p| self.stats_of(p))
    }

    fn stats_of(&self, pool: &Pool) -> PoolStats {
        let family = |f: IpFamily| {
            let capacity = pool.capacity(f);
            if pool.is_valid() {
                let assigned = pool.taken(f);
                return FamilyStats {
                    capacity,
                    assigned,
                    available: capacity.saturating_sub(assigned),
                };
            }
            // Frozen: count what its Services still hold in its readable entries.
            let mut held = BTreeSet::new();
            for entry in pool.entries.iter().filter(|e| e.family() == f) {
                for ip in self.owners.range(entry.range.first()..=entry.range.last()) {
                    let here = self
                        .holding(ip)
                        .next()
                        .and_then(|r| r.held)
                        .is_some_and(|h| h.pool == pool.id);
                    if here {
                        held.insert(ip);
                    }
                }
            }
            FamilyStats {
                capacity,
                assigned: held.len() as u128,
                available: 0,
            }
        };
        PoolStats {
            pool: pool.name.to_string(),
            valid: pool.is_valid(),
            ipv4: family(IpFamily::V4),
            ipv6: family(IpFamily::V6),
        }
    }

    // ----- bookkeeping -----

    /// Rebuilds the entry index and every valid entry's taken set from the owners map.
    fn reindex(&mut self) {
        self.starts.clear();
        for pool in self.pools.values_mut() {
            let valid = pool.is_valid();
            for (i, entry) in pool.entries.iter_mut().enumerate() {
                entry.taken = Default::default();
                if !valid {
                    continue;
                }
                self.starts
                    .insert(entry.range.first(), (pool.name.clone(), i));
                for ip in self.owners.range(entry.range.first()..=entry.range.last()) {
                    if let Some(index) = entry.index_of(ip) {
                        entry.taken.insert(index);
                    }
                }
            }
        }
    }

    fn locate(&self, ip: IpAddr) -> Located<'_> {
        if let Some((_, (name, entry))) = self.starts.range(..=ip).next_back()
            && let Some(pool) = self.pools.get(name)
            && let Some(e) = pool.entries.get(*entry)
            && e.range.contains(ip)
        {
            return Located::Valid {
                pool,
                entry: *entry,
                index: e.index_of(ip),
            };
        }
        self.pools
            .values()
            .filter(|p| !p.is_valid())
            .find_map(|pool| {
                pool.locate(ip)
                    .map(|(_, index)| Located::Frozen { pool, index })
            })
            .unwrap_or(Located::Nowhere)
    }

    /// Like [`Allocator::locate`], but an address in one of the `preferred` pools (valid or
    /// frozen) is placed there.
    fn locate_preferring(&self, ip: IpAddr, preferred: &[Option<&str>]) -> Located<'_> {
        for name in preferred.iter().flatten() {
            if let Some(pool) = self.pools.get(*name)
                && let Some((entry, index)) = pool.locate(ip)
            {
                return if pool.is_valid() {
                    Located::Valid { pool, entry, index }
                } else {
                    Located::Frozen { pool, index }
                };
            }
        }
        self.locate(ip)
    }

    /// The valid entry holding `ip` and its ordinal there, for updating the taken set.
    fn taken_slot(&mut self, ip: IpAddr) -> Option<(&mut pool::Entry, u128)> {
        let (name, entry) = self
            .starts
            .range(..=ip)
            .next_back()
            .map(|(_, (n, e))| (n.clone(), *e))?;
        let e = self.pools.get_mut(&name)?.entries.get_mut(entry)?;
        if !e.range.contains(ip) {
            return None;
        }
        let index = e.index_of(ip)?;
        Some((e, index))
    }

    /// The records of the Services holding `ip`, by name.
    fn holding(&self, ip: IpAddr) -> impl Iterator<Item = &Record> {
        self.owners
            .of(ip)
            .iter()
            .filter_map(|slot| self.services.at(*slot))
    }

    fn sharing_key(&self, slot: Slot) -> Option<Box<str>> {
        let sharing = self.services.at(slot)?.intent.sharing()?;
        Some(sharing.key.clone())
    }

    /// Records that the Service holds `held` (its record must exist).
    fn put_in(&mut self, key: &ServiceKey, held: Held) {
        let Some(slot) = self.services.slot(key) else {
            return;
        };
        let sharing = self.sharing_key(slot);
        for ip in held.ips.iter() {
            if self.owners.insert(ip, slot, &self.services)
                && let Some((entry, index)) = self.taken_slot(ip)
            {
                entry.taken.insert(index);
            }
            if let Some(s) = &sharing {
                self.shared.entry(s.clone()).or_default().insert(ip);
            }
        }
        self.pending.remove(key);
        if let Some(record) = self.services.at_mut(slot) {
            record.held = Some(held);
        }
    }

    /// Frees what the Service holds, leaving its record waiting.
    fn take_out(&mut self, key: &ServiceKey) -> Option<Held> {
        let slot = self.services.slot(key)?;
        let record = self.services.at_mut(slot)?;
        let held = record.held.take()?;
        let hold_only = record.hold_only;
        let sharing = self.sharing_key(slot);
        for ip in held.ips.iter() {
            if self.owners.remove(ip, slot)
                && let Some((entry, index)) = self.taken_slot(ip)
            {
                entry.taken.remove(index);
            }
            if let Some(s) = &sharing {
                let still_shared = self
                    .holding(ip)
                    .filter_map(|r| r.intent.sharing())
                    .any(|theirs| theirs.key == *s);
                if !still_shared && let Some(ips) = self.shared.get_mut(s) {
                    ips.remove(&ip);
                    if ips.is_empty() {
                        self.shared.remove(s);
                    }
                }
            }
        }
        if !hold_only {
            self.pending.insert(key.clone());
        }
        Some(held)
    }

    /// Drops the Service's record (its addresses must already be taken out).
    fn forget(&mut self, key: &ServiceKey) {
        self.services.remove(key);
        self.pending.remove(key);
    }

    /// Tries every waiting Service again, in name order, until no more succeed.
    fn retry_pending(&mut self, except: Option<&ServiceKey>) -> Vec<ServiceUpdate> {
        let mut updates = Vec::new();
        loop {
            let waiting: Vec<ServiceKey> = self
                .pending
                .iter()
                .filter(|k| Some(*k) != except)
                .cloned()
                .collect();
            let mut progress = false;
            for key in waiting {
                let Some(intent) = self.services.get(&key).map(|r| r.intent.clone()) else {
                    continue;
                };
                if let Ok(held) = self.allocate(&key, &intent) {
                    self.put_in(&key, held);
                    updates.push(ServiceUpdate::Allocated {
                        service: key,
                        assignment: held.assignment(&self.names),
                    });
                    progress = true;
                }
            }
            if !progress {
                return updates;
            }
        }
    }

    // ----- decisions -----

    /// Keeps `before` if still valid (completing it), else allocates anew.
    fn place(
        &mut self,
        key: &ServiceKey,
        intent: &Intent,
        before: Option<&Held>,
    ) -> Result<Assignment, AllocationError> {
        if let Some(old) = before
            && let Ok(held) = self
                .judge(
                    key,
                    intent,
                    &old.ips,
                    Some(self.names.name(old.pool)),
                    STATUS_FIELD,
                )
                .and_then(|held| self.complete(key, intent, held))
        {
            self.put_in(key, held);
            return Ok(held.assignment(&self.names));
        }
        let held = self.allocate(key, intent)?;
        self.put_in(key, held);
        Ok(held.assignment(&self.names))
    }

    /// Whether the Service may keep holding `ips` under its current request and the current
    /// pools; returns what it keeps (the address of a family it no longer takes, or whose
    /// pool it lost, is dropped). `previous` is the pool it was recorded with. The Service
    /// must not be holding anything itself.
    fn judge(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        ips: &Ips,
        previous: Option<&str>,
        field: &str,
    ) -> Result<Held, AllocationError> {
        let service = || key.clone();
        let value = ips.text();
        if let Some(requested) = intent.ips()
            && !requested.ips.same_set(ips)
        {
            return Err(AllocationError::NotRequested {
                service: service(),
                field: field.into(),
                value,
                request: requested.field.clone(),
                requested: requested.value.clone(),
            });
        }

        let mut kept: Vec<(IpAddr, &Pool)> = Vec::new();
        let mut lost = None;
        // Where a frozen pool overlaps a valid one, the Service stays with the pool it asked
        // for or was recorded with, so an overlap never moves or clears it.
        let preferred = [intent.pool().map(|p| p.name.as_str()), previous];
        for ip in ips.iter() {
            let found = match self.locate_preferring(ip, &preferred) {
                Located::Nowhere => Err(AllocationError::IpInNoPool {
                    service: service(),
                    field: field.into(),
                    value: value.clone(),
                    ip,
                }),
                Located::Valid {
                    pool, index: None, ..
                }
                | Located::Frozen { pool, index: None } => Err(AllocationError::BuggyIp {
                    service: service(),
                    field: field.into(),
                    value: value.clone(),
                    ip,
                    pool: pool.name.to_string(),
                }),
                Located::Valid { pool, .. } | Located::Frozen { pool, .. } => Ok(pool),
            };
            match found {
                Ok(pool) => kept.push((ip, pool)),
                Err(error) => {
                    lost.get_or_insert(error);
                }
            }
        }
        if let Some(error) = lost
            && (intent.ips().is_some() || kept.is_empty())
        {
            return Err(error);
        }

        // The pool of the primary family's address is the Service's pool.
        let anchor = intent
            .primary
            .and_then(|f| kept.iter().find(|(ip, _)| IpFamily::of(*ip) == f))
            .or(kept.first())
            .map(|(_, pool)| *pool);
        let Some(pool) = anchor else {
            return Err(AllocationError::IpInNoPool {
                service: service(),
                field: field.into(),
                value,
                ip: ips.first(),
            });
        };
        if let Some((other, other_pool)) = kept.iter().find(|(_, p)| p.name != pool.name) {
            if intent.ips().is_some() {
                let (first, _) = kept
                    .iter()
                    .find(|(_, p)| p.name == pool.name)
                    .copied()
                    .unwrap_or((ips.first(), pool));
                return Err(AllocationError::IpsInDifferentPools {
                    service: service(),
                    field: field.into(),
                    value,
                    first,
                    first_pool: pool.name.to_string(),
                    second: *other,
                    second_pool: other_pool.name.to_string(),
                });
            }
            kept.retain(|(_, p)| p.name == pool.name);
        }
        if intent.policy == FamilyPolicy::SingleStack {
            let family = intent
                .primary
                .or(kept.first().map(|(ip, _)| IpFamily::of(*ip)))
                .unwrap_or(IpFamily::V4);
            kept.retain(|(ip, _)| IpFamily::of(*ip) == family);
            if kept.is_empty() {
                let ip = ips.first();
                return Err(AllocationError::WrongFamily {
                    service: service(),
                    field: field.into(),
                    value,
                    ip,
                    family: IpFamily::of(ip),
                    allowed: family,
                });
            }
        }
        if let Some(named) = intent.pool()
            && named.name != *pool.name
        {
            return Err(AllocationError::IpOutsidePool {
                service: service(),
                field: field.into(),
                value,
                ip: kept.first().map_or(ips.first(), |(ip, _)| *ip),
                found: format!("in IPAddressPool {:?}", &*pool.name),
                pool: named.name.clone(),
                annotation: named.annotation.clone(),
            });
        }
        pool.admits(key.namespace(), intent)
            .map_err(|why| AllocationError::PoolNotForService {
                service: service(),
                pool: pool.name.to_string(),
                why,
            })?;
        for (ip, _) in &kept {
            self.may_share(key, intent, *ip, field, &value)?;
        }

        let ips = match (intent.ips(), kept.as_slice()) {
            (Some(requested), _) => requested.ips,
            // Both kept: the same two addresses.
            (None, [_, _]) => ips.in_family_order(intent.primary),
            (None, _) => Ips::one(kept.first().map_or(ips.first(), |(ip, _)| *ip)),
        };
        Ok(Held { pool: pool.id, ips })
    }

    /// Adds the missing family to a one-address dual-stack assignment from the same pool:
    /// required for RequireDualStack (else the assignment is not valid), best effort for
    /// PreferDualStack. Requested addresses are never added to.
    fn complete(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        held: Held,
    ) -> Result<Held, AllocationError> {
        if held.ips.len() == 2
            || intent.policy == FamilyPolicy::SingleStack
            || intent.ips().is_some()
        {
            return Ok(held);
        }
        let missing = missing_family(held.ips.first());
        let extra = self
            .pools
            .get(self.names.name(held.pool))
            .filter(|p| p.is_valid() && p.has_family(missing))
            .and_then(|p| self.pick(key, intent, p, Some(missing)))
            .and_then(|ip| Ips::two(held.ips.first(), ip));
        match extra {
            Some(ips) => Ok(Held {
                pool: held.pool,
                ips: ips.in_family_order(intent.primary),
            }),
            None if intent.policy == FamilyPolicy::PreferDualStack => Ok(held),
            None => Err(AllocationError::NoAvailableIps {
                service: key.clone(),
                wanted: missing.to_string(),
                pools: format!("{:?}", self.names.name(held.pool)),
            }),
        }
    }

    /// Whether the Service may join the holders of `ip`.
    fn may_share(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        ip: IpAddr,
        field: &str,
        value: &str,
    ) -> Result<(), AllocationError> {
        for other in self.holding(ip).filter(|r| r.key != *key) {
            let theirs = other.intent.sharing();
            compatible(intent.sharing(), theirs).map_err(|why| AllocationError::IpInUse {
                service: key.clone(),
                field: field.into(),
                value: value.into(),
                ip,
                other: other.key.clone(),
                why,
            })?;
        }
        Ok(())
    }

    /// New addresses for a Service that holds none.
    fn allocate(&self, key: &ServiceKey, intent: &Intent) -> Result<Held, AllocationError> {
        if let Some(requested) = intent.ips() {
            return self.allocate_requested(key, intent, requested);
        }
        if let Some(named) = intent.pool() {
            return self.allocate_named(key, intent, named);
        }
        self.allocate_auto(key, intent)
    }

    fn allocate_requested(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        requested: &Requested,
    ) -> Result<Held, AllocationError> {
        let service = || key.clone();
        let field = || requested.field.clone();
        let value = || requested.value.clone();
        if let Some(named) = intent.pool() {
            self.named_pool(key, named)?;
        }
        let mut anchor: Option<(IpAddr, &Pool)> = None;
        for ip in requested.ips.iter() {
            let located = self.locate(ip);
            if let Some(named) = intent.pool() {
                let found = match &located {
                    Located::Valid { pool, .. } | Located::Frozen { pool, .. } => Some(&pool.name),
                    Located::Nowhere => None,
                };
                if found.is_none_or(|name| **name != *named.name) {
                    return Err(AllocationError::IpOutsidePool {
                        service: service(),
                        field: field(),
                        value: value(),
                        ip,
                        found: found.map_or("in no IPAddressPool".to_owned(), |name| {
                            format!("in IPAddressPool {:?}", &**name)
                        }),
                        pool: named.name.clone(),
                        annotation: named.annotation.clone(),
                    });
                }
            }
            let pool = match located {
                Located::Nowhere => {
                    return Err(AllocationError::IpInNoPool {
                        service: service(),
                        field: field(),
                        value: value(),
                        ip,
                    });
                }
                Located::Frozen { pool, .. } => {
                    return Err(AllocationError::InvalidPool {
                        service: service(),
                        pool: pool.name.to_string(),
                        problem: pool.problem_text(),
                    });
                }
                Located::Valid {
                    pool, index: None, ..
                } => {
                    return Err(AllocationError::BuggyIp {
                        service: service(),
                        field: field(),
                        value: value(),
                        ip,
                        pool: pool.name.to_string(),
                    });
                }
                Located::Valid { pool, .. } => pool,
            };
            match anchor {
                None => anchor = Some((ip, pool)),
                Some((first, first_pool)) if first_pool.name != pool.name => {
                    return Err(AllocationError::IpsInDifferentPools {
                        service: service(),
                        field: field(),
                        value: value(),
                        first,
                        first_pool: first_pool.name.to_string(),
                        second: ip,
                        second_pool: pool.name.to_string(),
                    });
                }
                Some(_) => {}
            }
        }
        let Some((_, pool)) = anchor else {
            return Err(AllocationError::EmptyIpList {
                service: service(),
                annotation: field(),
            });
        };
        pool.admits(key.namespace(), intent)
            .map_err(|why| AllocationError::PoolNotForService {
                service: service(),
                pool: pool.name.to_string(),
                why,
            })?;
        for ip in requested.ips.iter() {
            self.may_share(key, intent, ip, &requested.field, &requested.value)?;
        }
        Ok(Held {
            pool: pool.id,
            ips: requested.ips,
        })
    }

    /// The pool a Service named, if it exists, is valid and admits the Service.
    fn named_pool(&self, key: &ServiceKey, named: &PoolRequest) -> Result<&Pool, AllocationError> {
        let Some(pool) = self.pools.get(named.name.as_str()) else {
            let known: Vec<String> = self.pools.keys().map(|n| format!("{:?}", &**n)).collect();
            return Err(AllocationError::UnknownPool {
                service: key.clone(),
                annotation: named.annotation.clone(),
                pool: named.name.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        if !pool.is_valid() {
            return Err(AllocationError::InvalidPool {
                service: key.clone(),
                pool: pool.name.to_string(),
                problem: pool.problem_text(),
            });
        }
        Ok(pool)
    }

    fn allocate_named(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        named: &PoolRequest,
    ) -> Result<Held, AllocationError> {
        let pool = self.named_pool(key, named)?;
        pool.admits(key.namespace(), intent)
            .map_err(|why| AllocationError::PoolNotForService {
                service: key.clone(),
                pool: pool.name.to_string(),
                why,
            })?;
        let lacks = |family: IpFamily, needs: String| AllocationError::PoolLacksFamily {
            service: key.clone(),
            pool: pool.name.to_string(),
            annotation: named.annotation.clone(),
            family,
            needs,
        };
        match intent.policy {
            FamilyPolicy::SingleStack => {
                if let Some(f) = intent.primary
                    && !pool.has_family(f)
                {
                    return Err(lacks(f, format!("an {f} address (spec.ipFamilies)")));
                }
            }
            FamilyPolicy::RequireDualStack => {
                for f in [IpFamily::V4, IpFamily::V6] {
                    if !pool.has_family(f) {
                        return Err(lacks(
                            f,
                            "one IPv4 and one IPv6 address (RequireDualStack)".into(),
                        ));
                    }
                }
            }
            FamilyPolicy::PreferDualStack => {}
        }
        self.take_from(key, intent, &[pool])
    }

    fn allocate_auto(&self, key: &ServiceKey, intent: &Intent) -> Result<Held, AllocationError> {
        let mut candidates: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| p.is_valid() && p.auto_assign)
            .filter(|p| p.admits(key.namespace(), intent).is_ok())
            .collect();
        candidates.sort_by(|a, b| a.rank().cmp(&b.rank()));
        if candidates.is_empty() {
            return Err(AllocationError::NoPoolForService {
                service: key.clone(),
                namespace: key.namespace().to_owned(),
            });
        }
        if intent.policy == FamilyPolicy::RequireDualStack {
            candidates.retain(|p| p.has_family(IpFamily::V4) && p.has_family(IpFamily::V6));
            if candidates.is_empty() {
                return Err(AllocationError::NoDualStackPool {
                    service: key.clone(),
                });
            }
        }
        self.take_from(key, intent, &candidates)
    }

    /// The first allocation the family policy allows from `pools`, in order.
    fn take_from(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        pools: &[&Pool],
    ) -> Result<Held, AllocationError> {
        let dual = |pool: &Pool| {
            let v4 = self.pick(key, intent, pool, Some(IpFamily::V4))?;
            let v6 = self.pick(key, intent, pool, Some(IpFamily::V6))?;
            Some(Held {
                pool: pool.id,
                ips: Ips::two(v4, v6)?.in_family_order(intent.primary),
            })
        };
        let single = |pool: &Pool| {
            self.pick(key, intent, pool, intent.single_family())
                .map(|ip| Held {
                    pool: pool.id,
                    ips: Ips::one(ip),
                })
        };
        let found = match intent.policy {
            FamilyPolicy::SingleStack => pools.iter().find_map(|p| single(p)),
            FamilyPolicy::RequireDualStack => pools.iter().find_map(|p| dual(p)),
            FamilyPolicy::PreferDualStack => pools
                .iter()
                .find_map(|p| dual(p))
                .or_else(|| pools.iter().find_map(|p| single(p))),
        };
        found.ok_or_else(|| {
            let service = key.clone();
            let wanted = match (intent.policy, intent.single_family()) {
                (FamilyPolicy::RequireDualStack, _) => "IPv4 and IPv6".into(),
                (_, Some(f)) => f.to_string(),
                (_, None) => "IPv4 or IPv6".into(),
            };
            let names: Vec<String> = pools.iter().map(|p| format!("{:?}", &*p.name)).collect();
            let pools_text = names.join(", ");
            match self.refusal(key, intent, pools) {
                Some((ip, other, why)) => AllocationError::SharingRefused {
                    service,
                    wanted,
                    pools: pools_text,
                    ip,
                    other,
                    why,
                },
                None => AllocationError::NoAvailableIps {
                    service,
                    wanted,
                    pools: pools_text,
                },
            }
        })
    }

    /// Why a Service that asks to share found no address in `pools` to join: the first held
    /// address of a family it takes (those of Services with its key first), with a holder and
    /// the sharing rule that refused it. None when it asks for no sharing.
    fn refusal(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        pools: &[&Pool],
    ) -> Option<(IpAddr, ServiceKey, SharingMismatch)> {
        let ours = intent.sharing()?;
        let family = match intent.policy {
            FamilyPolicy::RequireDualStack => None,
            _ => intent.single_family(),
        };
        let in_pools = |ip: &IpAddr| {
            matches!(self.locate(*ip), Located::Valid { pool, .. }
                if pools.iter().any(|p| p.name == pool.name))
        };
        let same_key = self.shared.get(&ours.key).into_iter().flatten().copied();
        let held = pools
            .iter()
            .flat_map(|pool| pool.entries.iter())
            .flat_map(|entry| self.owners.range(entry.range.first()..=entry.range.last()));
        same_key
            .filter(in_pools)
            .chain(held)
            .filter(|ip| family.is_none_or(|f| IpFamily::of(*ip) == f))
            .find_map(|ip| {
                self.holding(ip)
                    .filter(|r| r.key != *key)
                    .find_map(|other| {
                        let why = compatible(Some(ours), other.intent.sharing()).err()?;
                        Some((ip, other.key.clone(), why))
                    })
            })
    }

    /// The first address of `family` (either when None) in `pool` that the Service may take:
    /// free, or held only by Services it may share with, whichever comes first in the pool.
    fn pick(
        &self,
        key: &ServiceKey,
        intent: &Intent,
        pool: &Pool,
        family: Option<IpFamily>,
    ) -> Option<IpAddr> {
        let free = pool.first_free(family);
        let shareable = intent
            .sharing()
            .and_then(|s| self.shared.get(&s.key))
            .and_then(|ips| {
                ips.iter()
                    .filter(|ip| family.is_none_or(|f| IpFamily::of(**ip) == f))
                    .filter_map(|ip| match self.locate(*ip) {
                        Located::Valid {
                            pool: p,
                            entry,
                            index: Some(index),
                        } if p.name == pool.name => Some((entry, index, *ip)),
                        _ => None,
                    })
                    .filter(|(_, _, ip)| self.may_share(key, intent, *ip, "", "").is_ok())
                    .map(|(entry, index, _)| (entry, index))
                    .min()
            });
        let best = match (free, shareable) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        best.and_then(|position| pool.ip_at(position))
    }
}

fn missing_family(ip: IpAddr) -> IpFamily {
    match IpFamily::of(ip) {
        IpFamily::V4 => IpFamily::V6,
        IpFamily::V6 => IpFamily::V4,
    }
}

/// Status addresses as an assignment: one, or one per family.
fn status_set(key: &ServiceKey, ips: &[IpAddr]) -> Result<Ips, AllocationError> {
    let text = ips
        .iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let twin = |family| AllocationError::TwoOfOneFamily {
        service: key.clone(),
        field: STATUS_FIELD.into(),
        value: text.clone(),
        family,
    };
    let repeated = ips.iter().enumerate().find_map(|(i, ip)| {
        let family = IpFamily::of(*ip);
        ips.get(..i)?
            .iter()
            .any(|earlier| IpFamily::of(*earlier) == family)
            .then_some(family)
    });
    if let Some(family) = repeated {
        return Err(twin(family));
    }
    Ips::from_slice(ips).ok_or_else(|| AllocationError::EmptyIpList {
        service: key.clone(),
        annotation: STATUS_FIELD.into(),
    })
}
