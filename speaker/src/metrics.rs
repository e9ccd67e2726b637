//! The speaker's Prometheus metrics: MetalLB's layer-2 figures under the `ferrolb_` prefix,
//! plus conflicts, splits, quorum, takeovers and the membership protocol's health.
//!
//! The announcer and the membership loop count in their own atomics; [`Metrics::refresh`]
//! copies those counts into the registry (counters only ever move forward).

use std::collections::BTreeMap;
use std::net::IpAddr;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::announcer::Stats;
use crate::membership::{LiveSet, MemberState, MetricsSnapshot};

/// Every metric the speaker exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    announced: IntGaugeVec,
    requests: IntCounterVec,
    responses: IntCounterVec,
    gratuitous: IntCounterVec,
    conflicts: IntCounterVec,
    splits: IntCounterVec,
    malformed: IntCounterVec,
    send_errors: IntCounterVec,
    responder_errors: IntCounterVec,
    takeovers: IntCounter,
    members: IntGaugeVec,
    suspicions: IntCounter,
    deaths: IntCounter,
    refutations: IntCounter,
    rejected: IntCounterVec,
    receive_drops: IntCounter,
    detection: Histogram,
    fenced: prometheus::IntGauge,
    quorum: IntGaugeVec,
    carried: prometheus::IntGauge,
    carry_failures: IntCounter,
}

fn counter_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// Moves a counter up to `value` (it never goes down).
fn catch_up(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            announced: IntGaugeVec::new(
                Opts::new(
                    "ferrolb_speaker_announced",
                    "1 for each Service IP this node announces (MetalLB: metallb_speaker_announced)",
                ),
                &["service", "ip", "node"],
            )?,
            requests: counter_vec(
                "ferrolb_layer2_requests_received_total",
                "ARP requests and neighbour solicitations received for an owned IP",
                &["ip"],
            )?,
            responses: counter_vec(
                "ferrolb_layer2_responses_sent_total",
                "ARP replies and neighbour advertisements sent",
                &["ip"],
            )?,
            gratuitous: counter_vec(
                "ferrolb_layer2_gratuitous_sent_total",
                "Gratuitous ARP and unsolicited neighbour advertisements sent",
                &["ip"],
            )?,
            conflicts: counter_vec(
                "ferrolb_conflicts_total",
                "Claims of foreign stations (not speakers of this cluster) seen on an IP this node owns or probes",
                &["ip"],
            )?,
            splits: counter_vec(
                "ferrolb_layer2_split_claims_total",
                "Claims of other speakers of this cluster seen on an IP this node announces or checks: a membership split while the LAN is not",
                &["ip"],
            )?,
            malformed: counter_vec(
                "ferrolb_layer2_malformed_frames_total",
                "ARP and neighbour discovery frames received that failed to parse, dropped",
                &["iface"],
            )?,
            send_errors: counter_vec(
                "ferrolb_layer2_send_errors_total",
                "Replies the responder of an interface could not send",
                &["iface"],
            )?,
            responder_errors: counter_vec(
                "ferrolb_responder_errors_total",
                "Failures of an interface's responder",
                &["iface"],
            )?,
            takeovers: IntCounter::new(
                "ferrolb_failovers_total",
                "Services this node took over from another announcing node",
            )?,
            members: IntGaugeVec::new(
                Opts::new(
                    "ferrolb_membership_members",
                    "Members by state, as this node sees them",
                ),
                &["state"],
            )?,
            suspicions: IntCounter::new(
                "ferrolb_membership_suspicions_total",
                "Members this node suspected",
            )?,
            deaths: IntCounter::new("ferrolb_membership_deaths_total", "Members declared dead")?,
            refutations: IntCounter::new(
                "ferrolb_membership_refutations_total",
                "Suspicions of this node it refuted",
            )?,
            rejected: counter_vec(
                "ferrolb_membership_rejected_datagrams_total",
                "Membership datagrams refused, by reason",
                &["reason"],
            )?,
            receive_drops: IntCounter::new(
                "ferrolb_membership_receive_drops_total",
                "Membership datagrams the kernel dropped because the socket's receive buffer was full",
            )?,
            detection: Histogram::with_opts(
                HistogramOpts::new(
                    "ferrolb_membership_detection_seconds",
                    "For each member this node declared dead: how long it had suspected it (the failed probe before adds at most one probe interval)",
                )
                .buckets(vec![
                    0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
                ]),
            )?,
            fenced: prometheus::IntGauge::new(
                "ferrolb_speaker_fenced",
                "1 while this node announces nothing because it is cut off from its peers (lost link, or not joined yet)",
            )?,
            quorum: IntGaugeVec::new(
                Opts::new(
                    "ferrolb_speaker_quorum",
                    "1 for how much of the cluster this node sees: majority (takes over what it is elected for), half (only IPs nobody answers), minority (keeps what it announces), unadmitted (has met no peer: announces nothing)",
                ),
                &["quorum"],
            )?,
            carried: prometheus::IntGauge::new(
                "ferrolb_speaker_carried_ips",
                "IPs this node took over whose in-flight connections it sends on to their previous owner",
            )?,
            carry_failures: IntCounter::new(
                "ferrolb_speaker_carry_failures_total",
                "Times the kernel refused the nftables rules that carry in-flight connections",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.announced.clone()))?;
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.responses.clone()))?;
        m.registry.register(Box::new(m.gratuitous.clone()))?;
        m.registry.register(Box::new(m.conflicts.clone()))?;
        m.registry.register(Box::new(m.splits.clone()))?;
        m.registry.register(Box::new(m.malformed.clone()))?;
        m.registry.register(Box::new(m.send_errors.clone()))?;
        m.registry.register(Box::new(m.quorum.clone()))?;
        m.registry.register(Box::new(m.responder_errors.clone()))?;
        m.registry.register(Box::new(m.takeovers.clone()))?;
        m.registry.register(Box::new(m.members.clone()))?;
        m.registry.register(Box::new(m.suspicions.clone()))?;
        m.registry.register(Box::new(m.deaths.clone()))?;
        m.registry.register(Box::new(m.refutations.clone()))?;
        m.registry.register(Box::new(m.rejected.clone()))?;
        m.registry.register(Box::new(m.receive_drops.clone()))?;
        m.registry.register(Box::new(m.detection.clone()))?;
        m.registry.register(Box::new(m.fenced.clone()))?;
        m.registry.register(Box::new(m.carried.clone()))?;
        m.registry.register(Box::new(m.carry_failures.clone()))?;
        Ok(m)
    }

    /// Replaces the set of announced Service IPs.
    pub fn set_announced(&self, share: &BTreeMap<String, (Vec<IpAddr>, Vec<String>)>, node: &str) {
        self.announced.reset();
        for (service, (ips, _)) in share {
            for ip in ips {
                self.announced
                    .with_label_values(&[service, &ip.to_string(), node])
                    .set(1);
            }
        }
    }

    pub fn set_members(&self, live: &LiveSet) {
        let count = |state| live.members.values().filter(|m| m.state == state).count();
        self.members
            .with_label_values(&["alive"])
            .set(count(MemberState::Alive) as i64);
        self.members
            .with_label_values(&["suspect"])
            .set(count(MemberState::Suspect) as i64);
    }

    pub fn responder_error(&self, iface: &str) {
        self.responder_errors.with_label_values(&[iface]).inc();
    }

    /// Records detection times taken from the membership loop.
    pub fn observe_detections(&self, detections: &[std::time::Duration]) {
        for d in detections {
            self.detection.observe(d.as_secs_f64());
        }
    }

    pub fn set_quorum(&self, quorum: crate::quorum::Quorum) {
        for q in crate::quorum::Quorum::ALL {
            self.quorum
                .with_label_values(&[q.as_str()])
                .set(i64::from(q == quorum));
        }
    }

    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.set(i64::from(fenced));
    }

    pub fn set_carried(&self, count: usize) {
        self.carried.set(count as i64);
    }

    pub fn carry_failed(&self) {
        self.carry_failures.inc();
    }

    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// Copies the announcer's and the membership loop's counts in. A per-IP series appears
    /// with its first count, as MetalLB's do: a thousand IPs nobody asks for cost no series.
    pub fn refresh(&self, stats: &Stats, membership: Option<&MetricsSnapshot>) {
        for (ip, s) in &stats.ips {
            let ip = ip.to_string();
            for (counter, value) in [
                (&self.requests, s.requests_received),
                (&self.responses, s.replies_sent),
                (&self.gratuitous, s.gratuitous_sent),
                (&self.conflicts, s.conflicts),
                (&self.splits, s.splits),
            ] {
                if value > 0 {
                    catch_up(&counter.with_label_values(&[&ip]), value);
                }
            }
        }
        for (iface, s) in &stats.interfaces {
            for (counter, value) in [
                (&self.malformed, s.malformed_frames),
                (&self.send_errors, s.send_errors),
            ] {
                // Every responder's series, from zero: a malformed frame is rare and worth an
                // alert, so its absence must read as 0, not as no data.
                catch_up(&counter.with_label_values(&[iface]), value);
            }
        }
        if let Some(m) = membership {
            self.members
                .with_label_values(&["dead"])
                .set(m.members_dead as i64);
            self.members
                .with_label_values(&["left"])
                .set(m.members_left as i64);
            catch_up(&self.suspicions, m.suspicions);
            catch_up(&self.deaths, m.deaths);
            catch_up(&self.refutations, m.refutations);
            catch_up(&self.receive_drops, m.receive_drops);
            for (reason, count) in &m.rejected {
                catch_up(&self.rejected.with_label_values(&[reason.as_str()]), *count);
            }
        }
    }
}
