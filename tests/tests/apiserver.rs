//! The fake API server speaks enough Kubernetes for kube-rs's real client and watcher: these tests
//! drive it through them, as the controller and speaker adapters will.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use ferrolb_e2e::ApiServer;
use ferrolb_e2e::apiserver::Fault;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, events, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "web", "labels": {"app": name}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))
    .unwrap()
}

/// The next object name the watcher yields, collecting the errors it reports on the way (the
/// watcher reports a 410 Gone as an error item, then lists again by itself).
async fn next_named(
    stream: &mut (impl futures::Stream<Item = Result<Service, watcher::Error>> + Unpin),
    errors: &mut Vec<String>,
) -> String {
    loop {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("watch event in time");
        match item.expect("stream open") {
            Ok(service) => return service.name_any(),
            Err(err) => errors.push(err.to_string()),
        }
    }
}

#[tokio::test]
async fn create_get_list_and_conflicts() {
    let server = ApiServer::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(server.client().unwrap(), "web");

    let created = api
        .create(&PostParams::default(), &service("a"))
        .await
        .unwrap();
    assert_eq!(created.resource_version().as_deref(), Some("1"));
    api.create(&PostParams::default(), &service("b"))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &service("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );

    let listed = api.list(&Default::default()).await.unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let only_b = api
        .list(&kube::api::ListParams::default().labels("app=b"))
        .await
        .unwrap();
    assert_eq!(only_b.items.len(), 1);

    // The status subresource: a status write with a stale resourceVersion conflicts.
    let mut with_ip = created.clone();
    with_ip.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.250.0.100"}]}}))
            .unwrap();
    let updated = api
        .replace_status("a", &PostParams::default(), &with_ip)
        .await
        .unwrap();
    assert_eq!(
        updated
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("10.250.0.100")
    );
    let stale = api
        .replace_status("a", &PostParams::default(), &with_ip)
        .await;
    assert!(
        matches!(&stale, Err(kube::Error::Api(s)) if s.code == 409),
        "{stale:?}"
    );

    // A merge patch of status leaves spec alone; a main-resource write leaves status alone.
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.101"}]}}});
    api.patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let spec_patch = json!({"spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {}}});
    let after = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await
        .unwrap();
    assert_eq!(after.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        after
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("10.250.0.101")
    );

    let missing = api.get("nope").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing:?}"
    );
}

#[tokio::test]
async fn watcher_follows_changes_and_relists_after_410_gone() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api: Api<Service> = Api::namespaced(client, "web");
    api.create(&PostParams::default(), &service("a"))
        .await
        .unwrap();

    let mut stream = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut errors = Vec::new();
    assert_eq!(next_named(&mut stream, &mut errors).await, "a");

    api.create(&PostParams::default(), &service("b"))
        .await
        .unwrap();
    assert_eq!(next_named(&mut stream, &mut errors).await, "b");

    // Out-of-band changes while the history is compacted and the watch is cut: the watcher's
    // resumed watch gets 410 Gone, so it must list again to see "c".
    server
        .apply_unseen(serde_json::to_value(service("c")).unwrap())
        .unwrap();
    server.compact();
    server.disconnect_watches();
    let mut seen = Vec::new();
    while !seen.contains(&"c".to_owned()) {
        seen.push(next_named(&mut stream, &mut errors).await);
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("too old resource version"), "{errors:?}");
    let requests = server.requests();
    let lists = requests
        .iter()
        .filter(|r| !r.query.contains("watch=") && r.method == "GET")
        .count();
    assert!(
        lists >= 2,
        "the watcher listed again after 410 Gone: {requests:#?}"
    );
}

#[tokio::test]
async fn events_and_injected_faults() {
    let server = ApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let svc = api
        .create(&PostParams::default(), &service("a"))
        .await
        .unwrap();

    let recorder = events::Recorder::new(client, "ferrolb-test".into());
    let event = events::Event {
        type_: events::EventType::Normal,
        reason: "IPAllocated".into(),
        note: Some("Assigned IP [\"10.250.0.100\"]".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &svc.object_ref(&()))
        .await
        .unwrap();
    let stored = server.list("events.k8s.io/v1", "Event");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["reason"], "IPAllocated");
    assert_eq!(stored[0]["regarding"]["name"], "a");

    server.inject(Fault {
        method: axum::http::Method::PUT,
        path_contains: "/services/a/status".into(),
        status: 409,
        times: 1,
    });
    let put = api.replace_status("a", &PostParams::default(), &svc).await;
    assert!(
        matches!(&put, Err(kube::Error::Api(s)) if s.code == 409),
        "{put:?}"
    );
    api.replace_status("a", &PostParams::default(), &svc)
        .await
        .unwrap();

    // Waiting on requests is event-driven with a bound.
    assert!(
        server
            .wait_for_requests(WAIT, |r| r.iter().filter(|r| r.is_write()).count() >= 4)
            .await
    );
}
