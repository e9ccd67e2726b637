//! The Kubernetes backend against a Kubernetes-speaking API server, through kube-rs's real
//! client: it writes status through the subresource and the pool annotation, records events,
//! retries conflicts, writes nothing when nothing changed, survives restarts and 410 Gone, and
//! stays silent while another replica leads.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use axum::http::Method;
use ferrolb_controller::kubernetes::{Settings, run};
use ferrolb_controller::metrics::Metrics;
use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::shutdown;
use ferrolb_e2e::ApiServer;
use ferrolb_e2e::apiserver::{Fault, Request};
use serde_json::{Value, json};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);
/// How long silence must last to count as "wrote nothing".
const QUIET: Duration = Duration::from_millis(700);

fn settings() -> Settings {
    Settings {
        namespace: "metallb-system".into(),
        lb_class: None,
        instance: "ferrolb-controller-test".into(),
    }
}

fn seed(server: &ApiServer) {
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"team": "a"}}}))
        .unwrap();
    server
        .apply(json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "lan", "namespace": "metallb-system"},
            "spec": {"addresses": ["10.250.0.100-10.250.0.101"], "autoAssign": true, "avoidBuggyIPs": false},
        }))
        .unwrap();
    server.apply(service("app")).unwrap();
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "ipFamilies": ["IPv4"]},
    })
}

/// The Service's IP once both status and the pool annotation are written.
fn ip_of(server: &ApiServer, name: &str) -> Option<String> {
    let svc = server.get("v1", "Service", Some("web"), name)?;
    svc.pointer("/metadata/annotations/metallb.io~1ip-allocated-from-pool")?;
    svc.pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

struct Running {
    stop: shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
    leading: watch::Sender<bool>,
}

fn start(server: &ApiServer, leading: bool) -> Running {
    let (stop, shutdown) = shutdown::channel();
    let (lead_tx, lead_rx) = watch::channel(leading);
    let task = tokio::spawn(run(
        server.client().unwrap(),
        settings(),
        Metrics::new().unwrap(),
        Readiness::default(),
        lead_rx,
        shutdown,
    ));
    Running {
        stop,
        task,
        leading: lead_tx,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn writes(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_write() && !r.path.contains("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn allocates_through_the_api_and_writes_only_what_changed() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let controller = start(&server, true);

    assert!(
        server
            .wait_for_requests(WAIT, |_| ip_of(&server, "app").is_some())
            .await
    );
    assert_eq!(ip_of(&server, "app").as_deref(), Some("10.250.0.100"));
    let app = server.get("v1", "Service", Some("web"), "app").unwrap();
    assert_eq!(
        app["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"],
        "lan"
    );
    assert!(
        server
            .wait_for_requests(WAIT, |_| !server
                .list("events.k8s.io/v1", "Event")
                .is_empty())
            .await
    );
    let event = &server.list("events.k8s.io/v1", "Event")[0];
    assert_eq!(
        (
            event["reason"].as_str(),
            event["regarding"]["name"].as_str()
        ),
        (Some("IPAllocated"), Some("app"))
    );
    let pool = server
        .get(
            "metallb.io/v1beta1",
            "IPAddressPool",
            Some("metallb-system"),
            "lan",
        )
        .unwrap();
    assert!(
        server
            .wait_for_requests(WAIT, |_| {
                server
                    .get(
                        "metallb.io/v1beta1",
                        "IPAddressPool",
                        Some("metallb-system"),
                        "lan",
                    )
                    .is_some_and(|p| p.pointer("/status/assignedIPv4") == Some(&json!(1)))
            })
            .await,
        "pool status: {pool}"
    );

    // An edit that changes nothing the controller cares about: no write.
    server.clear_requests();
    let mut labelled = server.get("v1", "Service", Some("web"), "app").unwrap();
    labelled["metadata"]["labels"] = json!({"tier": "edge"});
    server.apply(labelled).unwrap();
    assert!(
        !server
            .wait_for_requests(QUIET, |r| !writes(r).is_empty())
            .await,
        "{:#?}",
        server.requests(),
    );
    // A conflict on the status write is retried.
    server.inject(Fault {
        method: Method::PATCH,
        path_contains: "/services/second/status".into(),
        status: 409,
        times: 2,
    });
    server.apply(service("second")).unwrap();
    assert!(
        server
            .wait_for_requests(WAIT, |_| ip_of(&server, "second").is_some())
            .await
    );
    assert_eq!(ip_of(&server, "second").as_deref(), Some("10.250.0.101"));
    let conflicts = server.requests().iter().filter(|r| r.status == 409).count();
    assert_eq!(conflicts, 2);

    // A restart rebuilds from status and writes nothing.
    controller.stop().await;
    server.clear_requests();
    let controller = start(&server, true);
    assert!(
        server
            .wait_for_requests(WAIT, |r| r
                .iter()
                .filter(|r| r.query.contains("watch=true"))
                .count()
                >= 3)
            .await
    );
    assert!(
        !server
            .wait_for_requests(QUIET, |r| !writes(r).is_empty())
            .await,
        "{:?}",
        writes(&server.requests())
    );

    // 410 Gone while a Service was deleted unseen: the relist notices, and the pending one gets
    // the freed address.
    server.apply(service("third")).unwrap();
    let failed_for_third = |_: &[Request]| {
        server
            .list("events.k8s.io/v1", "Event")
            .iter()
            .any(|e| e["reason"] == "AllocationFailed" && e["regarding"]["name"] == "third")
    };
    assert!(
        server.wait_for_requests(WAIT, failed_for_third).await,
        "the pool is full: third waits"
    );
    server
        .delete_unseen("v1", "Service", Some("web"), "app")
        .unwrap();
    server.compact();
    server.disconnect_watches();
    assert!(
        server
            .wait_for_requests(WAIT, |_| ip_of(&server, "third").as_deref()
                == Some("10.250.0.100"))
            .await
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_standby_replica_writes_nothing_until_it_leads() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let standby = start(&server, false);
    assert!(
        !server
            .wait_for_requests(QUIET, |r| !writes(r).is_empty())
            .await
    );
    assert_eq!(ip_of(&server, "app"), None);
    standby.leading.send_replace(true);
    assert!(
        server
            .wait_for_requests(WAIT, |_| ip_of(&server, "app").is_some())
            .await
    );
    standby.stop().await;
}

/// Issue 19: a hand edit of a pool's status (the subresource) is reverted, as MetalLB does.
#[tokio::test]
async fn a_hand_edit_of_pool_status_is_reverted() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let controller = start(&server, true);
    let available = || {
        server
            .get(
                "metallb.io/v1beta1",
                "IPAddressPool",
                Some("metallb-system"),
                "lan",
            )
            .and_then(|p| p.pointer("/status/availableIPv4").and_then(Value::as_i64))
    };
    assert!(
        server
            .wait_for_requests(WAIT, |_| available() == Some(1))
            .await
    );
    let mut edited = server
        .get(
            "metallb.io/v1beta1",
            "IPAddressPool",
            Some("metallb-system"),
            "lan",
        )
        .unwrap();
    edited["status"]["availableIPv4"] = json!(99);
    server.apply(edited).unwrap();
    assert_eq!(available(), Some(99));
    assert!(
        server
            .wait_for_requests(WAIT, |_| available() == Some(1))
            .await,
        "the edit is reverted"
    );
    controller.stop().await;
}
