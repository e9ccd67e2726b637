//! Which node announces each Service, and so what this node announces: the speaker's pure
//! decision from Services (IPs from status only, the pool from the controller's
//! `ip-allocated-from-pool` annotation), pools, L2Advertisements, Nodes, EndpointSlices and the
//! live members. Every speaker computes the same result from the same inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_proto::api::annotations::{EXCLUDE_FROM_LOAD_BALANCERS_LABEL, IP_ALLOCATED_FROM_POOL};
use ferrolb_proto::api::selector::matches;
use ferrolb_proto::api::{AddressRange, IPAddressPool, L2Advertisement, seniority};
use ferrolb_proto::election::{ElectionKey, owner};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the decision depends on, borrowed from the speaker's view of the cluster, so
/// that deciding copies no Service.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub services: &'a [Service],
    pub pools: &'a [IPAddressPool],
    pub advertisements: &'a [L2Advertisement],
    pub nodes: &'a [Node],
    pub endpoint_slices: &'a [EndpointSlice],
    /// Names of the speakers the membership protocol sees alive (this one included).
    pub live: &'a BTreeSet<String>,
    /// Serve only Services of this loadBalancerClass (None: Services without a class).
    pub lb_class: Option<&'a str>,
    /// Whether a Service without EndpointSlices has no endpoints (Kubernetes), or is served
    /// by every node (standalone, where endpoints are optional).
    pub endpoints_required: bool,
}

/// Where a Service's traffic should arrive, or why it is not announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `namespace/name`.
    pub service: String,
    pub ips: Vec<IpAddr>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `node` announces the IPs on `interfaces`.
    Announced {
        node: String,
        interfaces: Interfaces,
    },
    NotAnnounced(Reason),
}

/// The interfaces an announcement may use, before the node's own eligibility rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every eligible interface.
    All,
    /// Only these (the union of the matching advertisements' lists).
    Only(BTreeSet<String>),
}

/// Why a Service with IPs is not announced by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its first IP lies in no IPAddressPool.
    NoPool { ip: IpAddr },
    /// No L2Advertisement selects its pool (and the Service).
    NoAdvertisement { pool: String },
    /// No endpoint is ready or serving.
    NoEndpoints,
    /// No live node may announce it (excluded, not selected, or no local endpoint).
    NoCandidate,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoPool { ip } => write!(f, "{ip} is in no IPAddressPool"),
            Reason::NoAdvertisement { pool } => {
                write!(f, "no L2Advertisement selects pool {pool} and this Service")
            }
            Reason::NoEndpoints => f.write_str("no ready or serving endpoint"),
            Reason::NoCandidate => f.write_str(
                "no live node may announce it (excluded, not selected by nodeSelectors, or without a local endpoint)",
            ),
        }
    }
}

/// Decides every Service that has IPs in its status, in name order.
pub fn decide(inputs: &Inputs<'_>) -> Vec<Decision> {
    let mut pools: Vec<(&IPAddressPool, Vec<AddressRange>)> = inputs
        .pools
        .iter()
        .map(|p| {
            let ranges = p
                .spec
                .addresses
                .iter()
                .filter_map(|a| AddressRange::parse(a).ok())
                .collect();
            (p, ranges)
        })
        .collect();
    pools.sort_by(|a, b| seniority(a.0, b.0));
    let eligible: BTreeMap<String, &Node> = inputs
        .nodes
        .iter()
        .filter(|n| inputs.live.contains(&n.name_any()) && !excluded(n))
        .map(|n| (n.name_any(), n))
        .collect();

    let mut decisions: Vec<Decision> = inputs
        .services
        .iter()
        .filter(|svc| handled(svc, inputs.lb_class))
        .filter_map(|svc| {
            let ips = status_ips(svc);
            let first = *ips.first()?;
            let outcome = decide_one(svc, first, &pools, &eligible, inputs);
            Some(Decision {
                service: format!(
                    "{}/{}",
                    svc.namespace().unwrap_or_else(|| "default".into()),
                    svc.name_any()
                ),
                ips,
                outcome,
            })
        })
        .collect();
    decisions.sort_by(|a, b| a.service.cmp(&b.service));
    decisions
}

/// The decisions this node must carry out.
pub fn mine<'a>(
    decisions: &'a [Decision],
    node: &str,
) -> impl Iterator<Item = (&'a Decision, &'a Interfaces)> {
    decisions.iter().filter_map(move |d| match &d.outcome {
        Outcome::Announced {
            node: owner,
            interfaces,
        } if owner == node => Some((d, interfaces)),
        _ => None,
    })
}

fn decide_one(
    svc: &Service,
    first: IpAddr,
    pools: &[(&IPAddressPool, Vec<AddressRange>)],
    eligible: &BTreeMap<String, &Node>,
    inputs: &Inputs<'_>,
) -> Outcome {
    let Some(pool) = pool_of(svc, first, pools) else {
        return Outcome::NotAnnounced(Reason::NoPool { ip: first });
    };
    let ads: Vec<&L2Advertisement> = inputs
        .advertisements
        .iter()
        .filter(|ad| selects_pool(ad, pool) && selects_service(ad, svc))
        .collect();
    if ads.is_empty() {
        return Outcome::NotAnnounced(Reason::NoAdvertisement {
            pool: pool.name_any(),
        });
    }

    let serving = serving_nodes(svc, inputs.endpoint_slices);
    let local = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    let needs_endpoints = inputs.endpoints_required || serving.is_some();
    let serving = serving.unwrap_or_default();
    if needs_endpoints && serving.is_empty() {
        return Outcome::NotAnnounced(Reason::NoEndpoints);
    }

    let candidates = eligible.iter().filter(|(name, node)| {
        let selected = ads.iter().any(|ad| {
            ad.spec.node_selectors.is_empty()
                || ad
                    .spec
                    .node_selectors
                    .iter()
                    .any(|s| matches(s, node.labels()))
        });
        // With externalTrafficPolicy Local only a node hosting an endpoint can serve; without
        // endpoint data (standalone) every node counts as hosting one.
        let hosts_endpoint = !local || !needs_endpoints || serving.contains(name.as_str());
        selected && hosts_endpoint
    });
    let Some(node) = owner(
        ElectionKey(first),
        candidates.map(|(name, _)| name.as_str()),
    ) else {
        return Outcome::NotAnnounced(Reason::NoCandidate);
    };

    let interfaces = if ads.iter().any(|ad| ad.spec.interfaces.is_empty()) {
        Interfaces::All
    } else {
        Interfaces::Only(
            ads.iter()
                .flat_map(|ad| ad.spec.interfaces.iter().cloned())
                .collect(),
        )
    };
    Outcome::Announced {
        node: node.to_owned(),
        interfaces,
    }
}

/// The pool of a Service's first IP: the one the controller allocated it from
/// (`metallb.io/ip-allocated-from-pool`) if that pool holds it, else the oldest pool holding
/// it, as the controller gives an overlap to the older pool. `pools` are oldest first.
fn pool_of<'p>(
    svc: &Service,
    ip: IpAddr,
    pools: &[(&'p IPAddressPool, Vec<AddressRange>)],
) -> Option<&'p IPAddressPool> {
    let allocated_from = svc.annotations().get(IP_ALLOCATED_FROM_POOL);
    let holding = || {
        pools
            .iter()
            .filter(|(_, ranges)| ranges.iter().any(|r| r.contains(ip)))
    };
    holding()
        .find(|(pool, _)| Some(&pool.name_any()) == allocated_from)
        .or_else(|| holding().next())
        .map(|(pool, _)| *pool)
}

fn handled(svc: &Service, lb_class: Option<&str>) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.as_deref() == lb_class
    })
}

/// The IPs in status, in order; anything unparsable is skipped (the controller reports it).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn excluded(node: &Node) -> bool {
    let unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    unavailable
        || node
            .labels()
            .contains_key(EXCLUDE_FROM_LOAD_BALANCERS_LABEL)
}

fn selects_pool(ad: &L2Advertisement, pool: &IPAddressPool) -> bool {
    let spec = &ad.spec;
    if spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty() {
        return true;
    }
    let name = pool.name_any();
    spec.ip_address_pools.contains(&name)
        || spec
            .ip_address_pool_selectors
            .iter()
            .any(|s| matches(s, pool.labels()))
}

fn selects_service(ad: &L2Advertisement, svc: &Service) -> bool {
    ad.spec.service_selectors.is_empty()
        || ad
            .spec
            .service_selectors
            .iter()
            .any(|s| matches(s, svc.labels()))
}

/// Nodes hosting a serving endpoint of the Service, or None when no EndpointSlice names it.
/// An endpoint serves when `serving` says so, or (older slices) when it is `ready`.
fn serving_nodes(svc: &Service, slices: &[EndpointSlice]) -> Option<BTreeSet<String>> {
    let namespace = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let mine: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| {
            s.namespace().unwrap_or_else(|| "default".into()) == namespace
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
        })
        .collect();
    if mine.is_empty() {
        return None;
    }
    Some(
        mine.iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| {
                let conditions = e.conditions.clone().unwrap_or_default();
                conditions.serving.or(conditions.ready).unwrap_or(true)
            })
            .map(|e| e.node_name.clone().unwrap_or_default())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, labels: Value) -> Node {
        from(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn service(name: &str, ip: &str, extra: Value) -> Service {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "web", "labels": {"app": name}},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
        });
        json_merge(&mut v, extra);
        from(v)
    }

    fn json_merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    json_merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    /// The inputs, owned, for tests to change.
    #[derive(Clone, Debug)]
    struct World {
        services: Vec<Service>,
        pools: Vec<IPAddressPool>,
        advertisements: Vec<L2Advertisement>,
        nodes: Vec<Node>,
        endpoint_slices: Vec<EndpointSlice>,
        live: BTreeSet<String>,
        lb_class: Option<String>,
        endpoints_required: bool,
    }

    impl World {
        fn decide(&self) -> Vec<Decision> {
            decide(&Inputs {
                services: &self.services,
                pools: &self.pools,
                advertisements: &self.advertisements,
                nodes: &self.nodes,
                endpoint_slices: &self.endpoint_slices,
                live: &self.live,
                lb_class: self.lb_class.as_deref(),
                endpoints_required: self.endpoints_required,
            })
        }
    }

    fn inputs() -> World {
        World {
            services: vec![service("app", "10.250.0.100", json!({}))],
            pools: vec![from(
                json!({"metadata": {"name": "lan", "labels": {"zone": "a"}}, "spec": {"addresses": ["10.250.0.100/30"]}}),
            )],
            advertisements: vec![from(json!({"metadata": {"name": "all"}, "spec": {}}))],
            nodes: vec![
                node("n1", json!({})),
                node("n2", json!({})),
                node("n3", json!({})),
            ],
            endpoint_slices: vec![],
            live: ["n1", "n2", "n3"].map(String::from).into(),
            lb_class: None,
            endpoints_required: false,
        }
    }

    fn outcome(inputs: &World) -> Outcome {
        inputs.decide().remove(0).outcome
    }

    fn announcer(inputs: &World) -> String {
        match outcome(inputs) {
            Outcome::Announced { node, .. } => node,
            other => panic!("not announced: {other:?}"),
        }
    }

    #[test]
    fn one_owner_by_election_and_it_returns() {
        let all = inputs();
        let owner = announcer(&all);
        let expected = ferrolb_proto::election::owner(
            ElectionKey("10.250.0.100".parse().unwrap()),
            ["n1", "n2", "n3"],
        );
        assert_eq!(Some(owner.as_str()), expected);

        let mut without = all.clone();
        without.live.remove(&owner);
        assert_ne!(announcer(&without), owner);
        assert_eq!(announcer(&all), owner, "back when the node returns");
    }

    #[test]
    fn excluded_and_unselected_nodes_never_announce() {
        let mut i = inputs();
        let owner = announcer(&i);
        i.nodes = i
            .nodes
            .iter()
            .map(|n| {
                if n.name_any() == owner {
                    node(&owner, json!({EXCLUDE_FROM_LOAD_BALANCERS_LABEL: ""}))
                } else {
                    n.clone()
                }
            })
            .collect();
        assert_ne!(announcer(&i), owner);

        let mut i = inputs();
        i.nodes = vec![
            node("n1", json!({"role": "edge"})),
            node("n2", json!({})),
            node("n3", json!({})),
        ];
        i.advertisements = vec![from(
            json!({"metadata": {"name": "edge"}, "spec": {"nodeSelectors": [{"matchLabels": {"role": "edge"}}]}}),
        )];
        assert_eq!(announcer(&i), "n1");

        let mut i = inputs();
        i.nodes = vec![from(
            json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "NetworkUnavailable", "status": "True"}]}}),
        )];
        assert_eq!(outcome(&i), Outcome::NotAnnounced(Reason::NoCandidate));
    }

    #[test]
    fn pools_without_an_advertisement_are_not_announced() {
        let mut i = inputs();
        i.advertisements = vec![from(
            json!({"metadata": {"name": "other"}, "spec": {"ipAddressPools": ["dmz"]}}),
        )];
        assert_eq!(
            outcome(&i),
            Outcome::NotAnnounced(Reason::NoAdvertisement { pool: "lan".into() })
        );
        i.advertisements = vec![from(
            json!({"metadata": {"name": "zone"}, "spec": {"ipAddressPoolSelectors": [{"matchLabels": {"zone": "a"}}]}}),
        )];
        assert!(matches!(outcome(&i), Outcome::Announced { .. }));
        i.advertisements = vec![from(
            json!({"metadata": {"name": "svc"}, "spec": {"serviceSelectors": [{"matchLabels": {"app": "other"}}]}}),
        )];
        assert!(matches!(
            outcome(&i),
            Outcome::NotAnnounced(Reason::NoAdvertisement { .. })
        ));
        i.services = vec![service("app", "192.0.2.1", json!({}))];
        assert_eq!(
            outcome(&i),
            Outcome::NotAnnounced(Reason::NoPool {
                ip: "192.0.2.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn interfaces_are_the_union_unless_one_advertisement_takes_all() {
        let mut i = inputs();
        i.advertisements = vec![
            from(json!({"metadata": {"name": "a"}, "spec": {"interfaces": ["eth1"]}})),
            from(json!({"metadata": {"name": "b"}, "spec": {"interfaces": ["eth2"]}})),
        ];
        let Outcome::Announced { interfaces, .. } = outcome(&i) else {
            panic!()
        };
        assert_eq!(
            interfaces,
            Interfaces::Only(["eth1", "eth2"].map(String::from).into())
        );
        i.advertisements
            .push(from(json!({"metadata": {"name": "c"}, "spec": {}})));
        let Outcome::Announced { interfaces, .. } = outcome(&i) else {
            panic!()
        };
        assert_eq!(interfaces, Interfaces::All);
    }

    fn slice(nodes: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<Value> = nodes
            .iter()
            .map(|(n, serving)| json!({"addresses": ["10.0.0.1"], "nodeName": n, "conditions": {"serving": serving, "ready": serving}}))
            .collect();
        from(json!({
            "metadata": {"name": "app-x", "namespace": "web", "labels": {SERVICE_NAME_LABEL: "app"}},
            "addressType": "IPv4", "endpoints": endpoints,
        }))
    }

    #[test]
    fn endpoints_decide_whether_and_for_local_where() {
        let mut i = inputs();
        i.endpoints_required = true;
        assert_eq!(outcome(&i), Outcome::NotAnnounced(Reason::NoEndpoints));
        i.endpoint_slices = vec![slice(&[("n2", false)])];
        assert_eq!(outcome(&i), Outcome::NotAnnounced(Reason::NoEndpoints));
        i.endpoint_slices = vec![slice(&[("n2", true)])];
        assert!(matches!(outcome(&i), Outcome::Announced { .. }));

        i.services = vec![service(
            "app",
            "10.250.0.100",
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        )];
        assert_eq!(announcer(&i), "n2");
        i.endpoint_slices = vec![slice(&[("n3", true), ("n2", false)])];
        assert_eq!(announcer(&i), "n3");
    }

    /// Issue 19: of two overlapping pools, each with its own advertisement, the one the
    /// controller allocated from (its annotation) decides; without the annotation, the older
    /// pool, as the controller gives the overlap to the older pool.
    #[test]
    fn the_pool_the_controller_allocated_from_decides_where_pools_overlap() {
        let mut i = inputs();
        i.pools = vec![
            from(
                json!({"metadata": {"name": "a-new", "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"addresses": ["10.250.0.0/24"]}}),
            ),
            from(
                json!({"metadata": {"name": "z-old", "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"addresses": ["10.250.0.100/30"]}}),
            ),
        ];
        i.advertisements = vec![
            from(
                json!({"metadata": {"name": "new"}, "spec": {"ipAddressPools": ["a-new"], "interfaces": ["eth-new"]}}),
            ),
            from(
                json!({"metadata": {"name": "old"}, "spec": {"ipAddressPools": ["z-old"], "interfaces": ["eth-old"]}}),
            ),
        ];
        let interfaces = |i: &World| match outcome(i) {
            Outcome::Announced { interfaces, .. } => interfaces,
            other => panic!("not announced: {other:?}"),
        };
        let only = |name: &str| Interfaces::Only([name.to_owned()].into());
        let annotated = |pool: &str| {
            service(
                "app",
                "10.250.0.100",
                json!({"metadata": {"annotations": {IP_ALLOCATED_FROM_POOL: pool}}}),
            )
        };

        assert_eq!(
            interfaces(&i),
            only("eth-old"),
            "no annotation: the older pool"
        );
        i.services = vec![annotated("a-new")];
        assert_eq!(interfaces(&i), only("eth-new"), "the annotated pool");
        i.services = vec![annotated("z-old")];
        assert_eq!(interfaces(&i), only("eth-old"), "the annotated pool");
        i.services = vec![annotated("gone")];
        assert_eq!(
            interfaces(&i),
            only("eth-old"),
            "an unknown pool: the older one"
        );
    }

    #[test]
    fn sharing_services_elect_the_same_node_and_classes_filter() {
        let mut i = inputs();
        i.services = vec![
            service("a", "10.250.0.101", json!({})),
            service("b", "10.250.0.101", json!({})),
        ];
        let owners: Vec<_> = i.decide().into_iter().map(|d| d.outcome).collect();
        assert_eq!(owners[0], owners[1]);
        i.lb_class = Some("other".into());
        assert!(i.decide().is_empty());
        let mine_count = |i: &World, n: &str| mine(&i.decide(), n).count();
        let i = inputs();
        assert_eq!(
            ["n1", "n2", "n3"]
                .iter()
                .map(|n| mine_count(&i, n))
                .sum::<usize>(),
            1
        );
    }
}
