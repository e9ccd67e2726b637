//! `ferrolb-controller status`: what FerroLB is doing, at a glance. Whether a controller runs
//! (and, standalone, which manifests it cannot read); each LoadBalancer Service with its IPs,
//! pool, the node that answers for it and since when, and why not when something is wrong; then
//! each pool's usage.
//!
//! [`View::build`] and [`View::render`] are pure: objects in, text out. The shells read them from
//! a standalone state directory ([`from_state_dir`]) or a cluster ([`from_cluster`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ferrolb_proto::api::annotations::IP_ALLOCATED_FROM_POOL;
use ferrolb_proto::api::state::{
    CONTROLLER_HEARTBEAT, CONTROLLER_HEARTBEAT_MISSES, CONTROLLER_RECORD_PATH, ControllerRecord,
    Snapshot, SpeakerRecord,
};
use ferrolb_proto::api::{IPAddressPool, ServiceL2Status};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::ipam::{ServiceKey, handled_by, status_ips};
use crate::reconcile::{Action, Reconciler, Severity};

/// A controller's sign of life: in standalone mode its record (`status/controller.yaml`), in a
/// cluster the leader Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Who: `pid 4242`, or the Lease holder.
    pub who: String,
    pub renewed: Timestamp,
    /// How long after `renewed` it still counts.
    pub lasts: std::time::Duration,
    /// When it stopped cleanly.
    pub stopped: Option<Timestamp>,
    /// The manifest problems it reported (standalone).
    pub manifest_problems: Vec<String>,
}

impl Heartbeat {
    fn alive(&self, now: Timestamp) -> bool {
        let lasts = SignedDuration::try_from(self.lasts).unwrap_or(SignedDuration::MAX);
        self.stopped.is_none() && self.renewed.checked_add(lasts).is_ok_and(|end| end >= now)
    }
}

/// What the view is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub pools: Vec<IPAddressPool>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub l2_statuses: Vec<ServiceL2Status>,
    /// The latest Warning event per Service (`namespace/name`), in a cluster.
    pub warnings: BTreeMap<String, String>,
    /// Only Services of this loadBalancerClass (default: those without one).
    pub lb_class: Option<String>,
    /// The controller's heartbeat, or what its absence means.
    pub controller: Result<Heartbeat, String>,
    /// Manifests that could not be read (standalone), as this command read them.
    pub manifest_problems: Vec<String>,
    /// How each speaker stands (standalone: `status/speakers/`), and what it says of the IPs it
    /// does not answer for.
    pub speakers: Vec<SpeakerRecord>,
}

/// One Service's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub service: String,
    pub ips: Vec<IpAddr>,
    pub pool: Option<String>,
    /// The node answering for it, from the newest ServiceL2Status, with its creation time.
    pub owner: Option<(String, Option<Timestamp>)>,
    /// Other nodes with a record for it (a crashed speaker leaves its record behind).
    pub other_records: Vec<String>,
    /// Why it has no IP or no owner, or the latest warning about it.
    pub problem: Option<String>,
}

/// One pool's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub addresses: Vec<String>,
    /// Counters the controller wrote: (assigned, available) per family; `None` before it has.
    pub ipv4: Option<(i64, i64)>,
    pub ipv6: Option<(i64, i64)>,
    /// Why the pool hands out nothing, when its Valid condition is False.
    pub invalid: Option<String>,
}

/// One speaker's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerRow {
    pub node: String,
    pub quorum: String,
    pub fenced: bool,
    pub updated: Timestamp,
    /// IPs the election gave it that it does not answer for.
    pub problems: usize,
}

/// The whole view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub controller: Result<Heartbeat, String>,
    pub speakers: Vec<SpeakerRow>,
    pub manifest_problems: Vec<String>,
    pub services: Vec<ServiceRow>,
    pub pools: Vec<PoolRow>,
}

impl View {
    /// Builds the view. A Service without IPs gets the reason the allocator gives for it now
    /// (the allocator is pure: it is run here on the same objects, nothing is written).
    pub fn build(inputs: Inputs) -> View {
        let Inputs {
            pools,
            namespaces,
            services,
            l2_statuses,
            warnings,
            lb_class,
            controller,
            manifest_problems,
            speakers,
        } = inputs;
        // What a speaker says of an IP it does not answer for comes before the last event.
        let mut warnings = warnings;
        for speaker in &speakers {
            for p in &speaker.problems {
                warnings.insert(
                    p.service.clone(),
                    format!(
                        "{}: not answered on node {}: {}: {}",
                        p.reason, speaker.node, p.ip, p.detail
                    ),
                );
            }
        }
        let speakers: Vec<SpeakerRow> = speakers
            .iter()
            .map(|r| SpeakerRow {
                node: r.node.clone(),
                quorum: r.quorum.clone(),
                fenced: r.fenced,
                updated: r.updated.0,
                problems: r.problems.len(),
            })
            .collect();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        let mut reconciler = Reconciler::new(lb_class.clone());
        for action in reconciler.start(pools.clone(), namespaces, services.clone()) {
            if let Action::Event {
                service,
                severity: Severity::Warning,
                reason,
                message,
                cause: Some(_),
            } = action
            {
                reasons.insert(service.to_string(), format!("{reason}: {message}"));
            }
        }

        let mut records: BTreeMap<String, Vec<(String, Option<Timestamp>)>> = BTreeMap::new();
        for record in &l2_statuses {
            let Some(status) = &record.status else {
                continue;
            };
            let key = format!("{}/{}", status.service_namespace, status.service_name);
            let created = record.metadata.creation_timestamp.as_ref().map(|t| t.0);
            records
                .entry(key)
                .or_default()
                .push((status.node.clone(), created));
        }

        let mut rows: Vec<ServiceRow> = services
            .iter()
            .filter(|svc| handled_by(svc, lb_class.as_deref()))
            .map(|svc| {
                let key = ServiceKey::new(
                    &svc.namespace().unwrap_or_else(|| "default".to_owned()),
                    &svc.name_any(),
                );
                let name = key.to_string();
                let ips = status_ips(svc, &key).unwrap_or_default();
                let pool = svc.annotations().get(IP_ALLOCATED_FROM_POOL).cloned();
                let mut recorded = records.remove(&name).unwrap_or_default();
                // Newest first; a record without a time sorts last.
                recorded.sort_by_key(|r| std::cmp::Reverse(r.1));
                let owner = (!ips.is_empty()).then(|| recorded.first().cloned()).flatten();
                let other_records = recorded
                    .iter()
                    .skip(usize::from(owner.is_some()))
                    .map(|(node, _)| node.clone())
                    .collect();
                let problem = if ips.is_empty() {
                    Some(
                        reasons
                            .get(&name)
                            .cloned()
                            .unwrap_or_else(|| "pending: the controller has not allocated an IP yet".to_owned()),
                    )
                } else if owner.is_none() {
                    Some(warnings.get(&name).cloned().unwrap_or_else(|| {
                        "not announced: no speaker records answering for it (speakers running? an L2Advertisement selecting its pool and a node? with externalTrafficPolicy Local, a ready endpoint?)".to_owned()
                    }))
                } else {
                    warnings.get(&name).cloned()
                };
                ServiceRow {
                    service: name,
                    ips,
                    pool,
                    owner,
                    other_records,
                    problem,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.service.cmp(&b.service));

        let pools = pools
            .iter()
            .map(|pool| {
                let status = pool.status.as_ref();
                let invalid = status.and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == "Valid" && c.status == "False")
                        .map(|c| format!("{}: {}", c.reason, c.message))
                });
                PoolRow {
                    name: pool.name_any(),
                    addresses: pool.spec.addresses.clone(),
                    ipv4: status.map(|s| (s.assigned_ipv4, s.available_ipv4)),
                    ipv6: status.map(|s| (s.assigned_ipv6, s.available_ipv6)),
                    invalid,
                }
            })
            .collect();
        View {
            controller,
            speakers,
            manifest_problems,
            services: rows,
            pools,
        }
    }

    /// The text shown to the user; `now` makes "since" relative.
    pub fn render(&self, now: Timestamp) -> String {
        let mut out = String::new();
        let running = self.controller.as_ref().is_ok_and(|c| c.alive(now));
        let _ = match &self.controller {
            Ok(c) if running => writeln!(
                out,
                "CONTROLLER running: {}, heartbeat {}",
                c.who,
                since(c.renewed, now)
            ),
            Ok(c) => {
                let last = match c.stopped {
                    Some(at) => format!("{} stopped at {}", c.who, since(at, now)),
                    None => format!(
                        "no heartbeat from {} since {}",
                        c.who,
                        since(c.renewed, now)
                    ),
                };
                writeln!(
                    out,
                    "CONTROLLER NOT RUNNING: {last}; below is what it last wrote, and nothing \
                     changes until a controller runs"
                )
            }
            Err(why) => writeln!(out, "CONTROLLER {why}"),
        };
        // A running controller knows which files it keeps at their last good version.
        let problems = match &self.controller {
            Ok(c) if running => &c.manifest_problems,
            _ => &self.manifest_problems,
        };
        if !problems.is_empty() {
            out.push_str("\nMANIFEST PROBLEMS\n");
            for problem in problems {
                let _ = writeln!(out, "  ! {problem}");
            }
        }
        if !self.speakers.is_empty() {
            out.push_str("\nSPEAKERS\n");
            let table: Vec<[String; 5]> = self
                .speakers
                .iter()
                .map(|s| {
                    [
                        s.node.clone(),
                        s.quorum.clone(),
                        if s.fenced { "FENCED" } else { "-" }.to_owned(),
                        s.problems.to_string(),
                        since(s.updated, now),
                    ]
                })
                .collect();
            let header = ["NODE", "QUORUM", "FENCED", "UNANSWERED", "UPDATED"].map(str::to_owned);
            write_table(&mut out, &header, &table);
            for s in &self.speakers {
                let why = match s.quorum.as_str() {
                    "minority" => Some(
                        "sees fewer than half of the speakers: keeps what it announces, takes nothing over",
                    ),
                    "unadmitted" => Some(
                        "has met no other speaker (membership key? UDP 7946?): announces nothing",
                    ),
                    _ if s.fenced => Some("lost a link: announces nothing until a peer answers"),
                    _ => None,
                };
                if let Some(why) = why {
                    let _ = writeln!(out, "  ! {}: {why}", s.node);
                }
            }
        }
        out.push_str("\nSERVICES (type LoadBalancer)\n");
        if self.services.is_empty() {
            out.push_str("  none\n");
        }
        let table: Vec<[String; 5]> = self
            .services
            .iter()
            .map(|row| {
                let ips = if row.ips.is_empty() {
                    "<pending>".to_owned()
                } else {
                    row.ips
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let (owner, since) = match &row.owner {
                    Some((node, Some(at))) => (node.clone(), since(*at, now)),
                    Some((node, None)) => (node.clone(), "-".to_owned()),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                [
                    row.service.clone(),
                    ips,
                    row.pool.clone().unwrap_or_else(|| "-".to_owned()),
                    owner,
                    since,
                ]
            })
            .collect();
        let header = ["SERVICE", "IPS", "POOL", "NODE", "SINCE"].map(str::to_owned);
        if !table.is_empty() {
            write_table(&mut out, &header, &table);
        }
        for row in &self.services {
            if let Some(problem) = &row.problem {
                let _ = writeln!(out, "  ! {}: {problem}", row.service);
            }
            if !row.other_records.is_empty() {
                let _ = writeln!(
                    out,
                    "  ~ {}: older records from {} (left by a stopped or crashed speaker)",
                    row.service,
                    row.other_records.join(", ")
                );
            }
        }

        out.push_str("\nPOOLS\n");
        if self.pools.is_empty() {
            out.push_str("  none\n");
        }
        let table: Vec<[String; 4]> = self
            .pools
            .iter()
            .map(|pool| {
                let usage = |family: &str, counters: Option<(i64, i64)>| match counters {
                    Some((0, 0)) => None,
                    Some((used, free)) => Some(format!("{family} {used} used, {free} free")),
                    None => None,
                };
                let mut usages: Vec<String> = [usage("IPv4", pool.ipv4), usage("IPv6", pool.ipv6)]
                    .into_iter()
                    .flatten()
                    .collect();
                if pool.ipv4.is_none() {
                    usages.push("no counters yet (is the controller running?)".to_owned());
                }
                [
                    pool.name.clone(),
                    pool.addresses.join(","),
                    usages.join("; "),
                    if pool.invalid.is_some() {
                        "INVALID".to_owned()
                    } else {
                        "ok".to_owned()
                    },
                ]
            })
            .collect();
        if !table.is_empty() {
            let header = ["POOL", "ADDRESSES", "USAGE", "STATE"].map(str::to_owned);
            write_table(&mut out, &header, &table);
        }
        for pool in &self.pools {
            if let Some(why) = &pool.invalid {
                let _ = writeln!(out, "  ! pool {}: {why}", pool.name);
            }
        }
        out
    }
}

/// Aligned columns, two spaces apart, indented by two.
fn write_table<const N: usize>(out: &mut String, header: &[String; N], rows: &[[String; N]]) {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
    }
}

/// `08:31:02 (12s ago)`: the UTC time and how long ago.
fn since(at: Timestamp, now: Timestamp) -> String {
    let ago = now.as_second().saturating_sub(at.as_second()).max(0);
    let ago = match ago {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    let text = at.to_string();
    let clock = text
        .split_once('T')
        .map(|(_, t)| t.chars().take(8).collect::<String>())
        .unwrap_or(text);
    format!("{clock}Z ({ago} ago)")
}

/// The inputs a standalone state directory holds, with the text of the controller's record
/// (`status/controller.yaml`) if there is one.
pub fn from_state_dir(
    snapshot: Snapshot,
    record: Option<&str>,
    speakers: &[String],
    lb_class: Option<String>,
) -> Inputs {
    let lasts = CONTROLLER_HEARTBEAT * CONTROLLER_HEARTBEAT_MISSES;
    let controller = match record.map(serde_yaml_ng::from_str::<ControllerRecord>) {
        Some(Ok(r)) => Ok(Heartbeat {
            who: format!("pid {} (started {})", r.pid, r.started_at.0),
            renewed: r.heartbeat.0,
            lasts,
            stopped: r.stopped_at.map(|t| t.0),
            manifest_problems: r.manifest_problems,
        }),
        Some(Err(err)) => Err(format!(
            "unknown: {CONTROLLER_RECORD_PATH} does not read: {err}"
        )),
        None => Err(format!(
            "NOT RUNNING: no controller has run on this directory (no {CONTROLLER_RECORD_PATH})"
        )),
    };
    Inputs {
        pools: snapshot.pools,
        namespaces: snapshot.namespaces,
        services: snapshot.services,
        l2_statuses: snapshot.l2_statuses,
        warnings: BTreeMap::new(),
        lb_class,
        controller,
        manifest_problems: snapshot.problems.iter().map(ToString::to_string).collect(),
        // A record that does not read is a speaker mid-write or a hand edit: left out.
        speakers: speakers
            .iter()
            .filter_map(|text| serde_yaml_ng::from_str(text).ok())
            .collect(),
    }
}

/// The inputs a cluster holds: every Service, the pools and ServiceL2Statuses in `namespace`,
/// Namespaces, and the latest Warning event of each Service.
pub async fn from_cluster(
    client: kube::Client,
    namespace: &str,
    lease_name: &str,
    lb_class: Option<String>,
) -> Result<Inputs, kube::Error> {
    use kube::api::{Api, ListParams};
    let lp = ListParams::default();
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(lease_name)
        .await;
    let controller = leader(lease, &format!("{namespace}/{lease_name}"));
    let services = Api::<Service>::all(client.clone()).list(&lp).await?.items;
    let pools = Api::<IPAddressPool>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?
        .items;
    let l2_statuses = Api::<ServiceL2Status>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?
        .items;
    // Namespaces and events help but are not essential: a restricted user may not list them.
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    // Filtered here rather than by field selector: every API server can list, and events
    // expire within hours, so the list stays small.
    let events: Vec<Event> = Api::<Event>::all(client)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Service"))
        .collect();
    Ok(Inputs {
        pools,
        namespaces,
        services,
        l2_statuses,
        warnings: latest_warnings(&events),
        lb_class,
        controller,
        manifest_problems: Vec::new(),
        // Speakers in a cluster tell through Events (IPConflict, SplitMembership,
        // announceFailed), which `warnings` holds.
        speakers: Vec::new(),
    })
}

/// The leading replica from the leader Lease: its holder and last renewal.
fn leader(lease: Result<Option<Lease>, kube::Error>, name: &str) -> Result<Heartbeat, String> {
    let spec = match lease {
        Ok(Some(lease)) => lease.spec.unwrap_or_default(),
        Ok(None) => {
            return Err(format!(
                "NOT RUNNING: no Lease {name}, so no replica has led (unless leader election \
                 is off: then look at the controller pod)"
            ));
        }
        Err(err) => return Err(format!("unknown: cannot read Lease {name}: {err}")),
    };
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match (spec.holder_identity.filter(|h| !h.is_empty()), renewed) {
        (Some(holder), Some(renewed)) => Ok(Heartbeat {
            who: format!("{holder} (Lease {name})"),
            renewed,
            lasts: std::time::Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            stopped: None,
            manifest_problems: Vec::new(),
        }),
        _ => Err(format!("NOT RUNNING: no replica holds Lease {name}")),
    }
}

/// Per Service, its latest event when that is a Warning (`reason: message`): a problem that a
/// later Normal event (IPAllocated, nodeAssigned) followed is resolved, and not shown.
fn latest_warnings(events: &[Event]) -> BTreeMap<String, String> {
    let mut latest: BTreeMap<String, (Option<Timestamp>, Option<String>)> = BTreeMap::new();
    for event in events {
        let object = &event.involved_object;
        let (Some(ns), Some(name)) = (&object.namespace, &object.name) else {
            continue;
        };
        // events.k8s.io Events (FerroLB's) have only eventTime; core ones the timestamps.
        let at = event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(event.last_timestamp.as_ref().map(|t| t.0))
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.first_timestamp.as_ref().map(|t| t.0));
        let text = (event.type_.as_deref() == Some("Warning")).then(|| {
            format!(
                "{}: {}",
                event.reason.as_deref().unwrap_or("Warning"),
                event.message.as_deref().unwrap_or("")
            )
        });
        let key = format!("{ns}/{name}");
        if latest.get(&key).is_none_or(|(seen, _)| at >= *seen) {
            latest.insert(key, (at, text));
        }
    }
    latest
        .into_iter()
        .filter_map(|(k, (_, text))| Some((k, text?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn snapshot(files: &[(&str, &str)]) -> Snapshot {
        Snapshot::from_files(files.iter().copied())
    }

    const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan, namespace: metallb-system}\nspec: {addresses: [10.250.0.100-10.250.0.100]}\n";
    const POOL_STATUS: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan}\nspec: {addresses: []}\nstatus: {assignedIPv4: 1, assignedIPv6: 0, availableIPv4: 0, availableIPv6: 0}\n";

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        )
    }

    fn l2(node: &str, at: &str) -> String {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: ServiceL2Status\nmetadata: {{name: l2-web, namespace: demo, creationTimestamp: \"{at}\"}}\nspec: {{}}\nstatus: {{node: {node}, serviceName: web, serviceNamespace: demo}}\n"
        )
    }

    #[test]
    fn owner_pool_pending_reason_and_usage() {
        let web = service("web");
        let api = service("api");
        let old = l2("n1", "2025-01-01T10:00:00Z");
        let new = l2("n2", "2025-01-01T10:00:30Z");
        let status = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo, annotations: {metallb.io/ip-allocated-from-pool: lan}}\nstatus: {loadBalancer: {ingress: [{ip: 10.250.0.100}]}}\n";
        let snap = snapshot(&[
            ("pool.yaml", POOL),
            ("web.yaml", &web),
            ("zapi.yaml", &api),
            ("status/services/demo/web.yaml", status),
            ("status/ipaddresspools/lan.yaml", POOL_STATUS),
            ("status/l2/n1/demo/web.yaml", &old),
            ("status/l2/n2/demo/web.yaml", &new),
        ]);
        let view = View::build(from_state_dir(snap, None, &[], None));
        let [api_row, web_row] = &view.services[..] else {
            panic!("{view:?}");
        };
        assert_eq!(web_row.service, "demo/web");
        assert_eq!(web_row.pool.as_deref(), Some("lan"));
        assert_eq!(web_row.owner.as_ref().unwrap().0, "n2", "the newest record");
        assert_eq!(web_row.other_records, ["n1"]);
        assert!(api_row.ips.is_empty());
        let why = api_row.problem.as_deref().unwrap();
        assert!(why.contains("AllocationFailed"), "{why}");

        let now: Timestamp = "2025-01-01T10:01:00Z".parse().unwrap();
        let text = view.render(now);
        assert!(
            text.contains("demo/web  10.250.0.100  lan   n2    10:00:30Z (30s ago)"),
            "{text}"
        );
        assert!(text.contains("demo/api  <pending>"), "{text}");
        assert!(text.contains("! demo/api: AllocationFailed"), "{text}");
        assert!(text.contains("older records from n1"), "{text}");
        assert!(
            text.contains("lan   10.250.0.100-10.250.0.100  IPv4 1 used, 0 free  ok"),
            "{text}"
        );
    }

    /// Issue 15: a Warning a later Normal event followed (AllocationFailed, then IPAllocated) is
    /// resolved; FerroLB's events.k8s.io Events carry only eventTime.
    #[test]
    fn only_a_service_s_latest_event_if_a_warning_is_a_problem() {
        let event = |type_: &str, reason: &str, at: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("web.{reason}"), "namespace": "demo"},
                "involvedObject": {"kind": "Service", "namespace": "demo", "name": "web"},
                "type": type_, "reason": reason, "message": "m", "eventTime": at,
            }))
            .unwrap()
        };
        let failed = event("Warning", "AllocationFailed", "2025-01-01T10:00:00.000000Z");
        let allocated = event("Normal", "IPAllocated", "2025-01-01T10:00:05.000000Z");
        assert!(latest_warnings(&[failed.clone(), allocated.clone()]).is_empty());
        assert!(
            latest_warnings(&[allocated, failed.clone()]).is_empty(),
            "order of the list"
        );
        assert_eq!(
            latest_warnings(&[failed])
                .get("demo/web")
                .map(String::as_str),
            Some("AllocationFailed: m")
        );
    }

    #[test]
    fn an_allocated_service_nobody_announces_says_so() {
        let web = service("web");
        let status = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nstatus: {loadBalancer: {ingress: [{ip: 10.250.0.100}]}}\n";
        let snap = snapshot(&[
            ("pool.yaml", POOL),
            ("web.yaml", &web),
            ("status/services/demo/web.yaml", status),
        ]);
        let view = View::build(from_state_dir(snap, None, &[], None));
        let text = view.render(Timestamp::now());
        assert!(text.contains("! demo/web: not announced"), "{text}");
        assert!(text.contains("no counters yet"), "{text}");
    }

    /// Issue 19: the view says plainly whether a controller runs, and shows the manifests that
    /// do not read (a new file's YAML error too).
    #[test]
    fn the_controller_and_the_manifest_problems() {
        let snap = || snapshot(&[("pool.yaml", POOL), ("new.yaml", "kind: [unclosed\n")]);
        let record = |extra: &str| {
            format!(
                "pid: 42\nstartedAt: \"2025-01-01T09:00:00Z\"\nheartbeat: \"2025-01-01T10:00:00Z\"\n\
                 manifestProblems: [\"pool.yaml: kept\"]\n{extra}"
            )
        };
        let text = |record: Option<&str>, now: &str| {
            View::build(from_state_dir(snap(), record, &[], None)).render(now.parse().unwrap())
        };

        let never = text(None, "2025-01-01T10:00:05Z");
        assert!(
            never.starts_with(
                "CONTROLLER NOT RUNNING: no controller has run on this directory (no status/controller.yaml)\n"
            ),
            "{never}"
        );
        assert!(
            never.contains("MANIFEST PROBLEMS\n  ! new.yaml document 1: not valid YAML"),
            "{never}"
        );

        let live = text(Some(&record("")), "2025-01-01T10:00:05Z");
        assert!(
            live.starts_with(
                "CONTROLLER running: pid 42 (started 2025-01-01T09:00:00Z), heartbeat 10:00:00Z (5s ago)\n"
            ),
            "{live}"
        );
        assert!(
            live.contains("  ! pool.yaml: kept\n"),
            "the controller's own list: {live}"
        );

        let silent = text(Some(&record("")), "2025-01-01T10:01:00Z");
        assert!(
            silent.starts_with("CONTROLLER NOT RUNNING: no heartbeat from pid 42 (started 2025-01-01T09:00:00Z) since 10:00:00Z (60s ago)"),
            "{silent}"
        );
        assert!(
            silent.contains("! new.yaml"),
            "this command's reading: {silent}"
        );

        let stopped = text(
            Some(&record("stoppedAt: \"2025-01-01T10:00:02Z\"\n")),
            "2025-01-01T10:00:05Z",
        );
        assert!(
            stopped.starts_with("CONTROLLER NOT RUNNING: pid 42 (started 2025-01-01T09:00:00Z) stopped at 10:00:02Z (3s ago)"),
            "{stopped}"
        );
    }
}
