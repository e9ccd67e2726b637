//! `ferrolb-controller status` against a Kubernetes-speaking API server, through kube-rs's real
//! client: Services with their IPs, pool, announcing node and warnings, and pool usage.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use ferrolb_controller::status::{View, from_cluster};
use ferrolb_e2e::ApiServer;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

#[tokio::test]
async fn the_view_of_a_cluster() {
    let server = ApiServer::start().await.unwrap();
    let apply = |object| {
        server.apply(object).unwrap();
    };
    apply(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "lan", "namespace": "metallb-system"},
        "spec": {"addresses": ["10.250.0.100/32"]},
        "status": {"assignedIPv4": 1, "assignedIPv6": 0, "availableIPv4": 0, "availableIPv6": 0},
    }));
    for name in ["web", "late"] {
        apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        }));
    }
    apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo",
                     "annotations": {"metallb.io/ip-allocated-from-pool": "lan"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.100"}]}},
    }));
    apply(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
        "metadata": {"name": "l2-web-n2", "namespace": "metallb-system",
                     "creationTimestamp": "2025-01-01T10:00:00Z"},
        "spec": {},
        "status": {"node": "n2", "serviceName": "web", "serviceNamespace": "demo"},
    }));
    apply(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "demo"},
        "type": "Warning", "reason": "IPConflict",
        "message": "10.250.0.100 is also answered by 02:00:00:00:00:99",
        "involvedObject": {"kind": "Service", "namespace": "demo", "name": "web"},
        "lastTimestamp": "2025-01-01T10:00:05Z",
    }));

    let inputs = from_cluster(
        server.client().unwrap(),
        "metallb-system",
        "ferrolb-controller",
        None,
    )
    .await
    .unwrap();
    let text = View::build(inputs).render("2025-01-01T10:01:00Z".parse::<Timestamp>().unwrap());
    assert!(
        text.contains("demo/web   10.250.0.100  lan   n2"),
        "IP, pool and node:\n{text}"
    );
    assert!(
        text.contains("! demo/web: IPConflict: 10.250.0.100 is also answered"),
        "{text}"
    );
    assert!(text.contains("demo/late  <pending>"), "{text}");
    assert!(text.contains("! demo/late: AllocationFailed"), "{text}");
    assert!(text.contains("IPv4 1 used, 0 free"), "{text}");
    assert!(
        text.starts_with("CONTROLLER NOT RUNNING: no Lease metallb-system/ferrolb-controller"),
        "{text}"
    );

    // The leader Lease says who leads, and whether its term still runs.
    apply(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "ferrolb-controller", "namespace": "metallb-system"},
        "spec": {"holderIdentity": "ferrolb-controller-abc", "leaseDurationSeconds": 15,
                 "renewTime": "2025-01-01T10:00:50.000000Z"},
    }));
    let inputs = from_cluster(
        server.client().unwrap(),
        "metallb-system",
        "ferrolb-controller",
        None,
    )
    .await
    .unwrap();
    let view = View::build(inputs);
    let at = |now: &str| view.render(now.parse::<Timestamp>().unwrap());
    let leading = at("2025-01-01T10:01:00Z");
    assert!(
        leading.starts_with(
            "CONTROLLER running: ferrolb-controller-abc (Lease metallb-system/ferrolb-controller), heartbeat 10:00:50Z (10s ago)"
        ),
        "{leading}"
    );
    let expired = at("2025-01-01T10:02:00Z");
    assert!(
        expired.starts_with("CONTROLLER NOT RUNNING: no heartbeat from ferrolb-controller-abc"),
        "{expired}"
    );
}
