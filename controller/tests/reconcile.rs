//! The controller's decisions over whole objects: what it writes, what it announces as events,
//! and above all what it does NOT write (echoes of its own writes, restarts).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use ferrolb_controller::ipam::{Assignment, ServiceKey};
use ferrolb_controller::reconcile::{Action, Reconciler, Severity};
use ferrolb_proto::api::IPAddressPool;
use k8s_openapi::api::core::v1::{Namespace, Service};
use serde_json::{Value, json};

fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"addresses": addresses},
    }))
    .unwrap()
}

fn service(name: &str, extra: Value) -> Service {
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "ipFamilies": ["IPv4"]},
    });
    json_patch::merge(&mut svc, &extra);
    serde_json::from_value(svc).unwrap()
}

/// The Service as it looks after the backend carried out `WriteService`.
fn written(svc: &Service, ips: &[&str], pool: &str) -> Service {
    let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let mut value = serde_json::to_value(svc).unwrap();
    json_patch::merge(
        &mut value,
        &json!({
            "metadata": {"annotations": {"metallb.io/ip-allocated-from-pool": pool}},
            "status": {"loadBalancer": {"ingress": ingress}},
        }),
    );
    serde_json::from_value(value).unwrap()
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("web", name)
}

fn writes(actions: &[Action]) -> Vec<(String, Option<Vec<String>>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteService {
                service,
                assignment,
            } => Some((
                service.to_string(),
                assignment
                    .as_ref()
                    .map(|a: &Assignment| a.ips.iter().map(ToString::to_string).collect()),
            )),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<(Severity, &'static str, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                severity,
                reason,
                message,
                ..
            } => Some((*severity, *reason, message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn allocates_writes_once_and_ignores_its_own_echo() {
    let mut r = Reconciler::new(None);
    let actions = r.start(
        vec![pool("lan", &["10.250.0.100-10.250.0.101"])],
        vec![],
        vec![],
    );
    assert!(writes(&actions).is_empty());

    let app = service("app", json!({}));
    let actions = r.service_changed(&app);
    assert_eq!(
        writes(&actions),
        [("web/app".to_owned(), Some(vec!["10.250.0.100".to_owned()]))]
    );
    assert_eq!(
        events(&actions),
        [(
            Severity::Normal,
            "IPAllocated",
            "Assigned IP [\"10.250.0.100\"] from pool lan".to_owned()
        )]
    );

    // The watch delivers our own write back: nothing more to do.
    let echo = r.service_changed(&written(&app, &["10.250.0.100"], "lan"));
    assert!(
        writes(&echo).is_empty() && events(&echo).is_empty(),
        "{echo:?}"
    );
}

#[test]
fn a_restart_keeps_every_valid_assignment_and_writes_nothing() {
    let pools = vec![pool("lan", &["10.250.0.100/30"])];
    // Assigned in reverse order of names, so a fresh allocation would differ.
    let a = written(&service("a", json!({})), &["10.250.0.102"], "lan");
    let b = written(&service("b", json!({})), &["10.250.0.100"], "lan");
    for _ in 0..5 {
        let mut r = Reconciler::new(None);
        let actions = r.start(pools.clone(), vec![], vec![a.clone(), b.clone()]);
        assert!(writes(&actions).is_empty(), "{actions:?}");
        assert_eq!(
            r.allocator().assignment(&key("a")).unwrap().ips,
            ["10.250.0.102".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}

#[test]
fn deleting_a_service_hands_its_ip_to_a_waiting_one() {
    let mut r = Reconciler::new(None);
    r.start(vec![pool("one", &["10.250.0.100/32"])], vec![], vec![]);
    let first = service("first", json!({}));
    r.service_changed(&first);
    let first = written(&first, &["10.250.0.100"], "one");
    r.service_changed(&first);

    let second = r.service_changed(&service("second", json!({})));
    assert!(writes(&second).is_empty());
    let (severity, reason, message) = events(&second).remove(0);
    assert_eq!((severity, reason), (Severity::Warning, "AllocationFailed"));
    assert!(
        message.starts_with("Failed to allocate IP for \"web/second\""),
        "{message}"
    );

    let handed_on = r.service_deleted(&key("first"));
    assert_eq!(
        writes(&handed_on),
        [(
            "web/second".to_owned(),
            Some(vec!["10.250.0.100".to_owned()])
        )]
    );
}

#[test]
fn a_service_that_stops_being_a_load_balancer_is_cleared_and_frees_its_ip() {
    let mut r = Reconciler::new(None);
    r.start(vec![pool("one", &["10.250.0.100/32"])], vec![], vec![]);
    let app = service("app", json!({}));
    r.service_changed(&app);
    let app = written(&app, &["10.250.0.100"], "one");
    r.service_changed(&app);

    let cluster_ip = written(
        &service("app", json!({"spec": {"type": "ClusterIP"}})),
        &["10.250.0.100"],
        "one",
    );
    let actions = r.service_changed(&cluster_ip);
    assert_eq!(writes(&actions), [("web/app".to_owned(), None)]);
    assert!(r.allocator().assignment(&key("app")).is_none());

    // Another load balancer class: not ours either.
    let mut classed = Reconciler::new(Some("ferrolb".into()));
    classed.start(vec![pool("one", &["10.250.0.100/32"])], vec![], vec![]);
    assert!(writes(&classed.service_changed(&service("x", json!({})))).is_empty());
    let ours = service("y", json!({"spec": {"loadBalancerClass": "ferrolb"}}));
    assert_eq!(writes(&classed.service_changed(&ours)).len(), 1);
}

#[test]
fn bad_requests_are_reported_and_keep_what_the_service_holds() {
    let mut r = Reconciler::new(None);
    r.start(vec![pool("lan", &["10.250.0.100/30"])], vec![], vec![]);
    let app = service("app", json!({}));
    r.service_changed(&app);
    let app = written(&app, &["10.250.0.100"], "lan");
    r.service_changed(&app);

    let mut value = serde_json::to_value(&app).unwrap();
    json_patch::merge(
        &mut value,
        &json!({"metadata": {"annotations": {"metallb.io/loadBalancerIPs": "10.250.0.101,10.250.0.102"}}}),
    );
    let bad: Service = serde_json::from_value(value).unwrap();
    let actions = r.service_changed(&bad);
    assert!(
        writes(&actions).is_empty(),
        "an unreadable request changes nothing: {actions:?}"
    );
    let (severity, reason, message) = events(&actions).remove(0);
    assert_eq!((severity, reason), (Severity::Warning, "AllocationFailed"));
    assert!(message.contains("metallb.io/loadBalancerIPs"), "{message}");
}

#[test]
fn deprecated_annotations_warn_once() {
    let mut r = Reconciler::new(None);
    r.start(
        vec![
            pool("lan", &["10.250.0.100/30"]),
            pool("dmz", &["10.250.1.0/30"]),
        ],
        vec![],
        vec![],
    );
    let app = service(
        "app",
        json!({"metadata": {"annotations": {"metallb.universe.tf/address-pool": "dmz"}}}),
    );
    let actions = r.service_changed(&app);
    assert_eq!(
        writes(&actions),
        [("web/app".to_owned(), Some(vec!["10.250.1.0".to_owned()]))]
    );
    let warnings: Vec<_> = events(&actions)
        .into_iter()
        .filter(|e| e.1 == "deprecatedAnnotation")
        .collect();
    assert_eq!(
        warnings,
        [(
            Severity::Warning,
            "deprecatedAnnotation",
            "annotation metallb.universe.tf/address-pool is deprecated; use metallb.io/address-pool".to_owned()
        )]
    );
    let echo = r.service_changed(&written(&app, &["10.250.1.0"], "dmz"));
    assert!(events(&echo).is_empty(), "{echo:?}");
}

#[test]
fn pool_deleted_clears_and_reallocates_and_sync_follows_a_directory() {
    let mut r = Reconciler::new(None);
    let lan = pool("lan", &["10.250.0.100/32"]);
    let dmz = pool("dmz", &["10.250.1.0/32"]);
    let app = service(
        "app",
        json!({"metadata": {"annotations": {"metallb.io/address-pool": "lan"}}}),
    );
    let other = service("other", json!({}));
    let actions = r.sync(
        vec![lan.clone(), dmz.clone()],
        vec![],
        vec![app.clone(), other.clone()],
    );
    assert_eq!(writes(&actions).len(), 2);
    let app = written(&app, &["10.250.0.100"], "lan");
    let other = written(&other, &["10.250.1.0"], "dmz");
    let echo = r.sync(
        vec![lan.clone(), dmz.clone()],
        vec![],
        vec![app.clone(), other.clone()],
    );
    assert!(writes(&echo).is_empty(), "{echo:?}");

    // lan goes away: app's IP left every pool and it asked for lan: cleared, waits.
    let actions = r.sync(vec![dmz.clone()], vec![], vec![app.clone(), other.clone()]);
    assert_eq!(writes(&actions), [("web/app".to_owned(), None)]);
    assert!(
        events(&actions).iter().any(|e| e.1 == "ClearAssignment"),
        "{actions:?}"
    );
    assert!(
        events(&actions).iter().any(|e| e.1 == "AllocationFailed"),
        "{actions:?}"
    );

    // A namespace label change is an input too (nothing selects on it here: no writes).
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "web", "labels": {"team": "a"}}}))
            .unwrap();
    assert!(writes(&r.namespace_changed(ns)).is_empty());
}

#[test]
fn pool_status_is_written_when_it_differs() {
    let mut r = Reconciler::new(None);
    let actions = r.start(
        vec![
            pool("lan", &["10.250.0.100/30"]),
            pool("z-bad", &["10.250.0.102/32"]),
        ],
        vec![],
        vec![],
    );
    let statuses: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::WritePool { pool, status } => Some((pool.clone(), status.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len(), 2);
    let bad = &statuses.iter().find(|(p, _)| p == "z-bad").unwrap().1;
    assert_eq!(bad.condition_status(), "False");
    assert!(
        bad.condition_message().contains("overlaps"),
        "{}",
        bad.condition_message()
    );
    let lan = &statuses.iter().find(|(p, _)| p == "lan").unwrap().1;
    assert_eq!(
        (lan.counters.available_ipv4, lan.condition_status()),
        (4, "True")
    );
}

/// Issue 15, bug 1: a controller of one class never writes a Service of another, even one
/// carrying `ip-allocated-from-pool` (MetalLB and a default FerroLB write it too), and hands out
/// none of the addresses such a Service holds.
#[test]
fn another_class_is_never_written_and_its_addresses_are_taken() {
    let theirs = written(&service("theirs", json!({})), &["10.250.0.100"], "lan");
    let pools = vec![pool("lan", &["10.250.0.100-10.250.0.101"])];
    let mut foo = Reconciler::new(Some("example.com/foo".into()));
    let started = foo.start(pools.clone(), vec![], vec![theirs.clone()]);
    assert!(writes(&started).is_empty(), "{started:?}");
    assert!(writes(&foo.service_changed(&theirs)).is_empty());
    let mine = service(
        "mine",
        json!({"spec": {"loadBalancerClass": "example.com/foo"}}),
    );
    assert_eq!(
        writes(&foo.service_changed(&mine)),
        [("web/mine".to_owned(), Some(vec!["10.250.0.101".to_owned()]))],
        "the address the other class holds is not handed out"
    );
    // Both count the pool alike, so their pool-status writes agree.
    let mut default = Reconciler::new(None);
    let mine_written = written(&mine, &["10.250.0.101"], "lan");
    default.start(
        pools.clone(),
        vec![],
        vec![theirs.clone(), mine_written.clone()],
    );
    let counts = |r: &Reconciler| {
        r.allocator()
            .pool_stats()
            .iter()
            .map(|s| s.status().assigned_ipv4)
            .collect::<Vec<_>>()
    };
    foo.service_changed(&mine_written);
    assert_eq!(counts(&foo), counts(&default));
    assert_eq!(counts(&foo), [2]);
    // Gone: its address is free for us again.
    foo.service_deleted(&key("theirs"));
    let other = service(
        "other",
        json!({"spec": {"loadBalancerClass": "example.com/foo"}}),
    );
    assert_eq!(
        writes(&foo.service_changed(&other)),
        [(
            "web/other".to_owned(),
            Some(vec!["10.250.0.100".to_owned()])
        )]
    );
}
