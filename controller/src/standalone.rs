//! The standalone backend: the controller over a directory of manifests instead of a cluster.
//! It reads the directory, reacts to its changes (inotify), and writes each Service's allocation
//! and each pool's counters into `status/` atomically; events become log lines. Its record,
//! `status/controller.yaml`, says that it runs (a heartbeat) and which manifests it cannot read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_daemon::statedir::{Reader, StateDir, StateDirError, Watch};
use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_proto::api::state::{
    CONTROLLER_HEARTBEAT, CONTROLLER_RECORD_PATH, ControllerRecord, LAST_GOOD_DIR,
    POOLS_STATUS_DIR, SERVICES_STATUS_DIR, Snapshot, last_good_path, pool_status_path,
    service_status_path, stamp_new_pools,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::ipam::ServiceKey;
use crate::metrics::Metrics;
use crate::reconcile::{Action, PoolStatus, Reconciler, VALID_CONDITION, log_event};

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
    // The only controller of its directory: it always leads.
    metrics.leader.set(1);
    let now = Time(Timestamp::now());
    let mut controller = Controller {
        reader: dir.reader(),
        reconciler: Reconciler::new(lb_class),
        started: false,
        metrics,
        manifest_problems: BTreeSet::new(),
        pool_problems: BTreeSet::new(),
        record: ControllerRecord {
            pid: std::process::id(),
            started_at: now.clone(),
            heartbeat: now,
            stopped_at: None,
            manifest_problems: Vec::new(),
        },
        dir,
    };
    controller.reload()?;
    readiness.ready();
    tracing::info!(dir = %controller.dir.root().display(), "standalone controller ready");

    let mut heartbeat = tokio::time::interval(CONTROLLER_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => {
                controller.record.stopped_at = Some(Time(Timestamp::now()));
                controller.write_record();
                return Ok(());
            }
            _ = heartbeat.tick() => {
                controller.record.heartbeat = Time(Timestamp::now());
                controller.write_record();
            }
            changed = changes.changed() => {
                if changed.is_none() {
                    readiness.not_ready("the state directory watch stopped");
                    return Err(StateDirError::NotADirectory(controller.dir.root().to_owned()));
                }
                controller.reload()?;
            }
        }
    }
}

/// The controller over its directory, between reloads.
struct Controller {
    dir: StateDir,
    reader: Reader,
    reconciler: Reconciler,
    /// Whether the reconciler has had its first input.
    started: bool,
    metrics: Metrics,
    /// Problems as last logged, so each is logged once, and once more when it is gone.
    manifest_problems: BTreeSet<String>,
    pool_problems: BTreeSet<String>,
    /// What `status/controller.yaml` says.
    record: ControllerRecord,
}

impl Controller {
    /// Reads the directory and carries out what changed.
    fn reload(&mut self) -> Result<(), StateDirError> {
        let started = Instant::now();
        let snapshot = read(&mut self.reader)?;
        // The copies first: a one-shot reader that sees the problem recorded finds them.
        self.keep_last_good(&snapshot.held);
        self.report_manifest_problems(&snapshot);
        let seen = first_seen(&snapshot);
        // Every object is there when each problem is a file kept at its last good version.
        let complete = snapshot
            .problems
            .iter()
            .all(|p| snapshot.held.contains(&p.source));
        let Snapshot {
            pools,
            namespaces,
            services,
            ..
        } = snapshot;
        let actions = if self.started {
            self.reconciler.sync(pools, namespaces, services)
        } else {
            self.started = true;
            self.reconciler.start(pools, namespaces, services)
        };
        let pool_problems = self.reconciler.pool_problems().iter();
        let lines = pool_problems.map(|p| format!("pool hands out no new addresses: {p}"));
        report(&mut self.pool_problems, lines.collect());
        for key in carry_out(&self.dir, actions, &self.metrics, &seen) {
            self.reconciler.write_failed(&key);
        }
        remove_stale_status(&self.dir, &self.reconciler, &seen, complete);
        self.metrics.set_pools(
            &self.reconciler.allocator().pool_stats(),
            self.reconciler.pool_problems(),
        );
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Logs new manifest problems (and gone ones), counts them per file, and records them.
    fn report_manifest_problems(&mut self, snapshot: &Snapshot) {
        self.metrics.set_manifest_errors(&snapshot.problems);
        let lines = snapshot.problems.iter().map(|p| {
            if snapshot.held.contains(&p.source) {
                p.to_string()
            } else {
                format!("ignoring manifest: {p}")
            }
        });
        report(&mut self.manifest_problems, lines.collect());
        let current: Vec<String> = self.manifest_problems.iter().cloned().collect();
        if current != self.record.manifest_problems {
            self.record.manifest_problems = current;
            self.write_record();
        }
    }

    /// Keeps a copy of the last good version of each file in use at it, so a restart, the
    /// speakers and `ferrolb-controller status` use the same version; removes the copies of
    /// files that read again or are gone.
    fn keep_last_good(&self, held: &[String]) {
        for path in held {
            let copy = last_good_path(path);
            let Some(text) = self.reader.last_good_text(path) else {
                continue; // in use from the copy itself (kept before a restart)
            };
            if self.dir.read_file(&copy).ok().flatten().as_deref() != Some(text)
                && let Err(err) = self.dir.write_atomic(&copy, text)
            {
                tracing::warn!("cannot keep the last good version of {path}: {err}");
            }
        }
        for copy in self.dir.files_under(LAST_GOOD_DIR).unwrap_or_default() {
            let original = copy.strip_prefix(&format!("{LAST_GOOD_DIR}/"));
            if original.is_none_or(|o| !held.iter().any(|h| h == o))
                && let Err(err) = self.dir.remove(&copy)
            {
                tracing::warn!("cannot remove {copy}: {err}");
            }
        }
    }

    fn write_record(&self) {
        if let Err(err) = write_yaml(&self.dir, CONTROLLER_RECORD_PATH, &self.record) {
            tracing::warn!("cannot record that the controller runs: {err}");
        }
    }
}

/// Reads the directory. Pools new to the controller get their first-seen time (their
/// seniority where pools overlap); a status they carry from an older version is dropped, so
/// it is written again with that time.
fn read(reader: &mut Reader) -> Result<Snapshot, StateDirError> {
    let mut snapshot = reader.read()?;
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

/// Logs each problem new since the last call as an error, and each gone one; `reported`
/// becomes `current`.
fn report(reported: &mut BTreeSet<String>, current: BTreeSet<String>) {
    for line in current.difference(reported) {
        tracing::error!("{line}");
    }
    for line in reported.difference(&current) {
        tracing::info!("resolved: {line}");
    }
    *reported = current;
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
                log_event(&service, severity, reason, &message);
                metrics.count_failure(cause);
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
                "lastTransitionTime": status.transition_time(),
            }],
        },
    })
}

fn write_yaml(dir: &StateDir, path: &str, object: &impl Serialize) -> Result<(), StateDirError> {
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
