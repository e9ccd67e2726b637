//! The speaker's Kubernetes backend against a Kubernetes-speaking API server, through kube-rs's
//! real client: the cluster view follows the API, and announcements become ServiceL2Status
//! objects (status through the subresource) and events.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use ferrolb_daemon::shutdown;
use ferrolb_e2e::ApiServer;
use ferrolb_speaker::Start;
use ferrolb_speaker::kubernetes::{Pod, follow, record, status_name};
use ferrolb_speaker::membership::{LiveSet, Member, MemberState};
use ferrolb_speaker::node::{NodeSettings, Plan, Report, plan};
use ferrolb_speaker::quorum::Quorum;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn seed(server: &ApiServer) {
    for (name, ip) in [("n1", "10.250.0.1"), ("n2", "10.250.0.2")] {
        server
            .apply(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
            )
            .unwrap();
    }
    server
        .apply(
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "lan", "namespace": "metallb-system"},
            "spec": {"addresses": ["10.250.0.100/30"]}}),
        )
        .unwrap();
    server
        .apply(
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "all", "namespace": "metallb-system"}, "spec": {}}),
        )
        .unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.100"}]}}}))
        .unwrap();
    server
        .apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "n2", "conditions": {"ready": true, "serving": true}}]}))
        .unwrap();
}

fn speaker_pod(uid: &str) -> Pod {
    Pod {
        name: "ferrolb-speaker-x2".into(),
        uid: uid.into(),
    }
}

fn live(names: &[&str]) -> LiveSet {
    LiveSet {
        members: names
            .iter()
            .map(|n| {
                let member = Member {
                    name: (*n).into(),
                    address: "127.0.0.1:7946".parse().unwrap(),
                    incarnation: 0,
                    state: MemberState::Alive,
                };
                ((*n).to_owned(), member)
            })
            .collect(),
        departed: Default::default(),
    }
}

fn settings(node: &str) -> NodeSettings {
    NodeSettings {
        node_name: node.into(),
        lb_class: None,
        endpoints_required: true,
        carry_connections: false,
    }
}

#[tokio::test]
async fn the_cluster_view_follows_the_api_and_elects_the_endpoint_node() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let (_stop, shutdown) = shutdown::channel();
    let (first, mut feed) = tokio::time::timeout(
        WAIT,
        follow(server.client().unwrap(), "metallb-system", None, shutdown),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            first.services.len(),
            first.nodes.len(),
            first.endpoint_slices.len()
        ),
        (1, 2, 1)
    );

    // externalTrafficPolicy Local: only n2 hosts an endpoint, so n2 announces.
    let both = live(&["n1", "n2"]);
    let none = Plan::default();
    let n1 = plan(&first, &both, &settings("n1"), Quorum::Majority, &none);
    let n2 = plan(&first, &both, &settings("n2"), Quorum::Majority, &none);
    assert!(n1.share.is_empty());
    assert_eq!(n2.share.keys().collect::<Vec<_>>(), ["demo/web"]);
    assert!(
        n2.owned.values().all(|i| i.start == Start::Probe),
        "never announced before: probe first"
    );

    // The endpoint goes away: nobody announces.
    server
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("demo"),
            "web-1",
        )
        .unwrap();
    tokio::time::timeout(WAIT, feed.wait_for(|c| c.endpoint_slices.is_empty()))
        .await
        .unwrap()
        .unwrap();
    let cluster = feed.borrow().clone();
    let n2 = plan(&cluster, &both, &settings("n2"), Quorum::Majority, &n2);
    assert!(n2.share.is_empty());
}

#[tokio::test]
async fn announcements_become_service_l2_statuses_and_events() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(record(
        server.client().unwrap(),
        "metallb-system".into(),
        "n2".into(),
        Some(speaker_pod("uid-2")),
        reports,
    ));

    tx.send(Report::Announcing {
        service: "demo/web".into(),
        ips: vec!["10.250.0.100".parse().unwrap()],
        interfaces: vec!["eth0".into()],
    })
    .unwrap();
    let name = status_name("n2", "demo", "web");
    let recorded = || {
        server.get(
            "metallb.io/v1beta1",
            "ServiceL2Status",
            Some("metallb-system"),
            &name,
        )
    };
    assert!(
        server
            .wait_for_requests(WAIT, |_| recorded()
                .is_some_and(|s| s.pointer("/status/node").is_some()))
            .await
    );
    let status = recorded().unwrap();
    assert_eq!(status["status"]["node"], "n2");
    assert_eq!(status["status"]["serviceName"], "web");
    assert_eq!(status["status"]["interfaces"][0]["name"], "eth0");
    assert_eq!(status["metadata"]["labels"]["metallb.io/node"], "n2");
    assert_eq!(
        status["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "ferrolb-speaker-x2", "uid": "uid-2"}]),
        "owned by the speaker's pod: removed with it"
    );
    let assigned = || {
        server
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .find(|e| e["reason"] == "nodeAssigned")
    };
    assert!(
        server
            .wait_for_requests(WAIT, |_| assigned().is_some())
            .await
    );
    assert_eq!(
        assigned().unwrap()["note"],
        "announcing from node \"n2\" with protocol \"layer2\""
    );

    // A takeover view: another speaker's feed now sees the Service as announced (no probe).
    let (_stop, shutdown) = shutdown::channel();
    let (first, _) = follow(server.client().unwrap(), "metallb-system", None, shutdown)
        .await
        .unwrap();
    assert!(first.announced.contains("demo/web"));

    tx.send(Report::Conflict {
        service: "demo/web".into(),
        ip: "10.250.0.100".parse().unwrap(),
        detail: "aa:bb:cc:dd:ee:ff on eth0 claims it".into(),
        announced: true,
    })
    .unwrap();
    tx.send(Report::Withdrawn {
        service: "demo/web".into(),
    })
    .unwrap();
    assert!(
        server
            .wait_for_requests(WAIT, |_| recorded().is_none())
            .await,
        "withdrawn: the record goes away"
    );
    assert!(
        server
            .list("events.k8s.io/v1", "Event")
            .iter()
            .any(|e| e["reason"] == "IPConflict" && e["type"] == "Warning")
    );
    drop(tx);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

/// Re-announces demo/web on n2 as `pod` over a record the node's previous pod left, and
/// returns the record's owners afterwards.
async fn owners_after_reannouncing_as(pod: Option<Pod>) -> serde_json::Value {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let name = status_name("n2", "demo", "web");
    // The record as the node's previous speaker pod wrote it.
    server
        .apply(json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
            "metadata": {"name": name, "namespace": "metallb-system",
                "labels": {"metallb.io/node": "n2"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "ferrolb-speaker-old", "uid": "uid-old"}]},
            "spec": {}, "status": {"node": "n2", "serviceName": "web", "serviceNamespace": "demo"}}))
        .unwrap();
    let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(record(
        server.client().unwrap(),
        "metallb-system".into(),
        "n2".into(),
        pod,
        reports,
    ));
    tx.send(Report::Announcing {
        service: "demo/web".into(),
        ips: vec!["10.250.0.100".parse().unwrap()],
        interfaces: vec!["eth1".into()],
    })
    .unwrap();
    let recorded = || {
        server
            .get(
                "metallb.io/v1beta1",
                "ServiceL2Status",
                Some("metallb-system"),
                &name,
            )
            .unwrap()
    };
    assert!(
        server
            .wait_for_requests(WAIT, |_| recorded()
                .pointer("/status/interfaces/0/name")
                .is_some_and(|i| i == "eth1"))
            .await
    );
    drop(tx);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    recorded()["metadata"]["ownerReferences"].clone()
}

#[tokio::test]
async fn a_record_left_by_the_previous_pod_of_the_node_changes_owner() {
    assert_eq!(
        owners_after_reannouncing_as(Some(speaker_pod("uid-new"))).await,
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "ferrolb-speaker-x2", "uid": "uid-new"}]),
        "the old pod's deletion must not take the record with it"
    );
}

#[tokio::test]
async fn a_speaker_without_a_pod_leaves_its_records_without_an_owner() {
    assert_eq!(
        owners_after_reannouncing_as(None).await,
        serde_json::Value::Null,
        "no stale owner whose deletion would take the record"
    );
}

#[tokio::test]
async fn the_quorum_counts_the_nodes_of_the_speaker_pods_when_their_selector_is_given() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    // A third Node runs no speaker (the DaemonSet's nodeSelector leaves it out).
    server
        .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n3"}}))
        .unwrap();
    let pod = |name: &str, node: &str, app: &str, phase: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "metallb-system",
                "labels": {"app.kubernetes.io/component": app}},
            "spec": {"nodeName": node, "containers": [{"name": "speaker", "image": "x"}]},
            "status": {"phase": phase}})
    };
    for object in [
        pod("speaker-a", "n1", "speaker", "Running"),
        pod("speaker-b", "n2", "speaker", "Pending"),
        pod("speaker-old", "n3", "speaker", "Failed"),
        pod("controller-x", "n3", "controller", "Running"),
    ] {
        server.apply(object).unwrap();
    }
    let (_stop, shutdown) = shutdown::channel();
    let (first, _) = follow(
        server.client().unwrap(),
        "metallb-system",
        Some("app.kubernetes.io/component=speaker"),
        shutdown,
    )
    .await
    .unwrap();
    assert_eq!(
        first.listed_speakers(),
        ["n1".to_owned(), "n2".to_owned()].into(),
        "scheduled speaker pods count, ended ones and other pods do not"
    );
    let (_stop, shutdown) = shutdown::channel();
    let (every_node, _) = follow(server.client().unwrap(), "metallb-system", None, shutdown)
        .await
        .unwrap();
    assert_eq!(
        every_node.listed_speakers().len(),
        3,
        "without a selector, every Node"
    );
}
