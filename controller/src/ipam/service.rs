//! The allocator's view of a Service: who it is, what it asks for (addresses, pool, sharing,
//! families) and what pools may see of it (namespace, labels), read from a Kubernetes Service.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ferrolb_proto::api::{IpFamily, ServiceAnnotation};
use k8s_openapi::api::core::v1::Service;

use super::error::AllocationError;
use super::sharing::{BackendKey, Port, Protocol, Sharing};

/// `namespace/name` of a Service; cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey(Arc<str>);

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceKey(format!("{namespace}/{name}").into())
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or(&*self.0, |(_, name)| name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FamilyPolicy {
    /// One address of the primary family.
    #[default]
    SingleStack,
    /// Both families from one dual-stack pool if any serves the Service, else one address.
    PreferDualStack,
    /// One IPv4 and one IPv6 address from the same pool, or nothing.
    RequireDualStack,
}

impl FamilyPolicy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "SingleStack" => Some(FamilyPolicy::SingleStack),
            "PreferDualStack" => Some(FamilyPolicy::PreferDualStack),
            "RequireDualStack" => Some(FamilyPolicy::RequireDualStack),
            _ => None,
        }
    }
}

/// Everything the allocator needs to know about one LoadBalancer Service, as the user wrote it.
/// Build it from a Kubernetes object with [`ServiceRequest::from_service`], or by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    /// `metadata.labels`, for serviceAllocation's `serviceSelectors`.
    pub labels: BTreeMap<String, String>,
    /// The labels of the Service's Namespace, for serviceAllocation's `namespaceSelectors`.
    pub namespace_labels: BTreeMap<String, String>,
    /// `metadata.annotations` (only the `metallb.io/` and `metallb.universe.tf/` ones matter).
    pub annotations: BTreeMap<String, String>,
    /// `spec.loadBalancerIP`; empty counts as unset.
    pub load_balancer_ip: Option<String>,
    pub family_policy: FamilyPolicy,
    /// `spec.ipFamilies` in order, the first being the primary family; empty when unknown
    /// (then a single-stack Service takes whichever family its pool offers first).
    pub families: Vec<IpFamily>,
    pub backend: BackendKey,
    pub ports: Vec<Port>,
}

impl ServiceRequest {
    /// A single-stack Service with no annotations, labels, ports or families.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceRequest {
            key: ServiceKey::new(namespace, name),
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            load_balancer_ip: None,
            family_policy: FamilyPolicy::SingleStack,
            families: Vec::new(),
            backend: BackendKey::Cluster,
            ports: Vec::new(),
        }
    }

    pub fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_namespace_label(mut self, key: &str, value: &str) -> Self {
        self.namespace_labels
            .insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_load_balancer_ip(mut self, ip: &str) -> Self {
        self.load_balancer_ip = Some(ip.to_owned());
        self
    }

    pub fn with_families(mut self, policy: FamilyPolicy, families: &[IpFamily]) -> Self {
        self.family_policy = policy;
        self.families = families.to_vec();
        self
    }

    pub fn with_ports(mut self, ports: &[Port]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    pub fn with_backend(mut self, backend: BackendKey) -> Self {
        self.backend = backend;
        self
    }

    /// Reads a Kubernetes Service. `namespace_labels` are the labels of its Namespace.
    /// Fails on values the API server would not have accepted (unknown family, policy or
    /// protocol, port out of range) and on a missing name.
    pub fn from_service(
        service: &Service,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<Self, AllocationError> {
        let meta = &service.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta
            .name
            .as_deref()
            .ok_or_else(|| AllocationError::MissingName {
                namespace: namespace.to_owned(),
            })?;
        let key = ServiceKey::new(namespace, name);
        let spec = service.spec.clone().unwrap_or_default();

        let family_policy = match spec.ip_family_policy.as_deref() {
            None => FamilyPolicy::SingleStack,
            Some(text) => {
                FamilyPolicy::parse(text).ok_or_else(|| AllocationError::InvalidFamilyPolicy {
                    service: key.clone(),
                    value: text.to_owned(),
                })?
            }
        };

        let mut families = Vec::new();
        for (index, text) in spec.ip_families.iter().flatten().enumerate() {
            families.push(match text.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                _ => {
                    return Err(AllocationError::InvalidFamily {
                        service: key,
                        index,
                        value: text.clone(),
                    });
                }
            });
        }
        if families.is_empty() {
            // Older objects and hand-written manifests: the cluster IPs tell the families.
            let cluster_ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter());
            for ip in cluster_ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                let family = IpFamily::of(ip);
                if !families.contains(&family) {
                    families.push(family);
                }
            }
        }

        let backend = match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => BackendKey::Cluster,
            Some("Local") => BackendKey::Local(spec.selector.clone().unwrap_or_default()),
            Some(other) => {
                return Err(AllocationError::InvalidTrafficPolicy {
                    service: key,
                    value: other.to_owned(),
                });
            }
        };

        let mut ports = Vec::new();
        for (index, port) in spec.ports.iter().flatten().enumerate() {
            let protocol = match port.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(AllocationError::InvalidProtocol {
                        service: key,
                        index,
                        value: other.to_owned(),
                    });
                }
            };
            let number = u16::try_from(port.port)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| AllocationError::InvalidPort {
                    service: key.clone(),
                    index,
                    value: port.port,
                })?;
            ports.push(Port {
                protocol,
                port: number,
            });
        }

        Ok(ServiceRequest {
            key,
            labels: meta.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            load_balancer_ip: spec.load_balancer_ip.clone(),
            family_policy,
            families,
            backend,
            ports,
        })
    }

    /// The deprecated `metallb.universe.tf/` annotation keys this Service relies on, for a
    /// warning event.
    pub fn deprecated_annotations(&self) -> Vec<String> {
        ServiceAnnotation::ALL
            .iter()
            .filter_map(|a| a.lookup(&self.annotations))
            .filter(|found| found.deprecated)
            .map(|found| found.key_used)
            .collect()
    }

    /// Reads what the Service asks for, checking it against itself (families, counts).
    pub(crate) fn intent(&self) -> Result<Intent, AllocationError> {
        let service = || self.key.clone();
        let primary = self.families.first().copied();

        let spec_ip = self
            .load_balancer_ip
            .as_deref()
            .map(str::trim)
            .filter(|ip| !ip.is_empty());
        let annotated = ServiceAnnotation::LoadBalancerIps.lookup(&self.annotations);
        let ips = match (annotated, spec_ip) {
            (Some(found), Some(spec)) => {
                return Err(AllocationError::BothIpFields {
                    service: service(),
                    spec: spec.to_owned(),
                    annotation: found.key_used,
                    value: found.value.to_owned(),
                });
            }
            (Some(found), None) => {
                if found.value.trim().is_empty() {
                    return Err(AllocationError::EmptyIpList {
                        service: service(),
                        annotation: found.key_used,
                    });
                }
                Some(self.requested(format!("annotation {}", found.key_used), found.value)?)
            }
            (None, Some(spec)) => Some(self.requested("spec.loadBalancerIP".to_owned(), spec)?),
            (None, None) => None,
        };

        let pool = match ServiceAnnotation::AddressPool.lookup(&self.annotations) {
            None => None,
            Some(found) if found.value.trim().is_empty() => {
                return Err(AllocationError::EmptyPoolName {
                    service: service(),
                    annotation: found.key_used,
                });
            }
            Some(found) => Some(PoolRequest {
                annotation: found.key_used,
                name: found.value.trim().to_owned(),
            }),
        };

        let sharing = ServiceAnnotation::AllowSharedIp
            .lookup(&self.annotations)
            .map(|found| found.value.trim())
            .filter(|key| !key.is_empty())
            .map(|key| Sharing::new(key, self.backend.clone(), &self.ports));

        let labels =
            (!self.labels.is_empty() || !self.namespace_labels.is_empty()).then(|| Labels {
                service: self.labels.clone(),
                namespace: self.namespace_labels.clone(),
            });

        Ok(Intent::new(
            Extras {
                ips,
                pool,
                sharing,
                labels,
            },
            self.family_policy,
            primary,
        ))
    }

    /// Parses a requested address list and checks it fits the Service's family policy.
    fn requested(&self, field: String, value: &str) -> Result<Requested, AllocationError> {
        let service = || self.key.clone();
        let mut ips: Vec<IpAddr> = Vec::new();
        for item in value.split(',').map(str::trim) {
            let ip: IpAddr = item.parse().map_err(|_| AllocationError::InvalidIp {
                service: service(),
                field: field.clone(),
                value: value.to_owned(),
                item: item.to_owned(),
            })?;
            if let Some(twin) = ips
                .iter()
                .find(|other| IpFamily::of(**other) == IpFamily::of(ip))
            {
                return Err(AllocationError::TwoOfOneFamily {
                    service: service(),
                    field,
                    value: value.to_owned(),
                    family: IpFamily::of(*twin),
                });
            }
            ips.push(ip);
        }
        // No two of one family (checked above), so only an empty list is refused here.
        let Some(ips) = Ips::from_slice(&ips) else {
            return Err(AllocationError::EmptyIpList {
                service: service(),
                annotation: field,
            });
        };
        match self.family_policy {
            FamilyPolicy::SingleStack if ips.len() == 2 => {
                return Err(AllocationError::SingleStackTwoIps {
                    service: service(),
                    field,
                    value: value.to_owned(),
                });
            }
            FamilyPolicy::SingleStack => {
                if let Some(allowed) = self.families.first().copied()
                    && IpFamily::of(ips.first()) != allowed
                {
                    return Err(AllocationError::WrongFamily {
                        service: service(),
                        field,
                        value: value.to_owned(),
                        ip: ips.first(),
                        family: IpFamily::of(ips.first()),
                        allowed,
                    });
                }
            }
            FamilyPolicy::RequireDualStack if ips.len() == 1 => {
                let missing = match IpFamily::of(ips.first()) {
                    IpFamily::V4 => IpFamily::V6,
                    IpFamily::V6 => IpFamily::V4,
                };
                return Err(AllocationError::DualStackIncomplete {
                    service: service(),
                    field,
                    value: value.to_owned(),
                    missing,
                });
            }
            FamilyPolicy::RequireDualStack | FamilyPolicy::PreferDualStack => {}
        }
        Ok(Requested {
            field,
            value: value.to_owned(),
            ips,
        })
    }
}

/// Whether the controller handles this Service at all: `type: LoadBalancer`, and the
/// `spec.loadBalancerClass` it was started with (none = Services without a class).
pub fn handled_by(service: &Service, lb_class: Option<&str>) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref() == lb_class
}

/// The addresses in `status.loadBalancer.ingress`, in order; hostname-only entries are skipped.
pub fn status_ips(service: &Service, key: &ServiceKey) -> Result<Vec<IpAddr>, AllocationError> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut ips = Vec::new();
    for (index, entry) in ingress.into_iter().flatten().enumerate() {
        let Some(text) = entry.ip.as_deref() else {
            continue;
        };
        let ip = text.parse().map_err(|_| AllocationError::InvalidStatusIp {
            service: key.clone(),
            index,
            value: text.to_owned(),
        })?;
        ips.push(ip);
    }
    Ok(ips)
}

/// One or two addresses, at most one per family, in the order they are written to the
/// Service's status. Every held assignment carries one, so it is packed: 21 bytes, where a
/// pair of `IpAddr` would take 34.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Ips {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    V4V6(Ipv4Addr, Ipv6Addr),
    V6V4(Ipv6Addr, Ipv4Addr),
}

impl Ips {
    pub(crate) fn one(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Ips::V4(a),
            IpAddr::V6(a) => Ips::V6(a),
        }
    }

    /// `first` then `second`; None when both are of one family.
    pub(crate) fn two(first: IpAddr, second: IpAddr) -> Option<Self> {
        match (first, second) {
            (IpAddr::V4(a), IpAddr::V6(b)) => Some(Ips::V4V6(a, b)),
            (IpAddr::V6(a), IpAddr::V4(b)) => Some(Ips::V6V4(a, b)),
            _ => None,
        }
    }

    /// In the order status lists them, as MetalLB writes a dual-stack allocation: the primary
    /// family (`spec.ipFamilies[0]`) first, IPv4 first when the families are not known.
    pub(crate) fn in_family_order(self, primary: Option<IpFamily>) -> Self {
        match (self, primary) {
            (Ips::V6V4(v6, v4), None | Some(IpFamily::V4)) => Ips::V4V6(v4, v6),
            (Ips::V4V6(v4, v6), Some(IpFamily::V6)) => Ips::V6V4(v6, v4),
            (ips, _) => ips,
        }
    }

    /// From a list of at most two addresses of different families.
    pub(crate) fn from_slice(ips: &[IpAddr]) -> Option<Self> {
        match ips {
            [one] => Some(Ips::one(*one)),
            [a, b] => Ips::two(*a, *b),
            _ => None,
        }
    }

    pub(crate) fn first(&self) -> IpAddr {
        match *self {
            Ips::V4(a) | Ips::V4V6(a, _) => a.into(),
            Ips::V6(a) | Ips::V6V4(a, _) => a.into(),
        }
    }

    fn second(&self) -> Option<IpAddr> {
        match *self {
            Ips::V4(_) | Ips::V6(_) => None,
            Ips::V6V4(_, b) => Some(b.into()),
            Ips::V4V6(_, b) => Some(b.into()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        1 + usize::from(self.second().is_some())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = IpAddr> + use<> {
        std::iter::once(self.first()).chain(self.second())
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.iter().any(|x| x == ip)
    }

    pub(crate) fn same_set(&self, other: &Ips) -> bool {
        self.len() == other.len() && self.iter().all(|ip| other.contains(ip))
    }

    pub(crate) fn to_vec(self) -> Vec<IpAddr> {
        self.iter().collect()
    }

    /// Comma-separated, as in the annotation.
    pub(crate) fn text(&self) -> String {
        self.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Addresses a Service asked for, and where it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Requested {
    /// `annotation metallb.io/loadBalancerIPs` (or the deprecated key) or `spec.loadBalancerIP`.
    pub field: String,
    pub value: String,
    pub ips: Ips,
}

/// A pool a Service asked for by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolRequest {
    pub annotation: String,
    pub name: String,
}

/// The labels pools select on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Labels {
    pub service: BTreeMap<String, String>,
    pub namespace: BTreeMap<String, String>,
}

/// What a Service asks for, read and checked; what the allocator remembers of it. Everything
/// but the family policy is rare, so it sits behind one box: an ordinary Service costs 16 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Intent {
    extras: Option<Box<Extras>>,
    pub policy: FamilyPolicy,
    pub primary: Option<IpFamily>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extras {
    ips: Option<Requested>,
    pool: Option<PoolRequest>,
    sharing: Option<Sharing>,
    labels: Option<Labels>,
}

impl Intent {
    /// What to remember of a Service whose request cannot be read but whose status holds
    /// `held` addresses: keep exactly those while they stay valid, as MetalLB never touches a
    /// Service whose annotations it cannot read.
    pub(crate) fn lenient(request: &ServiceRequest, held: usize) -> Intent {
        let sharing = ServiceAnnotation::AllowSharedIp
            .lookup(&request.annotations)
            .map(|found| found.value.trim())
            .filter(|key| !key.is_empty())
            .map(|key| Sharing::new(key, request.backend.clone(), &request.ports));
        let labels = Some(Labels {
            service: request.labels.clone(),
            namespace: request.namespace_labels.clone(),
        });
        Intent::new(
            Extras {
                ips: None,
                pool: None,
                sharing,
                labels,
            },
            // Whatever family the held address has, and no second one added.
            if held > 1 {
                FamilyPolicy::PreferDualStack
            } else {
                FamilyPolicy::SingleStack
            },
            None,
        )
    }

    fn new(extras: Extras, policy: FamilyPolicy, primary: Option<IpFamily>) -> Intent {
        let extras = (extras != Extras::default()).then(|| Box::new(extras));
        Intent {
            extras,
            policy,
            primary,
        }
    }

    pub(crate) fn ips(&self) -> Option<&Requested> {
        self.extras.as_ref()?.ips.as_ref()
    }

    pub(crate) fn pool(&self) -> Option<&PoolRequest> {
        self.extras.as_ref()?.pool.as_ref()
    }

    pub(crate) fn sharing(&self) -> Option<&Sharing> {
        self.extras.as_ref()?.sharing.as_ref()
    }

    pub(crate) fn service_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.extras.as_ref()?.labels.as_ref().map(|l| &l.service)
    }

    pub(crate) fn namespace_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.extras.as_ref()?.labels.as_ref().map(|l| &l.namespace)
    }

    /// The family a single-stack allocation takes: the primary one, or either when unknown.
    pub(crate) fn single_family(&self) -> Option<IpFamily> {
        self.primary
    }
}
