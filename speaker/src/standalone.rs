//! The standalone backend: the speaker over the shared state directory instead of a cluster.
//! It turns the directory into a [`Cluster`] on every change (inotify), records what this node
//! announces as ServiceL2Status files under `status/l2/<node>/`, and logs events.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_daemon::statedir::{Reader, StateDir, StateDirError, Watch};
use ferrolb_proto::api::l2status::{NODE_LABEL, SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL};
use ferrolb_proto::api::state::{
    Snapshot, SpeakerProblem, SpeakerRecord, l2_status_dir, l2_status_path, speaker_record_path,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::node::{Cluster, Leftovers, NodeStatus, Report, announced};

/// The cluster a snapshot describes.
pub fn cluster(snapshot: Snapshot) -> Cluster {
    let announced = announced(&snapshot.l2_statuses);
    Cluster {
        services: snapshot.services,
        pools: snapshot.pools,
        advertisements: snapshot.advertisements,
        nodes: snapshot.nodes,
        endpoint_slices: snapshot.endpoint_slices,
        announced,
        // Every Node manifest is a host running a speaker.
        speakers: None,
    }
}

/// Reads the directory once and starts following it: returns the first cluster (for set-up,
/// such as membership seeds) and the feed of later ones. `node`'s own announcement records
/// are read at start (those of a previous run) but their changes are not followed: this
/// speaker wrote them, and re-reading a directory of many Services for each would cost.
pub fn follow(
    dir: &StateDir,
    node: &str,
    mut shutdown: Shutdown,
) -> Result<(Arc<Cluster>, watch::Receiver<Arc<Cluster>>), StateDirError> {
    let mut changes = dir.watch(Watch::AllBut(l2_status_dir(node)))?;
    let mut reader = dir.reader();
    let mut reported = BTreeSet::new();
    let first = read(&mut reader, &mut reported)?;
    let (tx, rx) = watch::channel(first.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                changed = changes.changed() => if changed.is_none() {
                    tracing::error!("the state directory watch stopped");
                    return;
                },
            }
            match read(&mut reader, &mut reported) {
                Ok(cluster) => {
                    tx.send_replace(cluster);
                }
                Err(err) => tracing::error!("cannot read the state directory: {err}"),
            }
        }
    });
    Ok((first, rx))
}

/// Reads the directory (a manifest file that stops reading keeps its last good version).
/// The controller reports problems; a file this speaker keeps at an older version is worth a
/// warning here too, once.
fn read(
    reader: &mut Reader,
    reported: &mut BTreeSet<String>,
) -> Result<Arc<Cluster>, StateDirError> {
    let snapshot = reader.read()?;
    let mut current = BTreeSet::new();
    for problem in &snapshot.problems {
        let line = problem.to_string();
        if snapshot.held.contains(&problem.source) {
            if !reported.contains(&line) {
                tracing::warn!("{line}");
            }
        } else {
            tracing::debug!("ignoring manifest: {line}");
        }
        current.insert(line);
    }
    *reported = current;
    Ok(Arc::new(cluster(snapshot)))
}

/// Carries out the node's reports until the channel closes. Records of this node that a
/// previous run left and that are not announced again within [`STALE_RECORD_AFTER`](crate::node::STALE_RECORD_AFTER) are
/// removed.
pub async fn record(dir: StateDir, node: String, mut reports: mpsc::UnboundedReceiver<Report>) {
    let mut leftovers = Leftovers::new(match dir.files_under(&l2_status_dir(&node)) {
        Ok(files) => files,
        Err(err) => {
            tracing::warn!("cannot list this node's announcement records: {err}");
            Vec::new()
        }
    });
    loop {
        let report = tokio::select! {
            report = reports.recv() => match report {
                Some(report) => report,
                None => {
                    // Stopped: nothing to stand for any more.
                    if let Err(err) = dir.remove(&speaker_record_path(&node)) {
                        tracing::debug!("removing this speaker's record: {err}");
                    }
                    return;
                }
            },
            stale = leftovers.due() => {
                for path in stale {
                    tracing::info!(%path, "removing a stale announcement record of a previous run");
                    if let Err(err) = dir.remove(&path) {
                        tracing::warn!("cannot remove {path}: {err}");
                    }
                }
                continue;
            }
        };
        let result = match report {
            Report::Announcing {
                service,
                interfaces,
                ..
            } => {
                let (namespace, name) = split(&service);
                leftovers.keep(&l2_status_path(&node, namespace, name));
                let object = json!({
                    "apiVersion": "metallb.io/v1beta1",
                    "kind": "ServiceL2Status",
                    "metadata": {
                        "name": format!("l2-{name}"),
                        "namespace": namespace,
                        "creationTimestamp": Timestamp::now().to_string(),
                        "labels": {NODE_LABEL: node, SERVICE_NAME_LABEL: name, SERVICE_NAMESPACE_LABEL: namespace},
                    },
                    "spec": {},
                    "status": {
                        "node": node,
                        "serviceName": name,
                        "serviceNamespace": namespace,
                        "interfaces": interfaces.iter().map(|i| json!({"name": i})).collect::<Vec<_>>(),
                    },
                });
                let text = serde_yaml_ng::to_string(&object).unwrap_or_default();
                dir.write_atomic(
                    &l2_status_path(&node, namespace, name),
                    &format!("# Written by ferrolb-speaker on {node}; do not edit.\n{text}"),
                )
            }
            Report::Withdrawn { service } => {
                let (namespace, name) = split(&service);
                dir.remove(&l2_status_path(&node, namespace, name))
            }
            Report::Conflict {
                service,
                ip,
                detail,
                announced,
            } => {
                let what = if announced {
                    "while announcing it"
                } else {
                    "so it is not announced"
                };
                tracing::warn!(%service, %ip, reason = "IPConflict", "IP conflict {what}: {detail}");
                Ok(())
            }
            Report::NoInterface {
                service,
                ip,
                wanted,
            } => {
                tracing::warn!(%service, %ip, reason = "announceFailed", ?wanted, "none of the requested interfaces exists or is eligible on node {node}");
                Ok(())
            }
            Report::Split {
                service,
                ip,
                mac,
                iface,
                kept,
            } => {
                let what = if kept { "kept by this node" } else { "yielded" };
                tracing::warn!(%service, %ip, %mac, %iface, reason = "SplitMembership", "another speaker of this cluster claims {ip} too ({what}): the membership is split while the LAN is not");
                Ok(())
            }
            Report::Status(status) => {
                let record = speaker_record(&node, &status);
                let text = serde_yaml_ng::to_string(&record).unwrap_or_default();
                dir.write_atomic(
                    &speaker_record_path(&node),
                    &format!("# Written by ferrolb-speaker on {node}; do not edit.\n{text}"),
                )
            }
        };
        if let Err(err) = result {
            tracing::error!("cannot record the announcement: {err}");
        }
    }
}

/// The record of how `node` stands, as `ferrolb-controller status` reads it.
fn speaker_record(node: &str, status: &NodeStatus) -> SpeakerRecord {
    SpeakerRecord {
        node: node.to_owned(),
        quorum: status.quorum.map_or("unknown", |q| q.as_str()).to_owned(),
        fenced: status.fenced,
        updated: Time(Timestamp::now()),
        problems: status
            .problems
            .iter()
            .map(|p| SpeakerProblem {
                service: p.service.clone(),
                ip: p.ip.to_string(),
                reason: p.reason.to_owned(),
                detail: p.detail.clone(),
            })
            .collect(),
    }
}

fn split(service: &str) -> (&str, &str) {
    service.split_once('/').unwrap_or(("default", service))
}

/// Membership seeds from the Node objects: each node's InternalIP (else first address) at
/// `port`, except this node.
pub fn seeds(cluster: &Cluster, me: &str, port: u16) -> Vec<std::net::SocketAddr> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.name_any() != me)
        .filter_map(|n| node_address(n).map(|ip| std::net::SocketAddr::new(ip, port)))
        .collect()
}

/// A node's InternalIP, else its first parseable address.
pub fn node_address(node: &k8s_openapi::api::core::v1::Node) -> Option<std::net::IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let parsed = |kind: Option<&str>| {
        addresses
            .iter()
            .filter(|a| kind.is_none_or(|k| a.type_ == k))
            .find_map(|a| a.address.parse().ok())
    };
    parsed(Some("InternalIP")).or_else(|| parsed(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::STALE_RECORD_AFTER;

    #[tokio::test(start_paused = true)]
    async fn records_a_previous_run_left_are_removed_unless_announced_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let gone = l2_status_path("n1", "demo", "gone");
        let again = l2_status_path("n1", "demo", "web");
        let other_node = l2_status_path("n2", "demo", "gone");
        for path in [&gone, &again, &other_node] {
            dir.write_atomic(path, "kind: ServiceL2Status\n").unwrap();
        }
        let exists = |path: &str| tmp.path().join(path).exists();
        let (tx, rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record(dir.clone(), "n1".to_owned(), rx));
        tx.send(Report::Announcing {
            service: "demo/web".to_owned(),
            ips: vec![],
            interfaces: vec!["eth0".to_owned()],
        })
        .unwrap();
        tokio::time::sleep(STALE_RECORD_AFTER / 2).await;
        assert!(exists(&gone), "kept during the grace period");

        tokio::time::sleep(STALE_RECORD_AFTER).await;
        for _ in 0..100 {
            if !exists(&gone) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!exists(&gone), "{gone} swept");
        assert!(exists(&again), "{again} announced again");
        assert!(
            exists(&other_node),
            "another node's record is not ours to remove"
        );
        drop(tx);
        recorder.await.unwrap();
    }
}
