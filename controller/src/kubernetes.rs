//! The Kubernetes backend: watches Services, IPAddressPools and Namespaces, feeds the
//! [`Reconciler`], and carries out its actions through the API (status subresource, annotations,
//! events.k8s.io Events), only while this replica leads.
//!
//! One task owns the reconciler; the three watchers feed it over one channel. A watcher that
//! restarts (410 Gone, reconnect) delivers a full list, which is applied with
//! [`Reconciler::sync`], so nothing seen before the gap is trusted blindly.

use std::time::{Duration, Instant};

use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::kubernetes::{EventType, Events};
use ferrolb_daemon::mirror::{Mirror, Seen, watch_events};
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_proto::api::IPAddressPool;
use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::ipam::ServiceKey;
use crate::metrics::Metrics;
use crate::reconcile::{Action, PoolStatus, Reconciler, Severity, VALID_CONDITION, log_event};

/// How the backend is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where IPAddressPools live (the install namespace).
    pub namespace: String,
    pub lb_class: Option<String>,
    /// This replica's name: the reportingInstance of its Events.
    pub instance: String,
}

/// One watch update, from any of the three watchers.
#[derive(Debug)]
// Boxing the large variants would cost an allocation per event for nothing: inputs are moved
// once, through a channel.
#[allow(clippy::large_enum_variant)]
enum Input {
    Service(watcher::Event<Service>),
    Pool(watcher::Event<IPAddressPool>),
    Namespace(watcher::Event<Namespace>),
}

/// Runs until shutdown. Acts only while `leading` is true; on becoming leader it starts over
/// from the watched state (as after a restart).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    readiness: Readiness,
    mut leading: watch::Receiver<bool>,
    mut shutdown: Shutdown,
) {
    let (tx, mut inputs) = mpsc::channel::<Input>(1024);
    let services: Api<Service> = Api::all(client.clone());
    let pools: Api<IPAddressPool> = Api::namespaced(client.clone(), &settings.namespace);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let config = watcher::Config::default;
    let streams = [
        watch_events(services, config()).map(Input::Service).boxed(),
        watch_events(pools, config()).map(Input::Pool).boxed(),
        watch_events(namespaces, config())
            .map(Input::Namespace)
            .boxed(),
    ];
    for mut stream in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(input) = stream.next().await {
                if tx.send(input).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);

    readiness.not_ready("waiting for leadership and the first lists");
    let writer = Writer::new(client, &settings);
    let mut cache = Cache::default();
    let mut reconciler: Option<Reconciler> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*leading.borrow() && reconciler.take().is_some() {
                    // Stepped down: forget, so a later term starts from the cluster's state.
                    readiness.not_ready("standing by: another replica leads");
                    tracing::info!("standing by");
                }
            }
            input = inputs.recv() => {
                let Some(input) = input else { return };
                let started = Instant::now();
                if let Some(actions) = cache.apply(input, reconciler.as_mut()) {
                    let failed = writer.carry_out(actions, &metrics).await;
                    if let Some(r) = reconciler.as_mut() {
                        failed.iter().for_each(|key| r.write_failed(key));
                    }
                }
                if let Some(r) = &reconciler {
                    metrics.set_pools(&r.allocator().pool_stats(), r.pool_problems());
                }
                metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
            }
        }
        // Start (or start over) once leading and every watcher has listed.
        if reconciler.is_none() && *leading.borrow() && cache.synced() {
            let started = Instant::now();
            let mut fresh = Reconciler::new(settings.lb_class.clone());
            let actions = fresh.start(
                cache.pools.all(),
                cache.namespaces.all(),
                cache.services.all(),
            );
            for problem in fresh.pool_problems() {
                tracing::error!(pool = %problem.pool, "pool hands out no new addresses: {problem}");
            }
            for key in writer.carry_out(actions, &metrics).await {
                fresh.write_failed(&key);
            }
            metrics.set_pools(&fresh.allocator().pool_stats(), fresh.pool_problems());
            metrics
                .reconcile_seconds
                .observe(started.elapsed().as_secs_f64());
            reconciler = Some(fresh);
            readiness.ready();
            tracing::info!("leading: allocating");
        }
    }
}

/// The objects as the watchers last listed them, to rebuild from after a restart of any watch.
#[derive(Default)]
struct Cache {
    services: Mirror<Service>,
    pools: Mirror<IPAddressPool>,
    namespaces: Mirror<Namespace>,
}

impl Cache {
    fn synced(&self) -> bool {
        self.services.synced() && self.pools.synced() && self.namespaces.synced()
    }

    /// Records the input; returns the reconciler's actions when there is one to ask.
    fn apply(&mut self, input: Input, reconciler: Option<&mut Reconciler>) -> Option<Vec<Action>> {
        let single = match input {
            Input::Service(event) => match self.services.apply(event) {
                Seen::Applied(svc) => Single::Service(Box::new(svc)),
                Seen::Deleted(svc) => Single::Deleted(ServiceKey::new(
                    &svc.namespace().unwrap_or_else(|| "default".into()),
                    &svc.name_any(),
                )),
                Seen::Relisted => Single::Everything,
                Seen::Pending => return None,
            },
            Input::Pool(event) => match self.pools.apply(event) {
                Seen::Applied(_) | Seen::Deleted(_) | Seen::Relisted => Single::Pools,
                Seen::Pending => return None,
            },
            Input::Namespace(event) => match self.namespaces.apply(event) {
                Seen::Applied(ns) => Single::Namespace(Box::new(ns)),
                Seen::Relisted => Single::Everything,
                Seen::Deleted(_) | Seen::Pending => return None,
            },
        };
        let reconciler = reconciler?;
        Some(match single {
            Single::Service(svc) => reconciler.service_changed(&svc),
            Single::Deleted(key) => reconciler.service_deleted(&key),
            Single::Pools => reconciler.pools_changed(self.pools.all()),
            Single::Namespace(ns) => reconciler.namespace_changed(*ns),
            Single::Everything => {
                reconciler.sync(self.pools.all(), self.namespaces.all(), self.services.all())
            }
        })
    }
}

enum Single {
    Service(Box<Service>),
    Deleted(ServiceKey),
    Pools,
    Namespace(Box<Namespace>),
    Everything,
}

/// Carries out actions through the API, retrying conflicts and transient failures a few times.
struct Writer {
    client: Client,
    pools: Api<IPAddressPool>,
    events: Events,
}

const ATTEMPTS: u32 = 5;

impl Writer {
    fn new(client: Client, settings: &Settings) -> Self {
        Writer {
            pools: Api::namespaced(client.clone(), &settings.namespace),
            events: Events::new(client.clone(), "ferrolb-controller", &settings.instance),
            client,
        }
    }

    /// Carries out every action; returns the Services whose write failed.
    async fn carry_out(&self, actions: Vec<Action>, metrics: &Metrics) -> Vec<ServiceKey> {
        let mut failed = Vec::new();
        for action in actions {
            let service = match &action {
                Action::WriteService { service, .. } => Some(service.clone()),
                _ => None,
            };
            if let Err(err) = self.one(action, metrics).await {
                tracing::error!("{err}");
                failed.extend(service);
            }
        }
        failed
    }

    async fn one(&self, action: Action, metrics: &Metrics) -> Result<(), String> {
        match action {
            Action::WriteService {
                service,
                assignment,
            } => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), service.namespace());
                let ingress: Vec<_> = assignment
                    .iter()
                    .flat_map(|a| &a.ips)
                    .map(|ip| json!({"ip": ip.to_string()}))
                    .collect();
                let status = json!({"status": {"loadBalancer": {"ingress": ingress}}});
                let annotation = json!({"metadata": {"annotations": {
                    IP_ALLOCATED_FROM_POOL: assignment.as_ref().map(|a| a.pool.clone()),
                }}});
                // Status first: speakers read the IPs from status only.
                let params = PatchParams::default();
                let (status, annotation) = (Patch::Merge(&status), Patch::Merge(&annotation));
                retry(&format!("status of Service {service}"), || {
                    api.patch_status(service.name(), &params, &status)
                })
                .await?;
                retry(&format!("annotation of Service {service}"), || {
                    api.patch(service.name(), &params, &annotation)
                })
                .await
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
                let type_ = match severity {
                    Severity::Normal => EventType::Normal,
                    Severity::Warning => EventType::Warning,
                };
                self.events
                    .service(
                        service.namespace(),
                        service.name(),
                        type_,
                        reason,
                        "Allocate",
                        &message,
                    )
                    .await
                    .map_err(|err| {
                        format!("cannot record event {reason} on Service {service}: {err}")
                    })
            }
            Action::WritePool { pool, status } => {
                let body = pool_status_patch(&status);
                let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
                retry(&format!("status of IPAddressPool {pool}"), || {
                    self.pools.patch_status(&pool, &params, &patch)
                })
                .await
            }
        }
    }
}

fn pool_status_patch(status: &PoolStatus) -> serde_json::Value {
    let c = &status.counters;
    json!({"status": {
        "assignedIPv4": c.assigned_ipv4,
        "assignedIPv6": c.assigned_ipv6,
        "availableIPv4": c.available_ipv4,
        "availableIPv6": c.available_ipv6,
        "conditions": [{
            "type": VALID_CONDITION,
            "status": status.condition_status(),
            "reason": status.condition_reason(),
            "message": status.condition_message(),
            "lastTransitionTime": status.transition_time(),
        }],
    }})
}

/// Retries 409 Conflict, 429 and 5xx with a short backoff; other errors are final.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match call().await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                // Deleted meanwhile: nothing left to write.
                return Ok(());
            }
            Err(kube::Error::Api(status))
                if attempt < ATTEMPTS
                    && (status.code == 409 || status.code == 429 || status.code >= 500) =>
            {
                tracing::debug!(attempt, code = status.code, "retrying the write of {what}");
            }
            Err(err) => return Err(format!("cannot write the {what}: {err}")),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(format!(
        "cannot write the {what}: gave up after {ATTEMPTS} attempts"
    ))
}
