//! The speaker's loop on one node: whenever the cluster's state or the live membership changes,
//! decide who announces what, hand this node's share to the announcer, and report what changed
//! to the backend (which records it as ServiceL2Status and Events).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_proto::api::{IPAddressPool, L2Advertisement, ServiceL2Status};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::{mpsc, watch};

use crate::announcements::{self, Decision, Inputs, Interfaces};
use crate::announcer::{Announcer, Event, Events, Intent};
use crate::carry::{self, Carrier};
use crate::fencing::{self, Fence};
use crate::interfaces::{ExcludePatterns, Link};
use crate::membership::{LiveSet, Rejoin};
use crate::metrics::Metrics;

/// The cluster as the backend last read it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Services (`namespace/name`) some speaker has recorded announcing: taking those over
    /// must not wait for a conflict probe.
    pub announced: BTreeSet<String>,
}

/// The Services (`namespace/name`) that ServiceL2Status records say some speaker announces.
pub fn announced<'a>(statuses: impl IntoIterator<Item = &'a ServiceL2Status>) -> BTreeSet<String> {
    statuses
        .into_iter()
        .filter_map(|s| {
            let status = s.status.as_ref()?;
            Some(format!(
                "{}/{}",
                status.service_namespace, status.service_name
            ))
        })
        .collect()
}

/// What the node tells its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// This node now announces the Service (or on other interfaces than before).
    Announcing {
        service: String,
        ips: Vec<IpAddr>,
        interfaces: Vec<String>,
    },
    /// This node stopped announcing the Service.
    Withdrawn { service: String },
    /// Another station claims an IP of the Service.
    Conflict {
        service: String,
        ip: IpAddr,
        detail: String,
        announced: bool,
    },
    /// None of the Service's requested interfaces can announce on this node.
    NoInterface {
        service: String,
        ip: IpAddr,
        wanted: Vec<String>,
    },
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_name: String,
    pub lb_class: Option<String>,
    pub endpoints_required: bool,
    /// Send the in-flight connections of an IP taken over to its previous owner
    /// ([`crate::carry`]); writes this node's nftables.
    pub carry_connections: bool,
}

/// This node's share of the decisions: per Service, its IPs and interfaces.
type Share = BTreeMap<String, (Vec<IpAddr>, Vec<String>)>;

/// The pure step: the decisions, this node's share, and the announcer's owned set.
pub fn plan(
    cluster: &Cluster,
    live: &LiveSet,
    settings: &NodeSettings,
) -> (Vec<Decision>, Share, BTreeMap<IpAddr, Intent>) {
    let live_names = live.names().map(str::to_owned).collect();
    let decisions = decide(cluster, &live_names, settings);
    let mut share = Share::new();
    let mut owned = BTreeMap::new();
    for (decision, interfaces) in announcements::mine(&decisions, &settings.node_name) {
        let interfaces = match interfaces {
            Interfaces::All => Vec::new(),
            Interfaces::Only(names) => names.iter().cloned().collect(),
        };
        let probe_first = !cluster.announced.contains(&decision.service);
        for ip in &decision.ips {
            owned.insert(
                *ip,
                Intent {
                    interfaces: interfaces.clone(),
                    probe_first,
                },
            );
        }
        share.insert(decision.service.clone(), (decision.ips.clone(), interfaces));
    }
    (decisions, share, owned)
}

fn decide(cluster: &Cluster, live: &BTreeSet<String>, settings: &NodeSettings) -> Vec<Decision> {
    announcements::decide(&Inputs {
        services: &cluster.services,
        pools: &cluster.pools,
        advertisements: &cluster.advertisements,
        nodes: &cluster.nodes,
        endpoint_slices: &cluster.endpoint_slices,
        live,
        lb_class: settings.lb_class.as_deref(),
        endpoints_required: settings.endpoints_required,
    })
}

/// Where `node` is reached for traffic to `ip`, if its kernel still forwards (live, or departed
/// gracefully and not yet forgotten): its Node InternalIP of `ip`'s family, else its
/// membership address if of that family.
fn reach(cluster: &Cluster, live: &LiveSet, node: &str, ip: IpAddr) -> Option<IpAddr> {
    let membership = live
        .members
        .get(node)
        .map(|m| m.address)
        .or_else(|| live.departed.get(node).copied())?;
    let same_family = |a: &IpAddr| a.is_ipv4() == ip.is_ipv4();
    cluster
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .and_then(|n| n.status.as_ref()?.addresses.as_ref())
        .and_then(|addresses| {
            addresses
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .find(same_family)
        })
        .or_else(|| Some(membership.ip()).filter(same_family))
}

/// Reports turning the previous share into the next.
pub fn changes(previous: &Share, next: &Share) -> Vec<Report> {
    let mut reports = Vec::new();
    for (service, (ips, interfaces)) in next {
        if previous.get(service) != Some(&(ips.clone(), interfaces.clone())) {
            reports.push(Report::Announcing {
                service: service.clone(),
                ips: ips.clone(),
                interfaces: interfaces.clone(),
            });
        }
    }
    for service in previous.keys().filter(|s| !next.contains_key(*s)) {
        reports.push(Report::Withdrawn {
            service: service.clone(),
        });
    }
    reports
}

/// How long after start an announcement record of this node that was not announced again
/// counts as stale (left by a previous run, e.g. a crash) and is removed, by either backend.
pub const STALE_RECORD_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The announcement records a previous run of this node left: those not announced again within
/// [`STALE_RECORD_AFTER`] of start are handed out once, for the backend to remove.
#[derive(Debug)]
pub struct Leftovers<K> {
    stale: BTreeSet<K>,
    due: Option<tokio::time::Instant>,
}

impl<K: Ord> Leftovers<K> {
    pub fn new(stale: impl IntoIterator<Item = K>) -> Self {
        Leftovers {
            stale: stale.into_iter().collect(),
            due: Some(tokio::time::Instant::now() + STALE_RECORD_AFTER),
        }
    }

    /// Announced again: not stale after all.
    pub fn keep(&mut self, record: &K) {
        self.stale.remove(record);
    }

    /// Resolves once, at the deadline, with the records still stale; never again after.
    pub async fn due(&mut self) -> BTreeSet<K> {
        match self.due {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.due = None;
                std::mem::take(&mut self.stale)
            }
            None => std::future::pending().await,
        }
    }
}

/// The inputs the loop follows.
#[derive(Debug)]
pub struct Feeds {
    pub cluster: watch::Receiver<Arc<Cluster>>,
    pub live: watch::Receiver<LiveSet>,
    pub links: watch::Receiver<Vec<Link>>,
    pub events: Events,
    /// The membership loop's counters, copied into the metrics every second.
    pub membership: Option<Arc<crate::membership::Metrics>>,
}

/// Self-fencing settings of the loop ([`crate::fencing`]).
#[derive(Debug, Clone)]
pub struct Fencing {
    /// How long a node with every link up waits for a peer before serving alone.
    pub hold: std::time::Duration,
    /// Links never announced on (their loss is no evidence).
    pub exclude: ExcludePatterns,
    /// Makes the membership reach out at once when a lost link comes back.
    pub rejoin: Option<Rejoin>,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing {
            hold: fencing::DEFAULT_HOLD,
            exclude: ExcludePatterns::default(),
            rejoin: None,
        }
    }
}

/// How often the announcer's and membership's counters are copied into the metrics.
const METRICS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs until shutdown; returns the announcer still answering, so the caller can leave the
/// membership first and stop answering last (make-before-break).
pub async fn run(
    settings: NodeSettings,
    feeds: Feeds,
    announcer: Announcer,
    reports: mpsc::UnboundedSender<Report>,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: Shutdown,
) -> Announcer {
    run_fenced(
        settings,
        feeds,
        Fencing::default(),
        announcer,
        reports,
        metrics,
        readiness,
        shutdown,
    )
    .await
}

/// [`run`] with explicit self-fencing settings.
#[allow(clippy::too_many_arguments)]
pub async fn run_fenced(
    settings: NodeSettings,
    mut feeds: Feeds,
    fencing: Fencing,
    announcer: Announcer,
    reports: mpsc::UnboundedSender<Report>,
    metrics: Metrics,
    readiness: Readiness,
    mut shutdown: Shutdown,
) -> Announcer {
    let mut fence = Fence::new(
        fencing.hold,
        fencing.exclude.clone(),
        std::time::Instant::now(),
    );
    let mut fenced = false;
    let mut recheck: Option<tokio::time::Instant> = None;
    let mut previous_live: Option<BTreeSet<String>> = None;
    let mut share = Share::new();
    let mut decisions: Vec<Decision> = Vec::new();
    {
        let links = feeds.links.borrow_and_update().clone();
        fence.links(&links, std::time::Instant::now());
        announcer.set_links(links);
    }
    let mut carrier = Carrier::new(settings.carry_connections, &metrics).await;
    let mut dirty = true;
    let mut refresh = tokio::time::interval(METRICS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if dirty {
            dirty = false;
            let cluster = feeds.cluster.borrow_and_update().clone();
            let live = feeds.live.borrow_and_update().clone();
            let (next_decisions, mut next_share, mut owned) = plan(&cluster, &live, &settings);
            let alone = live.names().all(|n| n == settings.node_name);
            let others_listed = cluster.nodes.iter().any(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n != settings.node_name)
            });
            let last_answer = feeds.membership.as_ref().and_then(|m| m.last_answer());
            let verdict =
                fence.verdict(alone, others_listed, last_answer, std::time::Instant::now());
            recheck = verdict.recheck_at.map(tokio::time::Instant::from_std);
            if verdict.fenced {
                next_share.clear();
                owned.clear();
            }
            if verdict.fenced != fenced {
                fenced = verdict.fenced;
                if fenced {
                    tracing::warn!(node = %settings.node_name, doubt = ?verdict.doubt, "fenced: alone in the membership after losing a link (or before joining); announcing nothing until a peer answers");
                } else {
                    tracing::info!(node = %settings.node_name, "no longer fenced");
                }
            }
            metrics.set_fenced(fenced);
            let live_names: BTreeSet<String> = live.names().map(str::to_owned).collect();
            // Members that came back (a healed partition, a returning node): stations may have
            // learned another owner's MAC meanwhile, so every owner announces again.
            let grew = previous_live
                .as_ref()
                .is_some_and(|before| !live_names.is_subset(before));
            previous_live = Some(live_names);
            let owned_ips = owned.keys().copied().collect();
            let without_me = || {
                let others = live
                    .names()
                    .filter(|n| *n != settings.node_name)
                    .map(str::to_owned)
                    .collect();
                decide(&cluster, &others, &settings)
            };
            let step = carry::Step {
                me: &settings.node_name,
                before: &decisions,
                without_me,
                announced: &cluster.announced,
            };
            carrier
                .follow(
                    &owned_ips,
                    step,
                    |node, ip| reach(&cluster, &live, node, ip),
                    &metrics,
                )
                .await;
            announcer.set_owned(owned);
            if grew && !next_share.is_empty() {
                announcer.reannounce();
            }
            for report in changes(&share, &next_share) {
                if let Report::Announcing { service, .. } = &report
                    && !share.contains_key(service)
                    && cluster.announced.contains(service)
                {
                    metrics.takeover();
                }
                log_report(&report, &settings.node_name);
                let _ = reports.send(report);
            }
            metrics.set_announced(&next_share, &settings.node_name);
            metrics.set_members(&live);
            share = next_share;
            decisions = next_decisions;
            readiness.ready();
        }
        tokio::select! {
            _ = shutdown.wait() => return announcer,
            changed = feeds.cluster.changed() => {
                if changed.is_err() { return announcer; }
                dirty = true;
            }
            changed = feeds.live.changed() => {
                if changed.is_err() { return announcer; }
                dirty = true;
            }
            changed = feeds.links.changed() => {
                if changed.is_err() { return announcer; }
                let links = feeds.links.borrow_and_update().clone();
                if fence.links(&links, std::time::Instant::now())
                    && let Some(rejoin) = &fencing.rejoin
                {
                    tracing::info!(node = %settings.node_name, "a link came back: rejoining the membership");
                    rejoin.now();
                }
                announcer.set_links(links);
                dirty = true;
            }
            _ = sleep_until_opt(recheck) => {
                recheck = None;
                dirty = true;
            }
            _ = sleep_until_opt(carrier.again_at()) => {
                dirty = true;
            }
            _ = refresh.tick() => {
                let membership = feeds.membership.as_ref().map(|m| m.snapshot());
                metrics.refresh(&announcer.stats(), membership.as_ref());
                if let Some(m) = &feeds.membership {
                    metrics.observe_detections(&m.take_detections());
                }
            }
            Some(event) = feeds.events.recv() => {
                if let Some(report) = report_event(event, &decisions, &metrics) {
                    let _ = reports.send(report);
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn service_of(decisions: &[Decision], ip: IpAddr) -> String {
    decisions
        .iter()
        .find(|d| d.ips.contains(&ip))
        .map(|d| d.service.clone())
        .unwrap_or_default()
}

fn report_event(event: Event, decisions: &[Decision], metrics: &Metrics) -> Option<Report> {
    match event {
        Event::Announcing { ip, interfaces } => {
            tracing::info!(%ip, ?interfaces, service = %service_of(decisions, ip), "answering and announcing");
            None
        }
        Event::Conflict {
            ip,
            iface,
            mac,
            evidence,
            announced,
        } => {
            let service = service_of(decisions, ip);
            let detail = format!("{mac} on {iface} claims {ip} ({evidence:?})");
            tracing::warn!(%ip, %iface, %service, "IP conflict: {detail}");
            Some(Report::Conflict {
                service,
                ip,
                detail,
                announced,
            })
        }
        Event::NoInterface { ip, wanted } => {
            let service = service_of(decisions, ip);
            tracing::warn!(%ip, %service, ?wanted, "none of the requested interfaces can announce on this node");
            Some(Report::NoInterface {
                service,
                ip,
                wanted,
            })
        }
        Event::ResponderFailed { iface, error } => {
            metrics.responder_error(&iface);
            tracing::warn!(%iface, "responder failed (retried when links change): {error}");
            None
        }
    }
}

fn log_report(report: &Report, node: &str) {
    match report {
        Report::Announcing {
            service,
            ips,
            interfaces,
        } => {
            tracing::info!(%service, ?ips, ?interfaces, %node, "announcing from node {node:?} with protocol \"layer2\"");
        }
        Report::Withdrawn { service } => tracing::info!(%service, %node, "no longer announcing"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Member, MemberState};
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn cluster() -> Cluster {
        Cluster {
            services: vec![from(json!({
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.100"}, {"ip": "fd00:250::100"}]}},
            }))],
            pools: vec![from(
                json!({"metadata": {"name": "lan"}, "spec": {"addresses": ["10.250.0.100/30", "fd00:250::100/126"]}}),
            )],
            advertisements: vec![from(json!({"metadata": {"name": "all"}, "spec": {}}))],
            nodes: ["n1", "n2"]
                .iter()
                .map(|n| from(json!({"metadata": {"name": n}})))
                .collect(),
            endpoint_slices: vec![],
            announced: BTreeSet::new(),
        }
    }

    fn live(names: &[&str]) -> LiveSet {
        let members = names
            .iter()
            .map(|n| {
                let member = Member {
                    name: (*n).to_owned(),
                    address: "127.0.0.1:7946".parse().unwrap(),
                    incarnation: 0,
                    state: MemberState::Alive,
                };
                ((*n).to_owned(), member)
            })
            .collect();
        LiveSet {
            members,
            departed: BTreeMap::new(),
        }
    }

    fn settings(node: &str) -> NodeSettings {
        NodeSettings {
            node_name: node.into(),
            lb_class: None,
            endpoints_required: false,
            carry_connections: false,
        }
    }

    #[test]
    fn exactly_one_node_owns_both_ips_and_probes_only_new_services() {
        let c = cluster();
        let both = live(&["n1", "n2"]);
        let (_, s1, o1) = plan(&c, &both, &settings("n1"));
        let (_, s2, o2) = plan(&c, &both, &settings("n2"));
        assert_eq!(s1.len() + s2.len(), 1);
        let owned = if o1.is_empty() { o2 } else { o1 };
        assert_eq!(owned.len(), 2, "both families go to one node");
        assert!(
            owned
                .values()
                .all(|i| i.probe_first && i.interfaces.is_empty())
        );

        let mut announced = cluster();
        announced.announced.insert("demo/web".into());
        let (_, _, o1) = plan(&announced, &live(&["n1"]), &settings("n1"));
        assert!(
            o1.values().all(|i| !i.probe_first),
            "a takeover does not probe"
        );
    }

    #[test]
    fn the_previous_owner_is_reached_at_its_internal_ip_while_its_kernel_forwards() {
        let mut c = cluster();
        c.nodes = vec![from(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "10.250.0.1"},
            ]},
        }))];
        let vip: IpAddr = "10.250.0.100".parse().unwrap();
        let vip6: IpAddr = "fd00:250::100".parse().unwrap();
        let mut set = live(&["n1", "n2"]);
        assert_eq!(
            reach(&c, &set, "n1", vip),
            Some("10.250.0.1".parse().unwrap())
        );
        // No Node address of the family: the membership address, if of that family.
        assert_eq!(
            reach(&c, &set, "n2", vip),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(reach(&c, &set, "n1", vip6), None);
        // Departed gracefully: still reached; dead or forgotten: not.
        let member = set.members.remove("n2").unwrap();
        set.departed.insert("n2".into(), member.address);
        assert_eq!(
            reach(&c, &set, "n2", vip),
            Some("127.0.0.1".parse().unwrap())
        );
        set.departed.clear();
        assert_eq!(reach(&c, &set, "n2", vip), None);
    }

    #[test]
    fn changes_report_new_moved_and_withdrawn() {
        let before: Share = [("a".to_owned(), (vec!["10.0.0.1".parse().unwrap()], vec![]))].into();
        let after: Share = [(
            "b".to_owned(),
            (vec!["10.0.0.2".parse().unwrap()], vec!["eth1".to_owned()]),
        )]
        .into();
        let reports = changes(&before, &after);
        assert_eq!(reports.len(), 2);
        assert!(matches!(&reports[0], Report::Announcing { service, .. } if service == "b"));
        assert!(matches!(&reports[1], Report::Withdrawn { service } if service == "a"));
        assert!(changes(&after, &after).is_empty());
    }
}
