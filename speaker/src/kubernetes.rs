//! The Kubernetes backend: watches what the election needs (Services, IPAddressPools,
//! L2Advertisements, Nodes, EndpointSlices, ServiceL2Statuses, and the speaker pods the quorum
//! counts) into a [`Cluster`], and records
//! this node's announcements as ServiceL2Status objects and Events (nodeAssigned,
//! announceFailed, IPConflict).

use std::sync::Arc;

use ferrolb_daemon::kubernetes::{EventType, Events};
use ferrolb_daemon::mirror::{Mirror, Seen, watch_events};
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_proto::api::l2status::{
    NODE_LABEL, SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL, label_value, with_hash,
};
use ferrolb_proto::api::{IPAddressPool, L2Advertisement, ServiceL2Status};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod as KubePod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::node::{Cluster, Leftovers, Report, announced};

// Boxing would cost an allocation per event for nothing: events are moved once.
#[allow(clippy::large_enum_variant)]
enum Input {
    Service(watcher::Event<Service>),
    Pool(watcher::Event<IPAddressPool>),
    Advertisement(watcher::Event<L2Advertisement>),
    Node(watcher::Event<Node>),
    Slice(watcher::Event<EndpointSlice>),
    Status(watcher::Event<ServiceL2Status>),
    Speaker(watcher::Event<KubePod>),
}

#[derive(Default)]
struct Cache {
    services: Mirror<Service>,
    pools: Mirror<IPAddressPool>,
    advertisements: Mirror<L2Advertisement>,
    nodes: Mirror<Node>,
    slices: Mirror<EndpointSlice>,
    statuses: Mirror<ServiceL2Status>,
    /// The speaker pods, when their selector is known.
    speakers: Option<Mirror<KubePod>>,
}

impl Cache {
    /// Records an event; true when the cluster view may have changed.
    fn apply(&mut self, input: Input) -> bool {
        fn changed<V>(seen: Seen<V>) -> bool {
            !matches!(seen, Seen::Pending)
        }
        match input {
            Input::Service(e) => changed(self.services.apply(e)),
            Input::Pool(e) => changed(self.pools.apply(e)),
            Input::Advertisement(e) => changed(self.advertisements.apply(e)),
            Input::Node(e) => changed(self.nodes.apply(e)),
            Input::Slice(e) => changed(self.slices.apply(e)),
            Input::Status(e) => changed(self.statuses.apply(e)),
            Input::Speaker(e) => self
                .speakers
                .as_mut()
                .is_some_and(|pods| changed(pods.apply(e))),
        }
    }

    fn synced(&self) -> bool {
        self.services.synced()
            && self.pools.synced()
            && self.advertisements.synced()
            && self.nodes.synced()
            && self.slices.synced()
            && self.statuses.synced()
            && self.speakers.as_ref().is_none_or(Mirror::synced)
    }

    fn cluster(&self) -> Cluster {
        let announced = announced(self.statuses.all().iter());
        Cluster {
            services: self.services.all(),
            pools: self.pools.all(),
            advertisements: self.advertisements.all(),
            nodes: self.nodes.all(),
            endpoint_slices: self.slices.all(),
            announced,
            speakers: self
                .speakers
                .as_ref()
                .map(|pods| speaker_nodes(&pods.all())),
        }
    }
}

/// Drops what the election never reads, so the cache stays small on big clusters.
fn lean<K: ResourceExt>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// The nodes the speaker pods are scheduled on, except pods that ended: where a speaker runs
/// or is about to.
fn speaker_nodes(pods: &[KubePod]) -> std::collections::BTreeSet<String> {
    pods.iter()
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|pod| pod.spec.as_ref()?.node_name.clone())
        .collect()
}

/// Starts the watchers; once every kind has been listed, returns the first cluster view and
/// the feed of later ones. With `speaker_selector` (the speaker pods' labels in `namespace`),
/// the quorum counts the nodes those pods run on instead of every Node.
pub async fn follow(
    client: Client,
    namespace: &str,
    speaker_selector: Option<&str>,
    mut shutdown: Shutdown,
) -> Option<(Arc<Cluster>, watch::Receiver<Arc<Cluster>>)> {
    let config = watcher::Config::default;
    let mut streams = vec![
        watch_events(Api::<Service>::all(client.clone()), config())
            .map(|e| Input::Service(e.modify(lean)))
            .boxed(),
        watch_events(
            Api::<IPAddressPool>::namespaced(client.clone(), namespace),
            config(),
        )
        .map(Input::Pool)
        .boxed(),
        watch_events(
            Api::<L2Advertisement>::namespaced(client.clone(), namespace),
            config(),
        )
        .map(Input::Advertisement)
        .boxed(),
        watch_events(Api::<Node>::all(client.clone()), config())
            .map(|e| Input::Node(e.modify(lean)))
            .boxed(),
        watch_events(Api::<EndpointSlice>::all(client.clone()), config())
            .map(|e| Input::Slice(e.modify(lean)))
            .boxed(),
        watch_events(
            Api::<ServiceL2Status>::namespaced(client.clone(), namespace),
            config(),
        )
        .map(Input::Status)
        .boxed(),
    ];
    let mut cache = Cache::default();
    if let Some(selector) = speaker_selector {
        streams.push(
            watch_events(
                Api::<KubePod>::namespaced(client, namespace),
                config().labels(selector),
            )
            .map(|e| Input::Speaker(e.modify(lean)))
            .boxed(),
        );
        cache.speakers = Some(Mirror::default());
    }
    let mut inputs = futures::stream::select_all(streams);
    while !cache.synced() {
        tokio::select! {
            _ = shutdown.wait() => return None,
            input = inputs.next() => cache.apply(input?),
        };
    }
    let first = Arc::new(cache.cluster());
    let (tx, rx) = watch::channel(first.clone());
    tokio::spawn(async move {
        loop {
            let input = tokio::select! {
                _ = shutdown.wait() => return,
                input = inputs.next() => match input {
                    Some(input) => input,
                    None => return,
                },
            };
            let mut changed = cache.apply(input);
            // Take what else is already queued, then publish once for the whole burst.
            while let Some(Some(input)) = inputs.next().now_or_never() {
                changed |= cache.apply(input);
            }
            if changed {
                tx.send_replace(Arc::new(cache.cluster()));
            }
        }
    });
    Some((first, rx))
}

/// A ServiceL2Status name for (node, Service): a DNS-1123 subdomain, unique per pair (a name
/// longer than 253 characters is cut and ends with a hash of the whole).
pub fn status_name(node: &str, namespace: &str, service: &str) -> String {
    let name = format!("l2-{node}-{namespace}-{service}")
        .to_ascii_lowercase()
        .replace(
            |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "-",
        );
    if name.len() <= 253 {
        name.trim_end_matches(['-', '.']).to_owned()
    } else {
        with_hash(&name, 253)
    }
}

/// The speaker's own pod, owner of the ServiceL2Status objects it writes (as in MetalLB): when
/// the pod is deleted, for good or by an update, Kubernetes' garbage collector removes what it
/// announced, even if it died without withdrawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub uid: String,
}

impl Pod {
    /// The pod to own records in `namespace`, if the speaker knows its pod and the pod lives
    /// there (an owner in another namespace counts as absent, and the garbage collector would
    /// delete every record at once). Says why there is none.
    pub fn owner_of_records(
        name: Option<String>,
        uid: Option<String>,
        pod_namespace: Option<&str>,
        namespace: &str,
    ) -> Option<Pod> {
        match (name, uid, pod_namespace) {
            (Some(name), Some(uid), Some(ns)) if ns == namespace => Some(Pod { name, uid }),
            (Some(_), Some(_), Some(ns)) => {
                tracing::warn!(
                    pod_namespace = ns,
                    namespace,
                    "ServiceL2Statuses are kept outside the speaker's namespace: they get no owner, and stay if this speaker dies for good"
                );
                None
            }
            _ => {
                tracing::warn!(
                    "POD_NAME, POD_UID or POD_NAMESPACE unknown: ServiceL2Statuses get no owner, and stay if this speaker dies for good"
                );
                None
            }
        }
    }

    fn owner_references(&self) -> serde_json::Value {
        json!([{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}])
    }
}

/// Carries out the node's reports until the channel closes. Without `pod` (a speaker outside
/// the cluster) the records have no owner, and only this node's speaker removes them.
pub async fn record(
    client: Client,
    namespace: String,
    node: String,
    pod: Option<Pod>,
    mut reports: mpsc::UnboundedReceiver<Report>,
) {
    let statuses: Api<ServiceL2Status> = Api::namespaced(client.clone(), &namespace);
    // The node's name is its reportingInstance (cut to 128 characters with a hash if longer).
    let recorder = Events::new(client, "ferrolb-speaker", &node);
    let mine = ListParams::default().labels(&format!("{NODE_LABEL}={}", label_value(&node)));
    let mut leftovers = Leftovers::new(match statuses.list(&mine).await {
        Ok(list) => list
            .items
            .iter()
            .filter(|s| s.status.as_ref().is_none_or(|s| s.node == node))
            .map(|s| s.name_any())
            .collect(),
        Err(err) => {
            tracing::warn!("cannot list this node's ServiceL2Statuses: {err}");
            Vec::new()
        }
    });
    loop {
        let report = tokio::select! {
            report = reports.recv() => match report {
                Some(report) => report,
                None => return,
            },
            stale = leftovers.due() => {
                for name in stale {
                    delete(&statuses, &name).await;
                }
                continue;
            }
        };
        match report {
            Report::Announcing {
                service,
                interfaces,
                ..
            } => {
                let (ns, name) = split(&service);
                let object_name = status_name(&node, ns, name);
                leftovers.keep(&object_name);
                let record = Record {
                    object_name: &object_name,
                    node: &node,
                    namespace: ns,
                    service: name,
                    interfaces: &interfaces,
                    owner: pod.as_ref(),
                };
                if let Err(err) = announce(&statuses, &record).await {
                    tracing::warn!(%service, "cannot record ServiceL2Status: {err}");
                }
                let note = format!("announcing from node \"{node}\" with protocol \"layer2\"");
                event(&recorder, ns, name, EventType::Normal, "nodeAssigned", note).await;
            }
            Report::Withdrawn { service } => {
                let (ns, name) = split(&service);
                delete(&statuses, &status_name(&node, ns, name)).await;
            }
            Report::Conflict {
                service,
                ip,
                detail,
                announced,
            } => {
                let (ns, name) = split(&service);
                let what = if announced {
                    "while announcing it"
                } else {
                    "so it is not announced"
                };
                event(
                    &recorder,
                    ns,
                    name,
                    EventType::Warning,
                    "IPConflict",
                    format!("{ip}: {detail}, {what}"),
                )
                .await;
            }
            Report::Split {
                service,
                ip,
                mac,
                iface,
                kept,
            } => {
                let (ns, name) = split(&service);
                let what = if kept {
                    "this node's standing is better: it keeps the IP"
                } else {
                    "the other's standing is better: this node yields the IP"
                };
                let note = format!(
                    "{ip}: another speaker of this cluster ({mac} on {iface} of node \"{node}\") claims it too, the membership is split while the LAN is not; {what}"
                );
                event(
                    &recorder,
                    ns,
                    name,
                    EventType::Warning,
                    "SplitMembership",
                    note,
                )
                .await;
            }
            // Events say the same per Service; the node's standing is in its metrics.
            Report::Status(_) => {}
            Report::NoInterface {
                service,
                ip,
                wanted,
            } => {
                let (ns, name) = split(&service);
                let note = format!(
                    "{ip}: none of the interfaces {wanted:?} exists or is eligible on node \"{node}\""
                );
                event(
                    &recorder,
                    ns,
                    name,
                    EventType::Warning,
                    "announceFailed",
                    note,
                )
                .await;
            }
        }
    }
}

/// One ServiceL2Status to write.
struct Record<'a> {
    object_name: &'a str,
    node: &'a str,
    namespace: &'a str,
    service: &'a str,
    interfaces: &'a [String],
    owner: Option<&'a Pod>,
}

async fn announce(statuses: &Api<ServiceL2Status>, record: &Record<'_>) -> Result<(), kube::Error> {
    let Record {
        object_name,
        node,
        namespace,
        service,
        interfaces,
        owner,
    } = *record;
    let mut metadata = json!({
        "name": object_name,
        "labels": {NODE_LABEL: label_value(node), SERVICE_NAME_LABEL: service, SERVICE_NAMESPACE_LABEL: namespace},
    });
    if let Some(pod) = owner {
        metadata["ownerReferences"] = pod.owner_references();
    }
    let body: ServiceL2Status = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1",
        "kind": "ServiceL2Status",
        "metadata": metadata,
        "spec": {},
    }))
    .map_err(kube::Error::SerdeError)?;
    match statuses.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Written by this node before, maybe by a previous pod of it: owned by this pod
            // (or by nothing, out of the cluster) from now on, or the garbage collector would
            // remove it with the old one. A merge patch replaces the whole list, dropping the
            // old pod. Written without reading first: this path runs only when a speaker
            // restarts or a Service's interfaces change.
            let owners = json!({"metadata": {
                "ownerReferences": owner.map(Pod::owner_references),
            }});
            match statuses
                .patch(object_name, &PatchParams::default(), &Patch::Merge(&owners))
                .await
            {
                Ok(_) => {}
                // Collected in between: write it anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    statuses.create(&PostParams::default(), &body).await?;
                }
                Err(err) => return Err(err),
            }
        }
        Err(err) => return Err(err),
    }
    // Status is a subresource: written separately, as MetalLB's speaker does.
    let status = json!({"status": {
        "node": node,
        "serviceName": service,
        "serviceNamespace": namespace,
        "interfaces": interfaces.iter().map(|i| json!({"name": i})).collect::<Vec<_>>(),
    }});
    statuses
        .patch_status(object_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

async fn delete(statuses: &Api<ServiceL2Status>, name: &str) {
    match statuses.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => tracing::warn!(name, "cannot delete ServiceL2Status: {err}"),
    }
}

async fn event(
    recorder: &Events,
    ns: &str,
    name: &str,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if let Err(err) = recorder
        .service(ns, name, type_, reason, "Announce", &note)
        .await
    {
        tracing::warn!(service = %format!("{ns}/{name}"), reason, "cannot record event: {err}");
    }
}

fn split(service: &str) -> (&str, &str) {
    service.split_once('/').unwrap_or(("default", service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_owned_by_the_pod_only_in_its_own_namespace() {
        let owner = |ns: Option<&str>| {
            Pod::owner_of_records(
                Some("speaker-x".into()),
                Some("uid".into()),
                ns,
                "metallb-system",
            )
        };
        assert_eq!(
            owner(Some("metallb-system")),
            Some(Pod {
                name: "speaker-x".into(),
                uid: "uid".into()
            })
        );
        assert_eq!(
            owner(Some("other")),
            None,
            "an owner cannot cross namespaces"
        );
        assert_eq!(owner(None), None);
        assert_eq!(
            Pod::owner_of_records(
                None,
                Some("uid".into()),
                Some("metallb-system"),
                "metallb-system"
            ),
            None
        );
    }

    #[test]
    fn status_names_are_dns_subdomains() {
        assert_eq!(status_name("Node_1", "web", "app"), "l2-node-1-web-app");
        let long = status_name(&"n".repeat(300), "web", "app");
        assert!(long.len() <= 253 && !long.ends_with('-'));
        assert_ne!(
            long,
            status_name(&"n".repeat(300), "web", "api"),
            "cut names stay apart"
        );
    }
}
