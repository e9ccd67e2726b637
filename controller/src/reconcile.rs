//! The controller's decisions: Kubernetes objects in, writes and events out. It wraps the
//! allocator with what it last saw of every Service, so it writes only what differs from what
//! the Service already says. Pure: no I/O, no clock; both backends (Kubernetes, standalone)
//! drive it and carry out its [`Action`]s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_proto::api::{IPAddressPool, IPAddressPoolStatus, PoolProblem};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::ResourceExt;

use crate::ipam::{
    AllocationError, Allocator, Assignment, ServiceKey, ServiceRequest, ServiceUpdate, handled_by,
    status_ips,
};

/// Severity of an event, as Kubernetes Events have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// Something the backend must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make the Service's `status.loadBalancer.ingress` and `metallb.io/ip-allocated-from-pool`
    /// say this; `None` clears both.
    WriteService {
        service: ServiceKey,
        assignment: Option<Assignment>,
    },
    /// Record an event on the Service (a log line in standalone mode).
    Event {
        service: ServiceKey,
        severity: Severity,
        reason: &'static str,
        message: String,
        /// For failures, the allocator's short cause (metrics label), e.g. `NoAvailableIPs`.
        cause: Option<&'static str>,
    },
    /// Make the pool's status say this.
    WritePool { pool: String, status: PoolStatus },
}

/// A pool's status as the controller wants it; the backend adds condition timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStatus {
    pub counters: IPAddressPoolStatus,
    /// Why the pool is frozen, one line per problem; empty when it is valid.
    pub problems: Vec<String>,
    /// The Valid condition's lastTransitionTime as the pool says it, when its status stays
    /// the same: a count that changes is no transition.
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl PoolStatus {
    /// The condition's lastTransitionTime to write: kept while the status stays, else now.
    pub fn transition_time(&self) -> String {
        self.since.as_ref().map_or_else(
            || k8s_openapi::jiff::Timestamp::now().to_string(),
            |t| t.0.to_string(),
        )
    }
}

impl PoolStatus {
    /// Whether an observed status already says this (conditions compared by status and
    /// message, not time).
    fn matches(&self, observed: Option<&IPAddressPoolStatus>) -> bool {
        let Some(observed) = observed else {
            return false;
        };
        let counters = |s: &IPAddressPoolStatus| {
            (
                s.assigned_ipv4,
                s.assigned_ipv6,
                s.available_ipv4,
                s.available_ipv6,
            )
        };
        let valid = observed
            .conditions
            .iter()
            .find(|c| c.type_ == VALID_CONDITION);
        let condition_matches = match valid {
            Some(c) => c.status == self.condition_status() && c.message == self.condition_message(),
            None => false,
        };
        counters(observed) == counters(&self.counters) && condition_matches
    }

    pub fn condition_status(&self) -> &'static str {
        if self.problems.is_empty() {
            "True"
        } else {
            "False"
        }
    }

    pub fn condition_reason(&self) -> &'static str {
        if self.problems.is_empty() {
            "Valid"
        } else {
            "Invalid"
        }
    }

    pub fn condition_message(&self) -> String {
        if self.problems.is_empty() {
            "the pool hands out addresses".to_owned()
        } else {
            format!(
                "the pool hands out no new addresses: {}",
                self.problems.join("; ")
            )
        }
    }
}

/// Logs an event the reconciler decided, under its target; both backends do, before recording
/// it their own way.
pub fn log_event(service: &ServiceKey, severity: Severity, reason: &str, message: &str) {
    match severity {
        Severity::Normal => tracing::info!(service = %service, reason, "{message}"),
        Severity::Warning => tracing::warn!(service = %service, reason, "{message}"),
    }
}

/// The condition type FerroLB keeps on every pool.
pub const VALID_CONDITION: &str = "Valid";

/// What the controller knows of one Service.
#[derive(Clone, Debug)]
struct Seen {
    /// The addresses and pool its object currently says (status + annotation).
    written: Option<Assignment>,
    /// What we last asked the backend to write, until the object says so. Status and the
    /// annotation are two writes, so an echo may show half of it; this keeps such an echo
    /// from causing the same write again.
    pending: Option<Option<Assignment>>,
    /// The deprecated annotations it used when last seen, to warn once per change.
    deprecated: Vec<String>,
    /// The object as last seen, to tell real changes from echoes in `sync`.
    object: Service,
}

/// The controller's state between inputs.
#[derive(Debug)]
pub struct Reconciler {
    allocator: Allocator,
    lb_class: Option<String>,
    services: BTreeMap<ServiceKey, Seen>,
    /// Services of another class holding addresses: counted, kept from others, never written.
    foreign: std::collections::BTreeSet<ServiceKey>,
    namespaces: BTreeMap<String, Namespace>,
    pools: Vec<IPAddressPool>,
}

/// What a Service's object says it holds.
fn written(service: &Service, key: &ServiceKey) -> Option<Assignment> {
    let ips = status_ips(service, key).unwrap_or_default();
    let pool = service.annotations().get(IP_ALLOCATED_FROM_POOL).cloned();
    match (ips.is_empty(), pool) {
        (true, None) => None,
        (_, pool) => Some(Assignment {
            pool: pool.unwrap_or_default(),
            ips,
        }),
    }
}

fn key_of(service: &Service) -> ServiceKey {
    ServiceKey::new(
        service.namespace().as_deref().unwrap_or("default"),
        &service.name_any(),
    )
}

fn ip_list(ips: &[IpAddr]) -> String {
    let quoted: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Reconciler {
    pub fn new(lb_class: Option<String>) -> Self {
        Reconciler {
            allocator: Allocator::new(),
            lb_class,
            services: BTreeMap::new(),
            foreign: Default::default(),
            namespaces: BTreeMap::new(),
            pools: Vec::new(),
        }
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Problems of the current pools.
    pub fn pool_problems(&self) -> &[PoolProblem] {
        self.allocator.problems()
    }

    /// First input after start: every pool, namespace and Service as they are. Assignments the
    /// Services' status holds are kept where still valid before anything new is allocated.
    pub fn start(
        &mut self,
        pools: Vec<IPAddressPool>,
        namespaces: Vec<Namespace>,
        services: Vec<Service>,
    ) -> Vec<Action> {
        self.namespaces = namespaces
            .into_iter()
            .map(|ns| (ns.name_any(), ns))
            .collect();
        self.pools = pools.clone();
        let mut actions = Vec::new();
        let change = self.allocator.set_pools(pools);
        debug_assert!(
            change.updates.is_empty(),
            "no Service is known before start"
        );

        let mut requests = Vec::new();
        for service in services {
            let key = key_of(&service);
            let held = written(&service, &key);
            if !handled_by(&service, self.lb_class.as_deref()) {
                actions.extend(self.not_ours(&service, &key, held, false));
                continue;
            }
            let labels = self.namespace_labels(&key);
            self.services.insert(
                key.clone(),
                Seen {
                    written: held.clone(),
                    pending: None,
                    deprecated: Vec::new(),
                    object: service.clone(),
                },
            );
            match ServiceRequest::from_service(&service, &labels) {
                Ok(request) => {
                    actions.extend(self.deprecation_warning(&key, &request));
                    let ips = held.map(|a| a.ips).unwrap_or_default();
                    requests.push((request, ips));
                }
                Err(err) => actions.push(failed(&key, &err)),
            }
        }
        for rebuilt in self.allocator.rebuild(requests) {
            let key = rebuilt.service.clone();
            match (&rebuilt.result, &rebuilt.problem) {
                (Ok(assignment), _) => {
                    actions.extend(self.converge(&key, Some(assignment.clone()), None))
                }
                (Err(err), why) => {
                    if let Some(why) = why.as_ref().filter(|_| !rebuilt.previous.is_empty()) {
                        actions.push(cleared(&key, &rebuilt.previous, why));
                    }
                    actions.extend(self.converge(&key, None, Some(err)));
                }
            }
        }
        actions.extend(self.pool_actions());
        actions
    }

    /// A Service was created or changed (including echoes of our own writes).
    pub fn service_changed(&mut self, service: &Service) -> Vec<Action> {
        let key = key_of(service);
        let held = written(service, &key);
        if !handled_by(service, self.lb_class.as_deref()) {
            let was_ours = self.services.contains_key(&key);
            let mut actions = self.forget(&key);
            actions.extend(self.not_ours(service, &key, held, was_ours));
            actions.extend(self.pool_actions());
            return actions;
        }
        self.foreign.remove(&key);
        let (deprecated, pending) = self
            .services
            .get(&key)
            .map(|s| (s.deprecated.clone(), s.pending.clone()))
            .unwrap_or_default();
        self.services.insert(
            key.clone(),
            Seen {
                written: held,
                pending,
                deprecated,
                object: service.clone(),
            },
        );
        self.evaluate(&key)
    }

    /// Decides a known Service again from its last-seen object and what it was last written.
    fn evaluate(&mut self, key: &ServiceKey) -> Vec<Action> {
        let Some(service) = self.services.get(key).map(|s| s.object.clone()) else {
            return Vec::new();
        };
        let request = match ServiceRequest::from_service(&service, &self.namespace_labels(key)) {
            Ok(request) => request,
            Err(err) => return vec![failed(key, &err)],
        };
        let mut actions = self.deprecation_warning(key, &request);
        let before = self.allocator.assignment(key);
        match self.allocator.assign(&request) {
            Ok(assignment) => actions.extend(self.converge(key, Some(assignment), None)),
            Err(err) if err.is_unreadable_request() => actions.push(failed(key, &err)),
            Err(err) => {
                if let Some(before) = before {
                    actions.push(cleared(key, &before.ips, &err));
                }
                actions.extend(self.converge(key, None, Some(&err)));
            }
        }
        let updates = self.allocator.take_updates();
        actions.extend(self.apply_updates(updates));
        actions.extend(self.pool_actions());
        actions
    }

    /// A Service was deleted.
    pub fn service_deleted(&mut self, key: &ServiceKey) -> Vec<Action> {
        let mut actions = self.forget(key);
        actions.extend(self.pool_actions());
        actions
    }

    /// The set of pools changed (any create, edit or delete, or their seniority), or their
    /// status did.
    pub fn pools_changed(&mut self, pools: Vec<IPAddressPool>) -> Vec<Action> {
        let specs_changed = pools.len() != self.pools.len()
            || pools.iter().zip(&self.pools).any(|(a, b)| {
                a.spec != b.spec
                    || a.metadata.name != b.metadata.name
                    || a.metadata.creation_timestamp != b.metadata.creation_timestamp
            });
        self.pools = pools.clone();
        let mut actions = Vec::new();
        if specs_changed {
            let change = self.allocator.set_pools(pools);
            actions.extend(self.apply_updates(change.updates));
        }
        actions.extend(self.pool_actions());
        actions
    }

    /// A Namespace was created or changed: its labels may admit its Services to other pools.
    pub fn namespace_changed(&mut self, namespace: Namespace) -> Vec<Action> {
        let name = namespace.name_any();
        let labels_changed =
            self.namespaces.get(&name).map(|old| old.labels()) != Some(namespace.labels());
        self.namespaces.insert(name.clone(), namespace);
        if !labels_changed {
            return Vec::new();
        }
        let affected: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|key| key.namespace() == name)
            .cloned()
            .collect();
        affected.iter().flat_map(|key| self.evaluate(key)).collect()
    }

    /// Compares a whole snapshot with what was seen and feeds the differences in, as a
    /// directory reload does. Echoes of our own writes change nothing.
    pub fn sync(
        &mut self,
        pools: Vec<IPAddressPool>,
        namespaces: Vec<Namespace>,
        services: Vec<Service>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for namespace in namespaces {
            actions.extend(self.namespace_changed(namespace));
        }
        if pools != self.pools {
            actions.extend(self.pools_changed(pools));
        }
        let mut present = BTreeMap::new();
        for service in services {
            present.insert(key_of(&service), service);
        }
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .chain(&self.foreign)
            .filter(|k| !present.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            actions.extend(self.service_deleted(&key));
        }
        for (key, service) in present {
            let unchanged = self
                .services
                .get(&key)
                .is_some_and(|seen| seen.object == service);
            if !unchanged {
                actions.extend(self.service_changed(&service));
            }
        }
        actions
    }

    /// The backend could not carry out a `WriteService`: forget it was asked, so the next
    /// input about the Service writes again.
    pub fn write_failed(&mut self, key: &ServiceKey) {
        if let Some(seen) = self.services.get_mut(key) {
            seen.pending = None;
        }
    }

    fn namespace_labels(&self, key: &ServiceKey) -> BTreeMap<String, String> {
        self.namespaces
            .get(key.namespace())
            .map(|ns| ns.labels().clone())
            .unwrap_or_default()
    }

    fn forget(&mut self, key: &ServiceKey) -> Vec<Action> {
        self.services.remove(key);
        self.foreign.remove(key);
        let released = self.allocator.release(key);
        self.apply_updates(released.updates)
    }

    /// A Service this controller does not serve. Of another class (a `LoadBalancer` whose
    /// `loadBalancerClass` is not ours): never written, whatever annotation it carries (MetalLB
    /// writes the same one), its addresses held so no Service of ours gets them. No longer a
    /// `LoadBalancer`: its class is gone with the type, so it is cleared only by the controller
    /// it was known to (`was_ours`) or by the default class's.
    fn not_ours(
        &mut self,
        service: &Service,
        key: &ServiceKey,
        held: Option<Assignment>,
        was_ours: bool,
    ) -> Vec<Action> {
        let load_balancer = service
            .spec
            .as_ref()
            .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
        if load_balancer {
            let ips = held.map(|a| a.ips).unwrap_or_default();
            let labels = self.namespace_labels(key);
            if let Ok(request) = ServiceRequest::from_service(service, &labels)
                && self.allocator.hold_foreign(&request, &ips)
            {
                self.foreign.insert(key.clone());
            }
            return Vec::new();
        }
        let ours_before = was_ours || self.lb_class.is_none();
        if ours_before && held.as_ref().is_some_and(|a| !a.pool.is_empty()) {
            return vec![Action::WriteService {
                service: key.clone(),
                assignment: None,
            }];
        }
        Vec::new()
    }

    /// Warns when a Service starts relying on deprecated annotation spellings.
    fn deprecation_warning(&mut self, key: &ServiceKey, request: &ServiceRequest) -> Vec<Action> {
        let deprecated = request.deprecated_annotations();
        let Some(seen) = self.services.get_mut(key) else {
            return Vec::new();
        };
        if deprecated == seen.deprecated {
            return Vec::new();
        }
        seen.deprecated = deprecated.clone();
        deprecated
            .into_iter()
            .map(|old| Action::Event {
                service: key.clone(),
                severity: Severity::Warning,
                reason: "deprecatedAnnotation",
                message: format!(
                    "annotation {old} is deprecated; use {}",
                    old.replacen("metallb.universe.tf/", "metallb.io/", 1)
                ),
                cause: None,
            })
            .collect()
    }

    /// Writes (and announces) `assignment` unless the Service already says it.
    fn converge(
        &mut self,
        key: &ServiceKey,
        assignment: Option<Assignment>,
        error: Option<&AllocationError>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let (observed, pending) = self
            .services
            .get(key)
            .map(|s| (s.written.clone(), s.pending.clone()))
            .unwrap_or_default();
        if observed == assignment {
            if let Some(seen) = self.services.get_mut(key) {
                seen.pending = None;
            }
        } else if pending.as_ref() != Some(&assignment) {
            let known = pending.unwrap_or(observed);
            if let Some(a) = &assignment
                && known.as_ref().map(|c| &c.ips) != Some(&a.ips)
            {
                actions.push(Action::Event {
                    service: key.clone(),
                    severity: Severity::Normal,
                    reason: "IPAllocated",
                    message: format!("Assigned IP {} from pool {}", ip_list(&a.ips), a.pool),
                    cause: None,
                });
            }
            actions.push(Action::WriteService {
                service: key.clone(),
                assignment: assignment.clone(),
            });
            if let Some(seen) = self.services.get_mut(key) {
                seen.pending = Some(assignment);
            }
        }
        if let Some(err) = error {
            actions.push(failed(key, err));
        }
        actions
    }

    fn apply_updates(&mut self, updates: Vec<ServiceUpdate>) -> Vec<Action> {
        let mut actions = Vec::new();
        for update in updates {
            let key = update.service().clone();
            if self.foreign.contains(&key) {
                continue;
            }
            match update {
                ServiceUpdate::Reallocated {
                    previous,
                    why,
                    assignment,
                    ..
                } => {
                    actions.push(cleared(&key, &previous.ips, &why));
                    actions.extend(self.converge(&key, Some(assignment), None));
                }
                ServiceUpdate::Cleared {
                    previous,
                    why,
                    error,
                    ..
                } => {
                    actions.push(cleared(&key, &previous.ips, &why));
                    actions.extend(self.converge(&key, None, Some(&error)));
                }
                ServiceUpdate::Moved { assignment, .. }
                | ServiceUpdate::Changed { assignment, .. }
                | ServiceUpdate::Allocated { assignment, .. } => {
                    actions.extend(self.converge(&key, Some(assignment), None));
                }
            }
        }
        actions
    }

    /// Pool statuses that differ from what the pools say.
    fn pool_actions(&self) -> Vec<Action> {
        let problems = self.allocator.problems();
        self.allocator
            .pool_stats()
            .into_iter()
            .filter_map(|stats| {
                let status = PoolStatus {
                    counters: stats.status(),
                    problems: problems
                        .iter()
                        .filter(|p| p.pool.rsplit('/').next() == Some(stats.pool.as_str()))
                        .map(|p| {
                            format!(
                                "{} {}: {} (allowed: {})",
                                p.field, p.value, p.reason, p.allowed
                            )
                        })
                        .collect(),
                    since: None,
                };
                let observed = self
                    .pools
                    .iter()
                    .find(|p| p.name_any() == stats.pool)
                    .and_then(|p| p.status.as_ref());
                let status = PoolStatus {
                    since: observed
                        .and_then(|o| o.conditions.iter().find(|c| c.type_ == VALID_CONDITION))
                        .filter(|c| c.status == status.condition_status())
                        .map(|c| c.last_transition_time.clone()),
                    ..status
                };
                (!status.matches(observed)).then_some(Action::WritePool {
                    pool: stats.pool,
                    status,
                })
            })
            .collect()
    }
}

fn failed(key: &ServiceKey, err: &AllocationError) -> Action {
    Action::Event {
        service: key.clone(),
        severity: Severity::Warning,
        reason: "AllocationFailed",
        message: format!("Failed to allocate IP for \"{key}\": {err}"),
        cause: Some(err.reason()),
    }
}

fn cleared(key: &ServiceKey, previous: &[IpAddr], why: &AllocationError) -> Action {
    Action::Event {
        service: key.clone(),
        severity: Severity::Warning,
        reason: "ClearAssignment",
        message: format!(
            "current IP {} for \"{key}\" cleared: {why}",
            ip_list(previous)
        ),
        cause: None,
    }
}
