//! Bad input to the allocator: every case gets a message naming the Service, the field or
//! annotation and the value, saying what is allowed, and a short reason for metrics; nothing
//! panics and the valid Services keep being served.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

mod ipam_support;

use std::collections::BTreeMap;

use ferrolb_controller::ipam::{
    AllocationError, Allocator, BackendKey, FamilyPolicy, Port, ServiceRequest, status_ips,
};
use ferrolb_proto::api::IpFamily;
use ipam_support::*;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};

const POOL: &str = "metallb.io/address-pool";
const IPS: &str = "metallb.io/loadBalancerIPs";
const SHARE: &str = "metallb.io/allow-shared-ip";

/// Pools every case runs against, with Services already holding some addresses.
fn world() -> Allocator {
    let mut a = allocator(vec![
        pool("lan", &["10.0.0.0/28", "fd00::/124"]),
        pool("dmz", &["10.0.1.0/30"]),
        avoid_buggy(pool("buggy", &["10.0.2.0/24"])),
        pool("v6only", &["fd01::/124"]),
        manual(allocation(
            pool("web-only", &["10.0.3.0/30"]),
            prio(1, &["web"]),
        )),
        manual(allocation(
            pool("edge-only", &["10.0.4.0/30"]),
            ferrolb_proto::api::ServiceAllocation {
                service_selectors: vec![selector("tier", "edge")],
                ..Default::default()
            },
        )),
        manual(pool("tiny", &["10.0.5.0/32"])),
    ]);
    give(&mut a, &svc("ns", "plain").with_annotation(IPS, "10.0.0.1"));
    give(
        &mut a,
        &svc("ns", "shared")
            .with_annotation(IPS, "10.0.0.2")
            .with_annotation(SHARE, "k")
            .with_ports(&[Port::tcp(80)]),
    );
    give(
        &mut a,
        &svc("ns", "local")
            .with_annotation(IPS, "10.0.0.3")
            .with_annotation(SHARE, "k")
            .with_ports(&[Port::tcp(80)])
            .with_backend(BackendKey::Local([("app".into(), "x".into())].into())),
    );
    give(
        &mut a,
        &svc("ns", "tiny-holder").with_annotation(POOL, "tiny"),
    );
    a
}

fn err(request: ServiceRequest) -> AllocationError {
    let mut a = world();
    let before: Vec<_> = a.assignments().map(|(k, v)| (k.clone(), v)).collect();
    let e = a.assign(&request).unwrap_err();
    // The Services already served keep their addresses.
    for (k, v) in before {
        assert_eq!(a.assignment(&k), Some(v), "{k} lost its address");
    }
    e
}

fn web() -> ServiceRequest {
    svc("web", "app")
}

fn cases() -> Vec<(&'static str, AllocationError)> {
    let v4 = |r: ServiceRequest| r.with_families(FamilyPolicy::SingleStack, &[IpFamily::V4]);
    let require = |r: ServiceRequest| {
        r.with_families(
            FamilyPolicy::RequireDualStack,
            &[IpFamily::V4, IpFamily::V6],
        )
    };
    let sharer = |ports: &[Port]| {
        web()
            .with_annotation(IPS, "10.0.0.2")
            .with_annotation(SHARE, "k")
            .with_ports(ports)
    };
    vec![
        (
            "both spec.loadBalancerIP and the annotation",
            err(web()
                .with_annotation(IPS, "10.0.0.5")
                .with_load_balancer_ip("10.0.0.6")),
        ),
        ("empty address list", err(web().with_annotation(IPS, " "))),
        (
            "not an address",
            err(web().with_annotation(IPS, "10.0.0.x")),
        ),
        (
            "trailing comma",
            err(web().with_annotation(IPS, "10.0.0.5,")),
        ),
        (
            "CIDR instead of an address",
            err(web().with_load_balancer_ip("10.0.0.5/32")),
        ),
        (
            "two IPv4 addresses",
            err(web()
                .with_families(FamilyPolicy::PreferDualStack, &[])
                .with_annotation(IPS, "10.0.0.1,10.0.0.2")),
        ),
        (
            "three addresses",
            err(web()
                .with_families(FamilyPolicy::PreferDualStack, &[])
                .with_annotation(IPS, "fd00::1,10.0.0.5,fd00::2")),
        ),
        (
            "two addresses for a single-stack Service",
            err(web().with_annotation(IPS, "10.0.0.5,fd00::5")),
        ),
        (
            "one address for RequireDualStack",
            err(require(web()).with_annotation(IPS, "10.0.0.5")),
        ),
        (
            "IPv6 address for an IPv4 Service",
            err(v4(web()).with_annotation(IPS, "fd00::5")),
        ),
        (
            "deprecated annotation key is named",
            err(v4(web()).with_annotation("metallb.universe.tf/loadBalancerIPs", "fd00::5")),
        ),
        (
            "address in no pool",
            err(web().with_annotation(IPS, "192.168.7.7")),
        ),
        (
            "address outside the named pool",
            err(web()
                .with_annotation(IPS, "10.0.0.5")
                .with_annotation(POOL, "dmz")),
        ),
        (
            "address in no pool, pool named",
            err(web()
                .with_annotation(IPS, "192.168.7.7")
                .with_annotation(POOL, "dmz")),
        ),
        (
            "addresses in two pools",
            err(web()
                .with_families(FamilyPolicy::PreferDualStack, &[])
                .with_annotation(IPS, "10.0.1.1,fd01::1")),
        ),
        (
            "buggy address",
            err(web().with_annotation(IPS, "10.0.2.255")),
        ),
        (
            "address used by a Service without a key",
            err(web()
                .with_annotation(IPS, "10.0.0.1")
                .with_annotation(SHARE, "k")),
        ),
        (
            "this Service has no key",
            err(web().with_annotation(IPS, "10.0.0.2")),
        ),
        (
            "different keys",
            err(web()
                .with_annotation(IPS, "10.0.0.2")
                .with_annotation(SHARE, "j")),
        ),
        ("same port", err(sharer(&[Port::tcp(80)]))),
        (
            "Local against Cluster",
            err(sharer(&[Port::tcp(81)])
                .with_backend(BackendKey::Local([("app".into(), "x".into())].into()))),
        ),
        (
            "Local with another selector",
            err(web()
                .with_annotation(IPS, "10.0.0.3")
                .with_annotation(SHARE, "k")
                .with_ports(&[Port::tcp(81)])
                .with_backend(BackendKey::Local([("app".into(), "y".into())].into()))),
        ),
        ("empty pool name", err(web().with_annotation(POOL, ""))),
        ("unknown pool", err(web().with_annotation(POOL, "lann"))),
        (
            "pool for another namespace",
            err(svc("db", "app").with_annotation(POOL, "web-only")),
        ),
        (
            "pool for other Services",
            err(web()
                .with_label("tier", "core")
                .with_annotation(POOL, "edge-only")),
        ),
        (
            "address of a pool for another namespace",
            err(svc("db", "app").with_annotation(IPS, "10.0.3.1")),
        ),
        (
            "named pool lacks the family",
            err(web()
                .with_families(FamilyPolicy::SingleStack, &[IpFamily::V6])
                .with_annotation(POOL, "dmz")),
        ),
        (
            "named pool is not dual-stack",
            err(require(web()).with_annotation(POOL, "dmz")),
        ),
        (
            "named pool exhausted",
            err(web().with_annotation(POOL, "tiny")),
        ),
        ("no pool serves the namespace", {
            let mut a = Allocator::new();
            a.set_pools(vec![manual(pool("m", &["10.9.0.0/24"]))]);
            return_err(&mut a, svc("ns", "s"))
        }),
        ("no dual-stack pool", {
            let mut a = allocator(vec![pool("v4", &["10.9.0.0/24"])]);
            return_err(&mut a, require(svc("ns", "s")))
        }),
        ("every pool exhausted", {
            let mut a = allocator(vec![
                pool("a", &["10.9.0.0/32"]),
                pool("b", &["fd09::/128"]),
            ]);
            give(&mut a, &svc("ns", "first"));
            give(&mut a, &svc("ns", "second"));
            return_err(&mut a, v4(svc("ns", "third")))
        }),
        // Issue 19: a full pool whose address the Service means to share names the rule that
        // refused it, not just that nothing is free.
        ("shared address refused: same port", {
            let mut a = allocator(vec![pool("one", &["10.9.0.0/32"])]);
            give(&mut a, &sharing("first", "k", 80));
            return_err(&mut a, sharing("second", "k", 80))
        }),
        ("shared address refused: other key", {
            let mut a = allocator(vec![pool("one", &["10.9.0.0/32"])]);
            give(&mut a, &sharing("first", "k", 80));
            return_err(&mut a, sharing("second", "j", 81))
        }),
        ("shared address refused: other backend", {
            let mut a = allocator(vec![pool("one", &["10.9.0.0/32"])]);
            give(&mut a, &sharing("first", "k", 80));
            let local = BackendKey::Local([("app".into(), "x".into())].into());
            return_err(&mut a, sharing("second", "k", 81).with_backend(local))
        }),
        ("invalid pool named", {
            let mut a = Allocator::new();
            a.set_pools(vec![pool("bad", &["10.9.0.0/24", "10.9.0.9-10.9.0.1"])]);
            return_err(&mut a, svc("ns", "s").with_annotation(POOL, "bad"))
        }),
    ]
}

/// A Service in `ns` with sharing key `key` on TCP `port`.
fn sharing(name: &str, key: &str, port: u16) -> ServiceRequest {
    svc("ns", name)
        .with_annotation(SHARE, key)
        .with_ports(&[Port::tcp(port)])
}

/// Runs a case on its own allocator (the `err` helper's world does not fit it).
fn return_err(a: &mut Allocator, request: ServiceRequest) -> AllocationError {
    a.assign(&request).unwrap_err()
}

/// (case, reason, message) for every allocation case, in `cases()` order.
const EXPECTED: &[(&str, &str, &str)] = &[
    (
        "both spec.loadBalancerIP and the annotation",
        "ConflictingIPRequest",
        "service web/app: spec.loadBalancerIP \"10.0.0.6\" and annotation metallb.io/loadBalancerIPs \"10.0.0.5\" are both set; set only the annotation",
    ),
    (
        "empty address list",
        "InvalidIP",
        "service web/app: annotation metallb.io/loadBalancerIPs is empty; list one address per family (e.g. \"192.168.10.5,fd00::5\"), or remove the annotation",
    ),
    (
        "not an address",
        "InvalidIP",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.x\": \"10.0.0.x\" is not an IP address; write addresses like 192.168.10.5 or fd00::5, comma-separated",
    ),
    (
        "trailing comma",
        "InvalidIP",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.5,\": \"\" is not an IP address; write addresses like 192.168.10.5 or fd00::5, comma-separated",
    ),
    (
        "CIDR instead of an address",
        "InvalidIP",
        "service web/app: spec.loadBalancerIP \"10.0.0.5/32\": \"10.0.0.5/32\" is not an IP address; write addresses like 192.168.10.5 or fd00::5, comma-separated",
    ),
    (
        "two IPv4 addresses",
        "TooManyIPs",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.1,10.0.0.2\": two IPv4 addresses requested; at most one per family",
    ),
    (
        "three addresses",
        "TooManyIPs",
        "service web/app: annotation metallb.io/loadBalancerIPs \"fd00::1,10.0.0.5,fd00::2\": two IPv6 addresses requested; at most one per family",
    ),
    (
        "two addresses for a single-stack Service",
        "TooManyIPs",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.5,fd00::5\": a SingleStack Service takes one address; request one, or set spec.ipFamilyPolicy to PreferDualStack or RequireDualStack",
    ),
    (
        "one address for RequireDualStack",
        "DualStackIncomplete",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.5\": a RequireDualStack Service needs one IPv4 and one IPv6 address; add an IPv6 address",
    ),
    (
        "IPv6 address for an IPv4 Service",
        "WrongFamily",
        "service web/app: annotation metallb.io/loadBalancerIPs \"fd00::5\": fd00::5 is IPv6 but the Service is single-stack IPv4 (spec.ipFamilies); use an IPv4 address",
    ),
    (
        "deprecated annotation key is named",
        "WrongFamily",
        "service web/app: annotation metallb.universe.tf/loadBalancerIPs \"fd00::5\": fd00::5 is IPv6 but the Service is single-stack IPv4 (spec.ipFamilies); use an IPv4 address",
    ),
    (
        "address in no pool",
        "IPNotInPool",
        "service web/app: annotation metallb.io/loadBalancerIPs \"192.168.7.7\": 192.168.7.7 is in no IPAddressPool; use an address from a pool, or add a pool that holds it",
    ),
    (
        "address outside the named pool",
        "IPOutsidePool",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.5\": 10.0.0.5 is in IPAddressPool \"lan\", not in IPAddressPool \"dmz\" named by annotation metallb.io/address-pool; request an address from that pool, or drop one of the two annotations",
    ),
    (
        "address in no pool, pool named",
        "IPOutsidePool",
        "service web/app: annotation metallb.io/loadBalancerIPs \"192.168.7.7\": 192.168.7.7 is in no IPAddressPool, not in IPAddressPool \"dmz\" named by annotation metallb.io/address-pool; request an address from that pool, or drop one of the two annotations",
    ),
    (
        "addresses in two pools",
        "IPsInDifferentPools",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.1.1,fd01::1\": 10.0.1.1 is in IPAddressPool \"dmz\" but fd01::1 is in \"v6only\"; a Service's addresses come from one pool",
    ),
    (
        "buggy address",
        "BuggyIP",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.2.255\": 10.0.2.255 ends in .0 or .255, which IPAddressPool \"buggy\" skips (avoidBuggyIPs: true); use another address",
    ),
    (
        "address used by a Service without a key",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.1\": 10.0.0.1 is used by service ns/plain and they cannot share it: that Service has no metallb.io/allow-shared-ip key; sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "this Service has no key",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.2\": 10.0.0.2 is used by service ns/shared and they cannot share it: this Service has no metallb.io/allow-shared-ip key; sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "different keys",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.2\": 10.0.0.2 is used by service ns/shared and they cannot share it: their metallb.io/allow-shared-ip keys differ (\"j\" here, \"k\" there); sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "same port",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.2\": 10.0.0.2 is used by service ns/shared and they cannot share it: both use port TCP/80; sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "Local against Cluster",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.2\": 10.0.0.2 is used by service ns/shared and they cannot share it: their backends differ (externalTrafficPolicy Local with selector {app=x} here, externalTrafficPolicy Cluster there); sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "Local with another selector",
        "SharingConflict",
        "service web/app: annotation metallb.io/loadBalancerIPs \"10.0.0.3\": 10.0.0.3 is used by service ns/local and they cannot share it: their backends differ (externalTrafficPolicy Local with selector {app=y} here, externalTrafficPolicy Local with selector {app=x} there); sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "empty pool name",
        "UnknownPool",
        "service web/app: annotation metallb.io/address-pool is empty; name an IPAddressPool, or remove the annotation",
    ),
    (
        "unknown pool",
        "UnknownPool",
        "service web/app: annotation metallb.io/address-pool \"lann\": no IPAddressPool has that name; known pools: \"buggy\", \"dmz\", \"edge-only\", \"lan\", \"tiny\", \"v6only\", \"web-only\"",
    ),
    (
        "pool for another namespace",
        "PoolNotAllowed",
        "service db/app: IPAddressPool \"web-only\" does not serve this Service: namespace \"db\" is not in spec.serviceAllocation.namespaces [\"web\"]",
    ),
    (
        "pool for other Services",
        "PoolNotAllowed",
        "service web/app: IPAddressPool \"edge-only\" does not serve this Service: the Service's labels {\"tier\": \"core\"} match none of spec.serviceAllocation.serviceSelectors",
    ),
    (
        "address of a pool for another namespace",
        "PoolNotAllowed",
        "service db/app: IPAddressPool \"web-only\" does not serve this Service: namespace \"db\" is not in spec.serviceAllocation.namespaces [\"web\"]",
    ),
    (
        "named pool lacks the family",
        "WrongFamily",
        "service web/app: IPAddressPool \"dmz\" (annotation metallb.io/address-pool) has no IPv6 addresses, and the Service needs an IPv6 address (spec.ipFamilies)",
    ),
    (
        "named pool is not dual-stack",
        "WrongFamily",
        "service web/app: IPAddressPool \"dmz\" (annotation metallb.io/address-pool) has no IPv6 addresses, and the Service needs one IPv4 and one IPv6 address (RequireDualStack)",
    ),
    (
        "named pool exhausted",
        "NoAvailableIPs",
        "service web/app: no free IPv4 or IPv6 address in IPAddressPool(s) \"tiny\"; free some, or add addresses to a pool",
    ),
    (
        "no pool serves the namespace",
        "NoMatchingPool",
        "service ns/s: no IPAddressPool with autoAssign serves namespace \"ns\" and this Service's labels; add a pool, or name one with annotation metallb.io/address-pool",
    ),
    (
        "no dual-stack pool",
        "NoDualStackPool",
        "service ns/s: RequireDualStack needs a pool with both IPv4 and IPv6 addresses, and none that serves this Service has both; add the missing family to a pool, or use PreferDualStack",
    ),
    (
        "every pool exhausted",
        "NoAvailableIPs",
        "service ns/third: no free IPv4 address in IPAddressPool(s) \"a\", \"b\"; free some, or add addresses to a pool",
    ),
    (
        "shared address refused: same port",
        "SharingConflict",
        "service ns/second: no free IPv4 or IPv6 address in IPAddressPool(s) \"one\", and it cannot share 10.9.0.0 with service ns/first: both use port TCP/80; sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "shared address refused: other key",
        "SharingConflict",
        "service ns/second: no free IPv4 or IPv6 address in IPAddressPool(s) \"one\", and it cannot share 10.9.0.0 with service ns/first: their metallb.io/allow-shared-ip keys differ (\"j\" here, \"k\" there); sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "shared address refused: other backend",
        "SharingConflict",
        "service ns/second: no free IPv4 or IPv6 address in IPAddressPool(s) \"one\", and it cannot share 10.9.0.0 with service ns/first: their backends differ (externalTrafficPolicy Local with selector {app=x} here, externalTrafficPolicy Cluster there); sharing needs the same metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) and no common port",
    ),
    (
        "invalid pool named",
        "InvalidPool",
        "service ns/s: IPAddressPool \"bad\" is invalid and hands out no addresses: spec.addresses[1] \"10.9.0.9-10.9.0.1\": range start 10.9.0.9 is after its end 10.9.0.1; write the lower address first",
    ),
];

/// (reason, message) for every malformed Service object, in `object_errors()` order.
const EXPECTED_OBJECTS: &[(&str, &str)] = &[
    (
        "InvalidService",
        "service in namespace \"web\": metadata.name is missing; every Service needs a name",
    ),
    (
        "InvalidService",
        "service web/app: spec.ipFamilyPolicy \"DualStack\" is not a policy; allowed: SingleStack, PreferDualStack, RequireDualStack",
    ),
    (
        "InvalidService",
        "service web/app: spec.ipFamilies[1] \"IPv5\" is not an IP family; allowed: IPv4, IPv6",
    ),
    (
        "InvalidService",
        "service web/app: spec.externalTrafficPolicy \"local\" is not a policy; allowed: Cluster, Local",
    ),
    (
        "InvalidService",
        "service web/app: spec.ports[1].protocol \"HTTP\" is not a protocol; allowed: TCP, UDP, SCTP",
    ),
    (
        "InvalidService",
        "service web/app: spec.ports[0].port 70000 is not a port; allowed: 1 to 65535",
    ),
    (
        "InvalidStatus",
        "service web/app: status.loadBalancer.ingress[1].ip \"banana\" is not an IP address; the controller will replace it",
    ),
    (
        "TooManyIPs",
        "service web/app: status.loadBalancer.ingress \"10.0.0.9,10.0.0.10\": two IPv4 addresses requested; at most one per family",
    ),
];

#[test]
fn every_bad_request_is_explained() {
    let got: Vec<(&str, String, String)> = cases()
        .into_iter()
        .map(|(name, e)| (name, e.reason().to_owned(), e.to_string()))
        .collect();
    assert_eq!(got.len(), EXPECTED.len());
    for (got, want) in got.iter().zip(EXPECTED) {
        assert_eq!((got.0, got.1.as_str(), got.2.as_str()), *want);
    }
    // Each names its Service.
    for (_, e) in cases() {
        assert!(e.service().is_some());
        assert!(
            e.to_string()
                .starts_with(&format!("service {}: ", e.service().unwrap()))
        );
    }
}

fn k8s_service(name: Option<&str>, spec: ServiceSpec) -> Service {
    let mut s = Service::default();
    s.metadata.name = name.map(str::to_owned);
    s.metadata.namespace = Some("web".into());
    s.spec = Some(spec);
    s
}

fn from_k8s(spec: ServiceSpec) -> AllocationError {
    ServiceRequest::from_service(&k8s_service(Some("app"), spec), &BTreeMap::new()).unwrap_err()
}

/// Kubernetes Service objects the API server would not have accepted, and bad status.
fn object_errors() -> Vec<AllocationError> {
    let port = |protocol: &str, port: i32| ServicePort {
        protocol: Some(protocol.into()),
        port,
        ..Default::default()
    };
    let list = vec![
        ServiceRequest::from_service(&k8s_service(None, ServiceSpec::default()), &BTreeMap::new())
            .unwrap_err(),
        from_k8s(ServiceSpec {
            ip_family_policy: Some("DualStack".into()),
            ..Default::default()
        }),
        from_k8s(ServiceSpec {
            ip_families: Some(vec!["IPv4".into(), "IPv5".into()]),
            ..Default::default()
        }),
        from_k8s(ServiceSpec {
            external_traffic_policy: Some("local".into()),
            ..Default::default()
        }),
        from_k8s(ServiceSpec {
            ports: Some(vec![port("TCP", 80), port("HTTP", 80)]),
            ..Default::default()
        }),
        from_k8s(ServiceSpec {
            ports: Some(vec![port("UDP", 70000)]),
            ..Default::default()
        }),
    ];
    let mut list = list;
    let mut s = k8s_service(Some("app"), ServiceSpec::default());
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("banana".into()),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    });
    list.push(status_ips(&s, &key("web", "app")).unwrap_err());
    let mut a = world();
    let restored = a.restore(&svc("web", "app"), &ips(&["10.0.0.9", "10.0.0.10"]));
    list.push(restored.problem.unwrap());
    list
}

#[test]
fn every_bad_object_is_explained() {
    let got: Vec<(String, String)> = object_errors()
        .iter()
        .map(|e| (e.reason().to_owned(), e.to_string()))
        .collect();
    let want: Vec<(String, String)> = EXPECTED_OBJECTS
        .iter()
        .map(|(r, m)| (r.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn at_least_thirty_distinct_cases() {
    assert!(EXPECTED.len() + EXPECTED_OBJECTS.len() >= 30);
}
