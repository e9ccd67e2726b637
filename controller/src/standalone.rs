//! The standalone backend: the controller over a directory of manifests instead of a cluster.
//! It reads the directory, reacts to its changes (inotify), and writes each Service's allocation
//! and each pool's counters into `status/` atomically; events become log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_daemon::statedir::{StateDir, StateDirError, Watch};
use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_proto::api::state::{
    POOLS_STATUS_DIR, SERVICES_STATUS_DIR, Snapshot, pool_status_path, service_status_path,
    stamp_new_pools,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::ipam::ServiceKey;
use crate::metrics::Metrics;
use crate::reconcile::{Action, PoolStatus, Reconciler, VALID_CONDITION};

/// Runs until shutdown. Fails only when the directory itself cannot be read or watched.
pub async fn run(
    dir: StateDir,
    lb_class: Option<String>,
    metrics: Metrics,
    readiness: Readiness,
    mut shutdown: Shutdown,
) -> Result<(), StateDirError> {
    // Watch before the first read, so a change between the two is not missed.
    let mut changes = dir.watch(Watch::Manifests)?;
    let mut reported = BTreeSet::new();
    let mut reconciler = Reconciler::new(lb_class);

    let started = Instant::now();
    let snapshot = read(&dir)?;
    report_problems(&snapshot, &mut reported);
    let seen = first_seen(&snapshot);
    let complete = snapshot.problems.is_empty();
    let Snapshot {
        pools,
        namespaces,
        services,
        ..
    } = snapshot;
    let actions = reconciler.start(pools, namespaces, services);
    report_pool_problems(&reconciler, &mut reported);
    carry_out(&dir, actions, &metrics, &seen);
    remove_stale_status(&dir, &reconciler, &seen, complete);
    metrics.set_pools(&reconciler.allocator().pool_stats());
    metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    readiness.ready();
    tracing::info!(dir = %dir.root().display(), "standalone controller ready");

    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            changed = changes.changed() => {
                if changed.is_none() {
                    readiness.not_ready("the state directory watch stopped");
                    return Err(StateDirError::NotADirectory(dir.root().to_owned()));
                }
            }
        }
        let started = Instant::now();
        let snapshot = read(&dir)?;
        report_problems(&snapshot, &mut reported);
        let seen = first_seen(&snapshot);
        let complete = snapshot.problems.is_empty();
        let actions = reconciler.sync(snapshot.pools, snapshot.namespaces, snapshot.services);
        report_pool_problems(&reconciler, &mut reported);
        for key in carry_out(&dir, actions, &metrics, &seen) {
            reconciler.write_failed(&key);
        }
        remove_stale_status(&dir, &reconciler, &seen, complete);
        metrics.set_pools(&reconciler.allocator().pool_stats());
        metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Reads the directory. Pools new to the controller get their first-seen time (their
/// seniority where pools overlap); a status they carry from an older version is dropped, so
/// it is written again with that time.
fn read(dir: &StateDir) -> Result<Snapshot, StateDirError> {
    let mut snapshot = dir.read()?;
    let new = stamp_new_pools(&mut snapshot.pools, Timestamp::now());
    for pool in &mut snapshot.pools {
        if new.contains(&pool.name_any()) {
            pool.status = None;
        }
    }
    Ok(snapshot)
}

/// When the controller first saw each pool, by name, as written into its status file.
fn first_seen(snapshot: &Snapshot) -> BTreeMap<String, String> {
    snapshot
        .pools
        .iter()
        .filter_map(|p| {
            let seen = p.metadata.creation_timestamp.as_ref()?;
            Some((p.name_any(), seen.0.to_string()))
        })
        .collect()
}

/// Logs each unreadable manifest once, not on every reload.
fn report_problems(snapshot: &Snapshot, reported: &mut BTreeSet<String>) {
    for problem in &snapshot.problems {
        let line = problem.to_string();
        if reported.insert(line.clone()) {
            tracing::error!("ignoring manifest: {line}");
        }
    }
}

fn report_pool_problems(reconciler: &Reconciler, reported: &mut BTreeSet<String>) {
    for problem in reconciler.pool_problems() {
        let line = problem.to_string();
        if reported.insert(line.clone()) {
            tracing::error!(pool = %problem.pool, "pool hands out no new addresses: {line}");
        }
    }
}

/// Carries out every action; returns the Services whose write failed.
fn carry_out(
    dir: &StateDir,
    actions: Vec<Action>,
    metrics: &Metrics,
    seen: &BTreeMap<String, String>,
) -> Vec<ServiceKey> {
    let mut failed = Vec::new();
    for action in actions {
        let service = match &action {
            Action::WriteService { service, .. } => Some(service.clone()),
            _ => None,
        };
        let result = match action {
            Action::WriteService {
                service,
                assignment,
            } => {
                let path = service_status_path(service.namespace(), service.name());
                match assignment {
                    None => dir.remove(&path),
                    Some(assignment) => {
                        let ingress: Vec<Value> = assignment
                            .ips
                            .iter()
                            .map(|ip| json!({"ip": ip.to_string()}))
                            .collect();
                        let object = json!({
                            "apiVersion": "v1",
                            "kind": "Service",
                            "metadata": {
                                "name": service.name(),
                                "namespace": service.namespace(),
                                "annotations": {IP_ALLOCATED_FROM_POOL: assignment.pool},
                            },
                            "status": {"loadBalancer": {"ingress": ingress}},
                        });
                        write_yaml(dir, &path, &object)
                    }
                }
            }
            Action::Event {
                service,
                severity,
                reason,
                message,
                cause,
            } => {
                metrics.event(&service, severity, reason, &message, cause);
                Ok(())
            }
            Action::WritePool { pool, status } => write_yaml(
                dir,
                &pool_status_path(&pool),
                &pool_object(&pool, &status, seen.get(&pool)),
            ),
        };
        if let Err(err) = result {
            tracing::error!("cannot write the allocation: {err}");
            failed.extend(service);
        }
    }
    failed
}

fn pool_object(pool: &str, status: &PoolStatus, first_seen: Option<&String>) -> Value {
    let counters = &status.counters;
    json!({
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        // Full precision (the API server's form has whole seconds): pools added within a
        // second of each other still keep their order.
        "metadata": {"name": pool, "creationTimestamp": first_seen},
        "spec": {"addresses": []},
        "status": {
            "assignedIPv4": counters.assigned_ipv4,
            "assignedIPv6": counters.assigned_ipv6,
            "availableIPv4": counters.available_ipv4,
            "availableIPv6": counters.available_ipv6,
            "conditions": [{
                "type": VALID_CONDITION,
                "status": status.condition_status(),
                "reason": status.condition_reason(),
                "message": status.condition_message(),
                "lastTransitionTime": Timestamp::now().to_string(),
            }],
        },
    })
}

fn write_yaml(dir: &StateDir, path: &str, object: &Value) -> Result<(), StateDirError> {
    let text =
        serde_yaml_ng::to_string(object).unwrap_or_else(|err| format!("# cannot render: {err}\n"));
    dir.write_atomic(
        path,
        &format!("# Written by ferrolb-controller; do not edit.\n{text}"),
    )
}

/// Removes status files of Services the controller no longer serves (deleted while it was
/// down, or not LoadBalancers any more), and of pools deleted, so a pool added again is a
/// newcomer. Pool files stay while some manifest could not be read: it may hold the pool.
fn remove_stale_status(
    dir: &StateDir,
    reconciler: &Reconciler,
    pools: &BTreeMap<String, String>,
    complete: bool,
) {
    let services = reconciler
        .allocator()
        .assignments()
        .map(|(key, _)| service_status_path(key.namespace(), key.name()));
    let mut wanted: BTreeSet<String> = services.collect();
    let mut dirs = vec![SERVICES_STATUS_DIR];
    if complete {
        wanted.extend(pools.keys().map(|pool| pool_status_path(pool)));
        dirs.push(POOLS_STATUS_DIR);
    }
    for stale_dir in dirs {
        let Ok(files) = dir.files_under(stale_dir) else {
            continue;
        };
        for file in files.into_iter().filter(|f| !wanted.contains(f)) {
            if let Err(err) = dir.remove(&file) {
                tracing::warn!("cannot remove stale {file}: {err}");
            }
        }
    }
}
