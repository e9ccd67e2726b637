//! The speaker's loop on one node: whenever the cluster's state or the live membership changes,
//! decide who announces what, hand this node's share to the announcer as far as its quorum lets
//! it take IPs over, and report to the backend what it answers on the wire (which records it as
//! ServiceL2Status and Events).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_daemon::endpoint::Readiness;
use ferrolb_daemon::shutdown::Shutdown;
use ferrolb_proto::api::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_proto::election::ElectionKey;
use ferrolb_proto::wire::MacAddr;
use ferrolb_proto::wire::mark::Standing;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};

use crate::announcements::{self, Decision, Inputs, Interfaces, Outcome};
use crate::announcer::{Announcer, Event, Events, Intent, Start};
use crate::carry::{self, Carrier};
use crate::fencing::{self, Fence};
use crate::interfaces::{ExcludePatterns, Link};
use crate::lifecycle::{self, Wire};
use crate::membership::{LiveSet, Rejoin};
use crate::metrics::Metrics;
use crate::quorum::{self, Quorum};

/// The cluster as the backend last read it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Services (`namespace/name`) some speaker has recorded announcing: taking those over
    /// is checked on the wire, not probed for seconds.
    pub announced: BTreeSet<String>,
    /// The nodes expected to run a speaker (the quorum's count), when the backend knows them
    /// better than the Node list (Kubernetes: the nodes of the speaker pods); `None`: every
    /// Node.
    pub speakers: Option<BTreeSet<String>>,
}

impl Cluster {
    /// The speakers the quorum counts, besides the live members.
    pub fn listed_speakers(&self) -> BTreeSet<String> {
        match &self.speakers {
            Some(speakers) => speakers.clone(),
            None => self.nodes.iter().map(|n| n.name_any()).collect(),
        }
    }
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
    /// A foreign station claims an IP of the Service.
    Conflict {
        service: String,
        ip: IpAddr,
        detail: String,
        announced: bool,
    },
    /// Another speaker of this cluster claims an IP of the Service too: the membership is
    /// split while the LAN is not. `kept`: this node keeps it (its standing is better).
    Split {
        service: String,
        ip: IpAddr,
        mac: MacAddr,
        iface: String,
        kept: bool,
    },
    /// None of the Service's requested interfaces can announce on this node.
    NoInterface {
        service: String,
        ip: IpAddr,
        wanted: Vec<String>,
    },
    /// How this node stands now (sent when it changes).
    Status(NodeStatus),
}

/// How a node stands: how much of the cluster it sees, whether it is fenced, and the IPs the
/// election gave it that it does not answer for, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub quorum: Option<Quorum>,
    pub fenced: bool,
    pub problems: Vec<Problem>,
}

/// An owned IP not answered, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub service: String,
    pub ip: IpAddr,
    /// `IPConflict`, `SplitMembership` or `NoInterface`, as the events say it.
    pub reason: &'static str,
    pub detail: String,
}

/// The problems the wire shows for what this node owns: every owned IP held by another
/// speaker's better claim, taken by a foreign host, or without an interface.
pub fn problems(plan: &Plan, wire: &BTreeMap<IpAddr, Wire>) -> Vec<Problem> {
    wire.iter()
        .filter_map(|(ip, wire)| {
            let intent = plan.owned.get(ip)?;
            let (reason, detail) = match wire {
                Wire::Held { by } => (
                    "SplitMembership",
                    format!(
                        "another speaker of this cluster ({by}) answers it with a better standing: the membership is split; checking again"
                    ),
                ),
                Wire::Conflicted { mac } => (
                    "IPConflict",
                    format!("another host ({mac}) answers for it; probing again later"),
                ),
                Wire::NoInterface => (
                    "NoInterface",
                    if intent.interfaces.is_empty() {
                        "no interface of this node is eligible".to_owned()
                    } else {
                        format!(
                            "none of the interfaces {:?} exists or is eligible on this node",
                            intent.interfaces
                        )
                    },
                ),
                Wire::Answering { .. } | Wire::Probing | Wire::HandedOver => return None,
            };
            Some(Problem {
                service: service_of(&plan.decisions, *ip),
                ip: *ip,
                reason,
                detail,
            })
        })
        .collect()
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

/// This node's share of the decisions: per Service, its IPs and interfaces (empty: every
/// eligible one).
pub type Share = BTreeMap<String, (Vec<IpAddr>, Vec<String>)>;

/// What the node does for one state of its inputs: the decisions of every speaker, the share
/// of them this node takes, and the announcer's owned set.
#[derive(Debug, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    pub share: Share,
    pub owned: BTreeMap<IpAddr, Intent>,
    /// The Services some speaker is known to have announced, with their IPs: those recorded
    /// now, and those recorded since this node started whose IPs are unchanged (an owner that
    /// stops answering removes its record before its successor takes over).
    pub announced: BTreeMap<String, Vec<IpAddr>>,
}

/// The pure step: the decisions, and the share of them this node takes with its `quorum`,
/// given what it took `before`.
///
/// A Service this node announced before is kept. Any other is taken as the quorum allows
/// ([`crate::quorum`]): one that some speaker announced is checked on the wire first, unless its
/// previous owner left gracefully (it hands over make-before-break); one nobody ever announced
/// is probed, and only with a majority.
pub fn plan(
    cluster: &Cluster,
    live: &LiveSet,
    settings: &NodeSettings,
    quorum: Quorum,
    before: &Plan,
) -> Plan {
    let live_names = live.names().map(str::to_owned).collect();
    let decisions = decide(cluster, &live_names, settings);
    let announced: BTreeMap<String, Vec<IpAddr>> = decisions
        .iter()
        .filter(|d| {
            cluster.announced.contains(&d.service)
                || before.announced.get(&d.service) == Some(&d.ips)
        })
        .map(|d| (d.service.clone(), d.ips.clone()))
        .collect();
    let mut share = Share::new();
    let mut owned = BTreeMap::new();
    for (decision, interfaces) in announcements::mine(&decisions, &settings.node_name) {
        let interfaces = match interfaces {
            Interfaces::All => Vec::new(),
            Interfaces::Only(names) => names.iter().cloned().collect(),
        };
        let kept = before
            .share
            .get(&decision.service)
            .is_some_and(|(ips, _)| *ips == decision.ips);
        let start = if kept {
            Start::Check
        } else if announced.contains_key(&decision.service) {
            let handed_over = previous_owner(&before.decisions, &decision.service)
                .is_some_and(|node| live.departed.contains_key(node));
            // A Leave is sealed with the cluster key: a node that said it leaves is not cut
            // off, and answers only until its successor claims the IP.
            match quorum {
                Quorum::Majority | Quorum::Half if handed_over => Start::Now,
                Quorum::Majority | Quorum::Half => Start::Check,
                Quorum::Minority | Quorum::Unadmitted => continue,
            }
        } else if quorum == Quorum::Majority {
            Start::Probe
        } else {
            continue;
        };
        let standing = ElectionKey::for_service(&decision.ips)
            .map(|key| Standing::of(&settings.node_name, key));
        for ip in &decision.ips {
            owned.insert(
                *ip,
                Intent {
                    interfaces: interfaces.clone(),
                    start,
                    standing,
                },
            );
        }
        share.insert(decision.service.clone(), (decision.ips.clone(), interfaces));
    }
    Plan {
        decisions,
        share,
        owned,
        announced,
    }
}

fn previous_owner<'a>(decisions: &'a [Decision], service: &str) -> Option<&'a str> {
    decisions
        .iter()
        .find(|d| d.service == service)
        .and_then(|d| match &d.outcome {
            Outcome::Announced { node, .. } => Some(node.as_str()),
            Outcome::NotAnnounced(_) => None,
        })
}

/// What the node answers on the wire: the Services of its share with at least one IP answered,
/// with every interface one of them is answered on.
pub fn on_wire(share: &Share, wire: &BTreeMap<IpAddr, Wire>) -> Share {
    share
        .iter()
        .filter_map(|(service, (ips, _))| {
            let mut interfaces = BTreeSet::new();
            let mut answered = false;
            for ip in ips {
                if let Some(Wire::Answering { interfaces: on }) = wire.get(ip) {
                    answered = true;
                    interfaces.extend(on.iter().cloned());
                }
            }
            answered.then(|| {
                (
                    service.clone(),
                    (ips.clone(), interfaces.into_iter().collect()),
                )
            })
        })
        .collect()
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
    /// The link holding the node's membership address: losing it fences the node at once.
    pub membership_link: Option<String>,
    /// Makes the membership reach out at once when a lost link comes back.
    pub rejoin: Option<Rejoin>,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing {
            hold: fencing::DEFAULT_HOLD,
            exclude: ExcludePatterns::default(),
            membership_link: None,
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

/// What the loop keeps between two rounds: what it handed the announcer, what the announcer
/// says is on the wire, and what the backend was told.
#[derive(Debug, Default)]
struct Memory {
    /// The plan handed to the announcer last.
    plan: Plan,
    /// What is on the wire for each owned IP, as the announcer last said.
    wire: BTreeMap<IpAddr, Wire>,
    /// What the backend was last told this node answers.
    recorded: Share,
    /// Some other member has been live since this node started.
    admitted: bool,
    quorum: Option<Quorum>,
    fenced: bool,
    /// What the backend was last told of how this node stands.
    status: NodeStatus,
}

impl Memory {
    /// The reports that bring the backend's records in line with the wire, and how many of
    /// them are takeovers (a Service newly answered that some speaker announced before).
    fn record(&mut self, announced: &BTreeSet<String>) -> (Vec<Report>, u64) {
        let now = on_wire(&self.plan.share, &self.wire);
        let reports = changes(&self.recorded, &now);
        let takeovers = now
            .keys()
            .filter(|s| !self.recorded.contains_key(*s) && announced.contains(*s))
            .count() as u64;
        self.recorded = now;
        (reports, takeovers)
    }

    /// Records what the wire says now: logs, sends and counts.
    fn report(
        &mut self,
        announced: &BTreeSet<String>,
        me: &str,
        metrics: &Metrics,
        reports: &mpsc::UnboundedSender<Report>,
    ) {
        let (changed, takeovers) = self.record(announced);
        for _ in 0..takeovers {
            metrics.takeover();
        }
        for report in changed {
            log_report(&report, me);
            let _ = reports.send(report);
        }
        metrics.set_announced(&self.recorded, me);
        let status = NodeStatus {
            quorum: self.quorum,
            fenced: self.fenced,
            problems: problems(&self.plan, &self.wire),
        };
        if status != self.status {
            self.status = status.clone();
            let _ = reports.send(Report::Status(status));
        }
    }
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
    let me = settings.node_name.clone();
    let mut fence = Fence::new(
        fencing.hold,
        fencing.exclude.clone(),
        fencing.membership_link.clone(),
        std::time::Instant::now(),
    );
    let mut state = Memory::default();
    let mut recheck: Option<tokio::time::Instant> = None;
    let mut previous_live: Option<BTreeSet<String>> = None;
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
            state.admitted |= live.names().any(|n| n != me);
            let listed = cluster.listed_speakers();
            let quorum = quorum::quorum(&me, &listed, live.names(), state.admitted);
            if state.quorum != Some(quorum) {
                log_quorum(&me, quorum, &listed, &live);
                state.quorum = Some(quorum);
            }
            metrics.set_quorum(quorum);
            let mut next = plan(&cluster, &live, &settings, quorum, &state.plan);
            let alone = live.names().all(|n| n == me);
            let others_listed = listed.iter().any(|n| *n != me);
            let last_answer = feeds.membership.as_ref().and_then(|m| m.last_answer());
            let verdict =
                fence.verdict(alone, others_listed, last_answer, std::time::Instant::now());
            recheck = verdict.recheck_at.map(tokio::time::Instant::from_std);
            if verdict.fenced {
                next.share.clear();
                next.owned.clear();
            }
            if verdict.fenced != state.fenced {
                state.fenced = verdict.fenced;
                if state.fenced {
                    tracing::warn!(node = %me, doubt = ?verdict.doubt, "fenced: a link of this node was lost (the membership's, or another while alone); announcing nothing until a peer answers");
                } else {
                    tracing::info!(node = %me, "no longer fenced");
                }
            }
            metrics.set_fenced(state.fenced);
            let live_names: BTreeSet<String> = live.names().map(str::to_owned).collect();
            // Members that came back (a healed partition, a returning node): stations may have
            // learned another owner's MAC meanwhile, so every owner announces again.
            let grew = previous_live
                .as_ref()
                .is_some_and(|before| !live_names.is_subset(before));
            previous_live = Some(live_names);
            let owned_ips = next.owned.keys().copied().collect();
            let announced: BTreeSet<String> = next.announced.keys().cloned().collect();
            let without_me = || {
                let others = live
                    .names()
                    .filter(|n| *n != me)
                    .map(str::to_owned)
                    .collect();
                decide(&cluster, &others, &settings)
            };
            let step = carry::Step {
                me: &me,
                before: &state.plan.decisions,
                without_me,
                announced: &announced,
            };
            carrier
                .follow(
                    &owned_ips,
                    step,
                    |node, ip| reach(&cluster, &live, node, ip),
                    &metrics,
                )
                .await;
            announcer.set_owned(next.owned.clone());
            if grew && !next.share.is_empty() {
                announcer.reannounce();
            }
            state.wire.retain(|ip, _| next.owned.contains_key(ip));
            state.plan = next;
            state.report(&announced, &me, &metrics, &reports);
            metrics.set_members(&live);
            readiness.ready();
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            changed = feeds.cluster.changed() => {
                if changed.is_err() { break; }
                dirty = true;
            }
            changed = feeds.live.changed() => {
                if changed.is_err() { break; }
                dirty = true;
            }
            changed = feeds.links.changed() => {
                if changed.is_err() { break; }
                let links = feeds.links.borrow_and_update().clone();
                if fence.links(&links, std::time::Instant::now())
                    && let Some(rejoin) = &fencing.rejoin
                {
                    tracing::info!(node = %me, "a link came back: rejoining the membership");
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
                if let Event::Ip(lifecycle::Event::Wire { ip, wire }) = &event
                    && state.plan.owned.contains_key(ip)
                {
                    if *wire == Wire::NoInterface {
                        let wanted = state.plan.owned.get(ip).map(|i| i.interfaces.clone()).unwrap_or_default();
                        let service = service_of(&state.plan.decisions, *ip);
                        tracing::warn!(%ip, %service, ?wanted, "none of the requested interfaces can announce on this node");
                        let _ = reports.send(Report::NoInterface { service, ip: *ip, wanted });
                    }
                    state.wire.insert(*ip, wire.clone());
                    let announced: BTreeSet<String> = state.plan.announced.keys().cloned().collect();
                    state.report(&announced, &me, &metrics, &reports);
                } else if let Some(report) = report_event(event, &state.plan.decisions, &metrics) {
                    let _ = reports.send(report);
                }
            }
        }
    }
    // Stopping: this node records nothing any more (its successors record what they take).
    for service in std::mem::take(&mut state.recorded).into_keys() {
        let _ = reports.send(Report::Withdrawn { service });
    }
    announcer
}

fn log_quorum(me: &str, quorum: Quorum, listed: &BTreeSet<String>, live: &LiveSet) {
    let live_count = live.names().chain([me]).collect::<BTreeSet<_>>().len();
    let known = listed
        .iter()
        .map(String::as_str)
        .chain(live.names())
        .chain([me])
        .collect::<BTreeSet<_>>()
        .len();
    match quorum {
        Quorum::Majority => {
            tracing::info!(node = %me, live = live_count, known, "quorum: a majority of the speakers is live; taking over what the election gives this node")
        }
        Quorum::Half => {
            tracing::warn!(node = %me, live = live_count, known, "quorum: exactly half of the speakers is live; taking over only IPs nobody answers on the wire, starting no new one")
        }
        Quorum::Minority => {
            tracing::warn!(node = %me, live = live_count, known, "quorum lost: fewer than half of the speakers are live (this node may be the one cut off); keeping what it announces, taking nothing over")
        }
        Quorum::Unadmitted => {
            tracing::info!(node = %me, known, "waiting to meet a peer before announcing anything (other speakers are listed)")
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

/// The report an announcer event makes, other than a change of what is on the wire.
fn report_event(event: Event, decisions: &[Decision], metrics: &Metrics) -> Option<Report> {
    match event {
        Event::Ip(lifecycle::Event::Conflict {
            ip,
            iface,
            mac,
            evidence,
            announced,
        }) => {
            let service = service_of(decisions, ip);
            let detail = format!("{mac} on {iface} claims {ip} ({evidence})");
            Some(Report::Conflict {
                service,
                ip,
                detail,
                announced,
            })
        }
        Event::Ip(lifecycle::Event::Split {
            ip,
            iface,
            mac,
            kept,
        }) => Some(Report::Split {
            service: service_of(decisions, ip),
            ip,
            mac,
            iface,
            kept,
        }),
        Event::Ip(lifecycle::Event::Wire { .. }) => None,
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
            speakers: None,
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

    fn plan_of(c: &Cluster, live: &LiveSet, node: &str, quorum: Quorum, before: &Plan) -> Plan {
        plan(c, live, &settings(node), quorum, before)
    }

    #[test]
    fn exactly_one_node_owns_both_ips_and_probes_only_new_services() {
        let c = cluster();
        let both = live(&["n1", "n2"]);
        let none = Plan::default();
        let p1 = plan_of(&c, &both, "n1", Quorum::Majority, &none);
        let p2 = plan_of(&c, &both, "n2", Quorum::Majority, &none);
        assert_eq!(p1.share.len() + p2.share.len(), 1);
        let owned = if p1.owned.is_empty() {
            p2.owned
        } else {
            p1.owned
        };
        assert_eq!(owned.len(), 2, "both families go to one node");
        assert!(
            owned
                .values()
                .all(|i| i.start == Start::Probe && i.interfaces.is_empty())
        );
        let standings: BTreeSet<_> = owned.values().map(|i| i.standing).collect();
        assert_eq!(standings.len(), 1, "one standing for the Service's IPs");

        let mut announced = cluster();
        announced.announced.insert("demo/web".into());
        let p = plan_of(&announced, &live(&["n1"]), "n1", Quorum::Majority, &none);
        assert!(
            p.owned.values().all(|i| i.start == Start::Check),
            "a takeover is checked on the wire, not probed"
        );
    }

    #[test]
    fn the_quorum_decides_what_is_taken_over() {
        let mut c = cluster();
        c.announced.insert("demo/web".into());
        let alone = live(&["n2"]);
        let none = Plan::default();
        // n1 ranks first for the VIP; n2, alone, is elected.
        let take = |quorum| plan_of(&c, &alone, "n2", quorum, &none).owned;
        assert_eq!(take(Quorum::Majority).len(), 2);
        assert!(take(Quorum::Half).values().all(|i| i.start == Start::Check));
        assert!(
            take(Quorum::Minority).is_empty(),
            "a minority takes nothing over"
        );
        assert!(take(Quorum::Unadmitted).is_empty());
        // What it already announced, a minority keeps.
        let before = plan_of(&c, &alone, "n2", Quorum::Majority, &none);
        assert_eq!(
            plan_of(&c, &alone, "n2", Quorum::Minority, &before)
                .owned
                .len(),
            2
        );
        // A Service nobody announced yet: only a majority starts it.
        let fresh = cluster();
        assert!(
            plan_of(&fresh, &alone, "n2", Quorum::Half, &none)
                .owned
                .is_empty()
        );
        assert_eq!(
            plan_of(&fresh, &alone, "n2", Quorum::Majority, &none)
                .owned
                .len(),
            2
        );
    }

    #[test]
    fn a_hand_over_from_a_departed_owner_starts_at_once() {
        let mut c = cluster();
        c.announced.insert("demo/web".into());
        let both = live(&["n1", "n2"]);
        let first = plan_of(&c, &both, "n2", Quorum::Majority, &Plan::default());
        let owner = previous_owner(&first.decisions, "demo/web")
            .unwrap()
            .to_owned();
        let other = if owner == "n1" { "n2" } else { "n1" };
        let mut after = live(&[other]);
        let gone = both.members[&owner].address;
        after.departed.insert(owner.clone(), gone);
        for quorum in [Quorum::Majority, Quorum::Half] {
            let p = plan_of(&c, &after, other, quorum, &first);
            assert!(
                !p.owned.is_empty() && p.owned.values().all(|i| i.start == Start::Now),
                "make-before-break with {quorum}"
            );
        }
        // Crashed instead of left: checked first.
        let p = plan_of(&c, &live(&[other]), other, Quorum::Majority, &first);
        assert!(p.owned.values().all(|i| i.start == Start::Check));
    }

    #[test]
    fn the_records_follow_the_wire_not_the_plan() {
        let ip: IpAddr = "10.250.0.100".parse().unwrap();
        let ip6: IpAddr = "fd00:250::100".parse().unwrap();
        let share: Share = [("demo/web".to_owned(), (vec![ip, ip6], vec![]))].into();
        let mut wire = BTreeMap::new();
        assert!(
            on_wire(&share, &wire).is_empty(),
            "planned, not answered yet"
        );
        wire.insert(ip, Wire::Probing);
        wire.insert(
            ip6,
            Wire::Conflicted {
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
            },
        );
        assert!(
            on_wire(&share, &wire).is_empty(),
            "probing or taken: not announced"
        );
        wire.insert(
            ip,
            Wire::Answering {
                interfaces: vec!["eth0".into(), "eth1".into()],
            },
        );
        wire.insert(
            ip6,
            Wire::Answering {
                interfaces: vec!["eth1".into()],
            },
        );
        assert_eq!(
            on_wire(&share, &wire)["demo/web"].1,
            ["eth0", "eth1"],
            "the interfaces it is answered on"
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
