//! The life of every IP this node owns, as a pure state machine: waiting for an interface,
//! probing before a first announcement, checking before a takeover, announcing, held by a better
//! claim of another speaker of this cluster, taken by a foreign host, or handed over while
//! leaving. The announcer's control thread feeds it links, owned IPs, the claims its responders
//! see and the clock, and carries out the [`Effect`]s it returns; nothing here touches a socket
//! or reads the clock.
//!
//! # Two speakers, one IP
//!
//! A speaker whose membership is split from the others while the LAN is not (a firewall on the
//! membership port) sees them dead, and they see it dead: both sides would answer for the same
//! IPs. Every claim a speaker puts on the wire carries its [`Standing`] for the IP, sealed with the
//! cluster key ([`ferrolb_proto::wire::mark`]), and every speaker settles a claim it sees against
//! its own the same way: the lower standing (the owner the election would pick had both been
//! live) keeps the IP, the other stops answering it at once and checks again later. Before taking
//! over an IP someone announced, a speaker checks the wire with one quick probe, so a better
//! claim that is still answered is never answered over, not even for a moment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_proto::wire::MacAddr;
use ferrolb_proto::wire::mark::{self, Mark, Marker, Standing};

use crate::conflict::{self, Probe, ProbeOutcome, ProbePlan, ProbeStep};
use crate::gratuitous::{self, Burst, GratuitousPlan};
use crate::interfaces::{self, ExcludePatterns, Link};
use crate::responder::{Claim, Evidence, OwnedIps};

/// How an IP the node did not announce before is started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// Answer and announce at once: a hand-over from a speaker that left gracefully (it keeps
    /// answering until it sees this node's claim).
    Now,
    /// Taking over an IP another speaker announced: one quick probe first, and a speaker of
    /// this cluster that answers with a better standing keeps it.
    Check,
    /// Never announced by anyone: RFC 5227 probes first, and any answer is a conflict.
    #[default]
    Probe,
}

/// How one owned IP is to be announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// The advertisement's `interfaces`: empty means every eligible interface.
    pub interfaces: Vec<String>,
    pub start: Start,
    /// This node's standing for the IP, sealed into its claims; `None` where no other speaker
    /// can claim it (a static announcement without a cluster key).
    pub standing: Option<Standing>,
}

/// The quick probe before a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPlan {
    /// How long to listen for an answer after the probe. A speaker or kernel holding the IP
    /// answers in well under a millisecond on a LAN.
    pub wait: Duration,
    /// The first delay before checking again an IP a better claim holds; it doubles up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl CheckPlan {
    pub const DEFAULT_WAIT: Duration = Duration::from_millis(20);
}

impl Default for CheckPlan {
    fn default() -> Self {
        CheckPlan {
            wait: Self::DEFAULT_WAIT,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl CheckPlan {
    fn probe_plan(&self) -> ProbePlan {
        ProbePlan {
            probes: 1,
            interval: Duration::ZERO,
            wait: self.wait,
            recheck: self.backoff,
        }
    }
}

/// Every timing the lifecycle follows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plans {
    pub probe: ProbePlan,
    pub check: CheckPlan,
    pub gratuitous: GratuitousPlan,
}

/// What is on the wire for one owned IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Answered and announced on these interfaces.
    Answering { interfaces: Vec<String> },
    /// Probed or checked before announcing: not answered yet.
    Probing,
    /// A speaker of this cluster with a better standing answers it; checked again later.
    Held { by: MacAddr },
    /// A foreign host answers for it; probed again later.
    Conflicted { mac: MacAddr },
    /// None of the requested interfaces exists or is eligible.
    NoInterface,
    /// Leaving: the successor claimed it, so this node stopped answering it.
    HandedOver,
}

/// What the lifecycle tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// What is on the wire for `ip` changed.
    Wire { ip: IpAddr, wire: Wire },
    /// A foreign station (no valid mark) claims `ip`. `announced` false: found by a probe, so
    /// the IP is not announced; true: seen while announcing it.
    Conflict {
        ip: IpAddr,
        iface: String,
        mac: MacAddr,
        evidence: Evidence,
        announced: bool,
    },
    /// Another speaker of this cluster claims `ip` while this one does too (a split
    /// membership). `kept`: this node's standing is better, it keeps answering and announces
    /// again; otherwise it yielded.
    Split {
        ip: IpAddr,
        iface: String,
        mac: MacAddr,
        kept: bool,
    },
}

/// What a frame the lifecycle asks for is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Probe,
    Gratuitous,
}

/// What the caller carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send `frame` on `iface`.
    Send {
        iface: String,
        ip: IpAddr,
        purpose: Purpose,
        frame: Vec<u8>,
    },
    /// From now on, each interface answers and watches these IPs (an interface not listed
    /// deals with none).
    Answer(BTreeMap<String, OwnedIps>),
    Event(Event),
    /// One claim frame of another station on `ip`, foreign (`split` false) or a speaker of
    /// this cluster: counted whether reported or not.
    Claimed {
        ip: IpAddr,
        split: bool,
    },
}

/// What happens to the lifecycle.
#[derive(Debug, Clone)]
pub enum Input {
    /// Every link of the node, as the link watcher reports them.
    Links(Vec<Link>),
    /// The IPs this node owns now, replacing the previous set.
    Owned(BTreeMap<IpAddr, Intent>),
    /// Announce again everything announced (stations may have learned another MAC).
    Reannounce,
    /// This node is leaving: a speaker's claim on an IP it answers is its successor's, and
    /// ends this node's answers for it.
    Leaving,
    /// A responder saw another station claim an IP.
    Claim { iface: String, claim: Claim },
    /// Time passed (call at [`Lifecycle::next_deadline`] or later).
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    /// RFC 5227 before a first announcement.
    Full,
    /// One probe before a takeover; `backoff` is the delay before the next check if held.
    Check { backoff: Duration },
}

#[derive(Debug)]
enum Phase {
    NoInterface,
    Probing {
        probe: Probe,
        kind: ProbeKind,
        /// The first claim seen, and the standing its mark carried if it was a speaker's.
        claim: Option<(String, Claim, Option<Standing>)>,
    },
    /// Per interface: its gratuitous schedule and the mark sealed for it.
    Announcing(BTreeMap<String, OnIface>),
    Conflicted {
        mac: MacAddr,
        recheck_at: Instant,
    },
    Held {
        by: MacAddr,
        recheck_at: Instant,
        backoff: Duration,
    },
    HandedOver,
}

/// An announced IP on one interface.
#[derive(Debug)]
struct OnIface {
    burst: Burst,
    mark: Option<Mark>,
    /// What `mark` was sealed for: the interface's MAC and the node's standing. A change of
    /// either (a new MAC, the Service's first IP changed) seals it again.
    sealed_for: Option<(MacAddr, Standing)>,
}

#[derive(Debug)]
struct IpState {
    intent: Intent,
    ifaces: Vec<String>,
    phase: Phase,
    last_report: Option<Instant>,
    /// The last [`Wire`] reported, so each change is reported once.
    reported: Option<Wire>,
}

/// The same claim seen while announcing is reported at most this often (a conflicting host may
/// announce every second; each frame is still counted), and answered with at most one
/// announcement of ours.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The lifecycle of every owned IP of one node.
#[derive(Debug)]
pub struct Lifecycle {
    plans: Plans,
    exclude: ExcludePatterns,
    marker: Option<Marker>,
    links: Vec<Link>,
    ips: BTreeMap<IpAddr, IpState>,
    leaving: bool,
    /// What each interface was last told to answer and watch.
    answer: BTreeMap<String, OwnedIps>,
}

impl Lifecycle {
    /// A lifecycle that seals its claims with `marker` and recognises those of speakers sealed
    /// with the same keys; without one, every other claim is foreign.
    pub fn new(plans: Plans, exclude: ExcludePatterns, marker: Option<Marker>) -> Self {
        Lifecycle {
            plans,
            exclude,
            marker,
            links: Vec::new(),
            ips: BTreeMap::new(),
            leaving: false,
            answer: BTreeMap::new(),
        }
    }

    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Links(links) => {
                self.links = links;
                self.reconcile(now);
            }
            Input::Owned(intents) => self.own(intents, now),
            Input::Reannounce => {
                for state in self.ips.values_mut() {
                    if let Phase::Announcing(ifaces) = &mut state.phase {
                        for on in ifaces.values_mut() {
                            on.burst = Burst::new(now);
                        }
                    }
                }
            }
            Input::Leaving => self.leaving = true,
            Input::Claim { iface, claim } => self.claimed(&iface, claim, now, &mut out),
            Input::Tick => {}
        }
        let mut sent = Vec::new();
        self.tick(now, &mut sent);
        // What the interfaces answer and watch once the step is over comes before what the
        // step sends: a probe's answer must find the responder open and watching.
        self.publish(&mut out);
        out.extend(sent);
        out
    }

    /// The earliest timer, if any.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.ips
            .values()
            .filter_map(|state| match &state.phase {
                Phase::Probing { probe, kind, .. } => {
                    let mut probe = *probe;
                    match probe.poll(now, &self.plan(*kind)) {
                        ProbeStep::WaitUntil(at) => Some(at),
                        ProbeStep::Send | ProbeStep::Done(_) => Some(now),
                    }
                }
                Phase::Announcing(ifaces) => ifaces
                    .values()
                    .filter_map(|on| on.burst.next_due(&self.plans.gratuitous))
                    .min(),
                Phase::Conflicted { recheck_at, .. } | Phase::Held { recheck_at, .. } => {
                    Some(*recheck_at)
                }
                Phase::NoInterface | Phase::HandedOver => None,
            })
            .min()
    }

    fn plan(&self, kind: ProbeKind) -> ProbePlan {
        match kind {
            ProbeKind::Full => self.plans.probe,
            ProbeKind::Check { .. } => self.plans.check.probe_plan(),
        }
    }

    fn mac_of(&self, iface: &str) -> Option<MacAddr> {
        self.links
            .iter()
            .find(|link| link.name == iface)
            .and_then(|link| link.mac)
    }

    fn seal(&self, iface: &str, ip: IpAddr, standing: Option<Standing>) -> Option<Mark> {
        let marker = self.marker.as_ref()?;
        Some(marker.seal(self.mac_of(iface)?, ip, standing?))
    }

    fn own(&mut self, intents: BTreeMap<IpAddr, Intent>, now: Instant) {
        self.ips.retain(|ip, _| intents.contains_key(ip));
        for (ip, intent) in intents {
            match self.ips.get_mut(&ip) {
                // A new standing (the Service's first IP changed) is sealed again below; a new
                // start mode only matters to an IP not yet owned.
                Some(state) => state.intent = intent,
                None => {
                    self.ips.insert(
                        ip,
                        IpState {
                            intent,
                            ifaces: Vec::new(),
                            phase: Phase::NoInterface,
                            last_report: None,
                            reported: None,
                        },
                    );
                    self.enter(ip, now);
                }
            }
        }
        self.reconcile(now);
    }

    /// Starts a newly owned IP as its intent says, on the interfaces it has now.
    fn enter(&mut self, ip: IpAddr, now: Instant) {
        let ifaces = self.select(ip);
        let Some(state) = self.ips.get_mut(&ip) else {
            return;
        };
        state.ifaces = ifaces;
        state.phase = if state.ifaces.is_empty() {
            Phase::NoInterface
        } else {
            match state.intent.start {
                Start::Now => Phase::Announcing(BTreeMap::new()),
                Start::Check => Phase::Probing {
                    probe: Probe::new(now),
                    kind: ProbeKind::Check {
                        backoff: self.plans.check.backoff,
                    },
                    claim: None,
                },
                Start::Probe => Phase::Probing {
                    probe: Probe::new(now),
                    kind: ProbeKind::Full,
                    claim: None,
                },
            }
        };
        self.fill_bursts(ip, now);
    }

    fn select(&self, ip: IpAddr) -> Vec<String> {
        let Some(state) = self.ips.get(&ip) else {
            return Vec::new();
        };
        let eligible = interfaces::eligible(&self.links, &self.exclude);
        interfaces::select(&eligible, &state.intent.interfaces)
            .iter()
            .map(|link| link.name.clone())
            .collect()
    }

    /// Gives an announcing IP a burst and a mark on each of its interfaces it lacks one on,
    /// seals again a mark whose MAC or standing changed, and drops the interfaces it left.
    fn fill_bursts(&mut self, ip: IpAddr, now: Instant) {
        let Some(state) = self.ips.get(&ip) else {
            return;
        };
        let Phase::Announcing(current) = &state.phase else {
            return;
        };
        let standing = state.intent.standing;
        let sealed_for = |iface: &str| Some((self.mac_of(iface)?, standing?));
        let stale: Vec<(String, OnIface)> = state
            .ifaces
            .iter()
            .filter(|iface| {
                current
                    .get(*iface)
                    .is_none_or(|on| on.sealed_for != sealed_for(iface))
            })
            .map(|iface| {
                let on = OnIface {
                    burst: Burst::new(now),
                    mark: self.seal(iface, ip, standing),
                    sealed_for: sealed_for(iface),
                };
                (iface.clone(), on)
            })
            .collect();
        let Some(state) = self.ips.get_mut(&ip) else {
            return;
        };
        let ifaces = state.ifaces.clone();
        if let Phase::Announcing(current) = &mut state.phase {
            current.retain(|iface, _| ifaces.contains(iface));
            for (iface, fresh) in stale {
                match current.get_mut(&iface) {
                    // Sealed again; the announcements keep their schedule.
                    Some(on) => {
                        on.mark = fresh.mark;
                        on.sealed_for = fresh.sealed_for;
                    }
                    None => {
                        current.insert(iface, fresh);
                    }
                }
            }
        }
    }

    /// Follows link changes: each IP on the interfaces it may use now.
    fn reconcile(&mut self, now: Instant) {
        let ips: Vec<IpAddr> = self.ips.keys().copied().collect();
        for ip in ips {
            let ifaces = self.select(ip);
            let Some(state) = self.ips.get_mut(&ip) else {
                continue;
            };
            if state.ifaces == ifaces {
                // A MAC or the standing may have changed all the same.
                self.fill_bursts(ip, now);
                continue;
            }
            let was_without = matches!(state.phase, Phase::NoInterface);
            state.ifaces = ifaces;
            if state.ifaces.is_empty() || was_without {
                self.enter(ip, now);
            } else {
                // Probes and checks go to whatever interfaces the IP has when they are sent.
                self.fill_bursts(ip, now);
            }
        }
    }

    fn claimed(&mut self, iface: &str, claim: Claim, now: Instant, out: &mut Vec<Effect>) {
        let speaker = self
            .marker
            .as_ref()
            .and_then(|marker| marker.open(claim.mac, claim.ip, claim.trailer()));
        let ours = self.mac_of(iface);
        let leaving = self.leaving;
        let Some(state) = self.ips.get_mut(&claim.ip) else {
            return;
        };
        match &mut state.phase {
            Phase::Probing {
                probe,
                claim: first,
                ..
            } => {
                probe.observe(claim.mac);
                first.get_or_insert((iface.to_owned(), claim, speaker));
            }
            Phase::Announcing(_) => {
                if leaving && speaker.is_some() {
                    // The successor has announced: stations learn its MAC from that claim. A
                    // hand-over, not a split: not counted.
                    state.phase = Phase::HandedOver;
                    return;
                }
                out.push(Effect::Claimed {
                    ip: claim.ip,
                    split: speaker.is_some(),
                });
                let Some(theirs) = speaker else {
                    if state
                        .last_report
                        .is_some_and(|at| now.saturating_duration_since(at) < REPORT_INTERVAL)
                    {
                        return;
                    }
                    state.last_report = Some(now);
                    out.push(Effect::Event(Event::Conflict {
                        ip: claim.ip,
                        iface: iface.to_owned(),
                        mac: claim.mac,
                        evidence: claim.evidence,
                        announced: true,
                    }));
                    return;
                };
                if better(theirs, claim.mac, state.intent.standing, ours) {
                    state.phase = Phase::Held {
                        by: claim.mac,
                        recheck_at: now + self.plans.check.backoff,
                        backoff: self.plans.check.backoff,
                    };
                    out.push(Effect::Event(Event::Split {
                        ip: claim.ip,
                        iface: iface.to_owned(),
                        mac: claim.mac,
                        kept: false,
                    }));
                    return;
                }
                if state
                    .last_report
                    .is_some_and(|at| now.saturating_duration_since(at) < REPORT_INTERVAL)
                {
                    return;
                }
                state.last_report = Some(now);
                // Ours is the better claim: tell the stations again, on the interface where the
                // other one was heard, so whoever learned its MAC comes back.
                if let Phase::Announcing(ifaces) = &mut state.phase
                    && let Some(on) = ifaces.get_mut(iface)
                {
                    on.burst = Burst::new(now);
                }
                out.push(Effect::Event(Event::Split {
                    ip: claim.ip,
                    iface: iface.to_owned(),
                    mac: claim.mac,
                    kept: true,
                }));
            }
            Phase::NoInterface
            | Phase::Conflicted { .. }
            | Phase::Held { .. }
            | Phase::HandedOver => {}
        }
    }

    /// Runs every timer that is due: probes and their verdicts, announcements, re-checks.
    fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let ips: Vec<IpAddr> = self.ips.keys().copied().collect();
        for ip in ips {
            // A phase that just began may have something due at once (a first probe or
            // announcement): run it before moving on.
            for _ in 0..4 {
                if !self.tick_one(ip, now, out) {
                    break;
                }
            }
        }
    }

    /// Advances one IP; true when its phase changed.
    fn tick_one(&mut self, ip: IpAddr, now: Instant, out: &mut Vec<Effect>) -> bool {
        let plans = self.plans;
        let Some(state) = self.ips.get(&ip) else {
            return false;
        };
        match &state.phase {
            Phase::Probing { kind, .. } => {
                let plan = self.plan(*kind);
                self.poll_probe(ip, &plan, now, out)
            }
            Phase::Announcing(_) => {
                self.announce_due(ip, &plans.gratuitous, now, out);
                false
            }
            Phase::Conflicted { recheck_at, .. } if now >= *recheck_at => {
                self.restart_probe(ip, ProbeKind::Full, now);
                true
            }
            Phase::Held {
                recheck_at,
                backoff,
                ..
            } if now >= *recheck_at => {
                let backoff = (*backoff * 2).min(plans.check.max_backoff);
                self.restart_probe(ip, ProbeKind::Check { backoff }, now);
                true
            }
            Phase::Conflicted { .. }
            | Phase::Held { .. }
            | Phase::NoInterface
            | Phase::HandedOver => false,
        }
    }

    fn restart_probe(&mut self, ip: IpAddr, kind: ProbeKind, now: Instant) {
        if let Some(state) = self.ips.get_mut(&ip) {
            state.phase = Phase::Probing {
                probe: Probe::new(now),
                kind,
                claim: None,
            };
        }
    }

    fn poll_probe(
        &mut self,
        ip: IpAddr,
        plan: &ProbePlan,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> bool {
        let mut frames = Vec::new();
        let Some(state) = self.ips.get_mut(&ip) else {
            return false;
        };
        let Phase::Probing { probe, kind, claim } = &mut state.phase else {
            return false;
        };
        let kind = *kind;
        let step = loop {
            match probe.poll(now, plan) {
                ProbeStep::Send => frames.extend(state.ifaces.iter().cloned()),
                step => break step,
            }
        };
        let claim = claim.take();
        let standing = state.intent.standing;
        match step {
            ProbeStep::Send | ProbeStep::WaitUntil(_) => {
                if let Phase::Probing { claim: slot, .. } = &mut state.phase {
                    *slot = claim;
                }
                self.send_probes(ip, &frames, out);
                false
            }
            ProbeStep::Done(ProbeOutcome::Free) => {
                state.phase = Phase::Announcing(BTreeMap::new());
                self.fill_bursts(ip, now);
                true
            }
            ProbeStep::Done(ProbeOutcome::Taken { mac }) => {
                let (iface, claim, speaker) = match claim {
                    Some((iface, claim, speaker)) => (iface, Some(claim), speaker),
                    None => (state.ifaces.join(","), None, None),
                };
                let claimant = claim.map_or(mac, |c| c.mac);
                let ours = self.mac_of(&iface);
                let Some(state) = self.ips.get_mut(&ip) else {
                    return false;
                };
                match speaker {
                    Some(theirs) if better(theirs, claimant, standing, ours) => {
                        let backoff = match kind {
                            ProbeKind::Check { backoff } => backoff,
                            ProbeKind::Full => self.plans.check.backoff,
                        };
                        state.phase = Phase::Held {
                            by: claimant,
                            recheck_at: now + backoff,
                            backoff,
                        };
                        out.push(Effect::Claimed { ip, split: true });
                        out.push(Effect::Event(Event::Split {
                            ip,
                            iface,
                            mac: claimant,
                            kept: false,
                        }));
                    }
                    Some(_) => {
                        // Ours is the better claim: the other speaker yields to it.
                        out.push(Effect::Claimed { ip, split: true });
                        out.push(Effect::Event(Event::Split {
                            ip,
                            iface,
                            mac: claimant,
                            kept: true,
                        }));
                        state.phase = Phase::Announcing(BTreeMap::new());
                        self.fill_bursts(ip, now);
                    }
                    None => {
                        state.phase = Phase::Conflicted {
                            mac: claimant,
                            recheck_at: now + self.plans.probe.recheck,
                        };
                        out.push(Effect::Claimed { ip, split: false });
                        out.push(Effect::Event(Event::Conflict {
                            ip,
                            iface,
                            mac: claimant,
                            evidence: claim.map_or(Evidence::ArpReply, |c| c.evidence),
                            announced: false,
                        }));
                    }
                }
                true
            }
        }
    }

    fn send_probes(&self, ip: IpAddr, ifaces: &[String], out: &mut Vec<Effect>) {
        for iface in ifaces {
            if let Some(mac) = self.mac_of(iface) {
                out.push(Effect::Send {
                    iface: iface.clone(),
                    ip,
                    purpose: Purpose::Probe,
                    frame: conflict::probe_frame(ip, mac),
                });
            }
        }
    }

    fn announce_due(
        &mut self,
        ip: IpAddr,
        plan: &GratuitousPlan,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let mut due = Vec::new();
        if let Some(state) = self.ips.get_mut(&ip)
            && let Phase::Announcing(ifaces) = &mut state.phase
        {
            for (iface, on) in ifaces.iter_mut() {
                if on.burst.next_due(plan).is_some_and(|at| at <= now) {
                    on.burst.mark_sent();
                    due.push((iface.clone(), on.mark));
                }
            }
        }
        for (iface, mark) in due {
            let Some(mac) = self.mac_of(&iface) else {
                continue;
            };
            for frame in gratuitous::frames(ip, mac) {
                let frame = match &mark {
                    Some(mark) => mark::marked(frame, mark),
                    None => frame,
                };
                out.push(Effect::Send {
                    iface: iface.clone(),
                    ip,
                    purpose: Purpose::Gratuitous,
                    frame,
                });
            }
        }
    }

    /// Reports changed [`Wire`] states and, when it changed, what each interface answers.
    fn publish(&mut self, out: &mut Vec<Effect>) {
        let mut answer: BTreeMap<String, OwnedIps> = BTreeMap::new();
        for (ip, state) in &mut self.ips {
            let wire = match &state.phase {
                Phase::NoInterface => Wire::NoInterface,
                Phase::Probing { .. } => {
                    for iface in &state.ifaces {
                        answer.entry(iface.clone()).or_default().probing.insert(*ip);
                    }
                    Wire::Probing
                }
                Phase::Announcing(ifaces) => {
                    for (iface, on) in ifaces {
                        answer
                            .entry(iface.clone())
                            .or_default()
                            .answering
                            .insert(*ip, on.mark);
                    }
                    Wire::Answering {
                        interfaces: ifaces.keys().cloned().collect(),
                    }
                }
                Phase::Conflicted { mac, .. } => Wire::Conflicted { mac: *mac },
                Phase::Held { by, .. } => Wire::Held { by: *by },
                Phase::HandedOver => Wire::HandedOver,
            };
            if state.reported.as_ref() != Some(&wire) {
                state.reported = Some(wire.clone());
                out.push(Effect::Event(Event::Wire { ip: *ip, wire }));
            }
        }
        if answer != self.answer {
            self.answer = answer.clone();
            out.push(Effect::Answer(answer));
        }
    }

    /// The IPs answered on some interface now.
    pub fn answered(&self) -> BTreeSet<IpAddr> {
        self.answer
            .values()
            .flat_map(|owned| owned.answering.keys().copied())
            .collect()
    }
}

/// Whether a speaker's claim (`theirs`, from `their_mac`) beats this node's (`ours`, from
/// `our_mac`): the lower standing wins; equal standings (one node name on two speakers) fall
/// back to the lower MAC, so both sides still agree; a node without a standing always yields.
fn better(
    theirs: Standing,
    their_mac: MacAddr,
    ours: Option<Standing>,
    our_mac: Option<MacAddr>,
) -> bool {
    match ours {
        None => true,
        Some(ours) if theirs == ours => our_mac.is_none_or(|mine| their_mac < mine),
        Some(ours) => theirs < ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_proto::election::ElectionKey;
    use ferrolb_proto::gossip::{Key, KeyRing};
    use ferrolb_proto::wire::{self, Frame};
    use std::net::Ipv4Addr;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
    const MS: Duration = Duration::from_millis(1);

    fn link(name: &str, last: u8) -> Link {
        Link {
            name: name.to_owned(),
            index: u32::from(last),
            mac: Some(MacAddr([2, 0, 0, 0, 0, last])),
            up: true,
            carrier: true,
            broadcast: true,
            noarp: false,
            master: None,
        }
    }

    fn marker() -> Marker {
        Marker::new(&KeyRing::new(Key::from_bytes([7; 32]), []))
    }

    fn standing(node: &str) -> Standing {
        Standing::of(node, ElectionKey(VIP.into()))
    }

    /// A node of a simulated LAN: its lifecycle, its MAC, and what it answers.
    struct Node {
        name: &'static str,
        mac: MacAddr,
        life: Lifecycle,
        answer: BTreeMap<String, OwnedIps>,
        wire: Option<Wire>,
        events: Vec<Event>,
        /// Claim frames counted (conflicts and splits).
        claimed: usize,
    }

    impl Node {
        fn new(name: &'static str, last: u8, marker: Option<Marker>, t0: Instant) -> Node {
            let mut node = Node {
                name,
                mac: MacAddr([2, 0, 0, 0, 0, last]),
                life: Lifecycle::new(Plans::default(), ExcludePatterns::default(), marker),
                answer: BTreeMap::new(),
                wire: None,
                events: Vec::new(),
                claimed: 0,
            };
            let links = vec![link("eth0", last)];
            node.apply(Input::Links(links), t0);
            node
        }

        fn own(&mut self, start: Start, now: Instant) -> Vec<Vec<u8>> {
            let intent = Intent {
                interfaces: vec![],
                start,
                standing: Some(standing(self.name)),
            };
            self.apply(Input::Owned([(VIP.into(), intent)].into()), now)
        }

        /// Steps the lifecycle; returns the frames it sends.
        fn apply(&mut self, input: Input, now: Instant) -> Vec<Vec<u8>> {
            let mut frames = Vec::new();
            for effect in self.life.step(input, now) {
                match effect {
                    Effect::Send { frame, .. } => frames.push(frame),
                    Effect::Answer(answer) => self.answer = answer,
                    Effect::Event(Event::Wire { wire, .. }) => self.wire = Some(wire),
                    Effect::Event(event) => self.events.push(event),
                    Effect::Claimed { .. } => self.claimed += 1,
                }
            }
            frames
        }

        fn answers(&self) -> bool {
            self.answer
                .values()
                .any(|owned| owned.answering.contains_key(&IpAddr::V4(VIP)))
        }

        /// What this node's responder does with `frame` from the LAN: a reply, and a claim
        /// handed to its lifecycle.
        fn hear(&mut self, frame: &[u8], now: Instant) -> Vec<Vec<u8>> {
            let owned = self.answer.get("eth0").cloned().unwrap_or_default();
            let decision = crate::responder::decide(frame, &owned, self.mac).unwrap();
            let mut out: Vec<Vec<u8>> = decision.reply.map(|r| r.frame).into_iter().collect();
            if let Some(claim) = decision.claim {
                out.extend(self.apply(
                    Input::Claim {
                        iface: "eth0".into(),
                        claim,
                    },
                    now,
                ));
            }
            out
        }
    }

    /// Delivers every frame to every other node until the LAN is quiet; returns how many frames
    /// crossed it.
    fn deliver(nodes: &mut [&mut Node], from: usize, frames: Vec<Vec<u8>>, now: Instant) -> usize {
        let mut queue: Vec<(usize, Vec<u8>)> = frames.into_iter().map(|f| (from, f)).collect();
        let mut crossed = 0;
        while let Some((sender, frame)) = queue.pop() {
            crossed += 1;
            assert!(crossed < 1000, "the LAN never quiets down");
            for (i, node) in nodes.iter_mut().enumerate() {
                if i != sender {
                    for reply in node.hear(&frame, now) {
                        queue.push((i, reply));
                    }
                }
            }
        }
        crossed
    }

    #[test]
    fn a_takeover_check_leaves_the_ip_to_a_better_claim_still_answered() {
        let t0 = Instant::now();
        // n1 ranks first for the VIP, n2 second, n3 last.
        let ranked = ferrolb_proto::election::ranking(ElectionKey(VIP.into()), ["n1", "n2", "n3"]);
        assert_eq!(ranked, ["n1", "n2", "n3"]);
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let mut n2 = Node::new("n2", 2, Some(marker()), t0);
        n1.own(Start::Now, t0);
        assert!(n1.answers());
        // n2 is cut off from n1's membership and takes the VIP over: it checks first.
        let probe = n2.own(Start::Check, t0 + MS);
        assert_eq!(n2.wire, Some(Wire::Probing));
        assert_eq!(probe.len(), 1, "one probe");
        // n1's reply ends the check at once.
        deliver(&mut [&mut n1, &mut n2], 1, probe, t0 + MS);
        assert_eq!(n2.wire, Some(Wire::Held { by: n1.mac }));
        assert!(n1.answers() && !n2.answers(), "one MAC answers");
        assert!(matches!(
            n2.events.last(),
            Some(Event::Split { kept: false, .. })
        ));
        // It checks again later; n1 still answers, so the delay doubles.
        let at = n2.life.next_deadline(t0 + MS).unwrap();
        assert_eq!(at, t0 + MS + CheckPlan::default().backoff);
        let probe = n2.apply(Input::Tick, at);
        deliver(&mut [&mut n1, &mut n2], 1, probe, at);
        assert_eq!(n2.wire, Some(Wire::Held { by: n1.mac }));
        let next = n2.life.next_deadline(at).unwrap();
        assert_eq!(next, at + CheckPlan::default().backoff * 2);
        // n1 stops (it died, or it yields by the election): the next check finds silence.
        n1.apply(Input::Owned(BTreeMap::new()), next);
        let probe = n2.apply(Input::Tick, next);
        deliver(&mut [&mut n1, &mut n2], 1, probe, next);
        let wait = CheckPlan::default().wait;
        n2.apply(Input::Tick, next + wait);
        assert!(n2.answers(), "silence: n2 takes over");
    }

    #[test]
    fn a_check_answered_by_a_worse_claim_takes_over_and_the_other_yields() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let mut n3 = Node::new("n3", 3, Some(marker()), t0);
        n3.own(Start::Now, t0);
        // n1 comes back and ranks first: its check hears n3 and takes the VIP at once.
        let probe = n1.own(Start::Check, t0 + MS);
        let crossed = deliver(&mut [&mut n1, &mut n3], 0, probe, t0 + MS);
        assert!(n1.answers(), "the better claim takes over without waiting");
        assert!(!n3.answers(), "the worse one yields to n1's announcement");
        assert_eq!(n3.wire, Some(Wire::Held { by: n1.mac }));
        assert!(crossed >= 3, "probe, n3's reply, n1's announcement");
    }

    #[test]
    fn two_speakers_announcing_at_once_settle_on_the_better_standing() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let mut n2 = Node::new("n2", 2, Some(marker()), t0);
        // Both start at the same instant, neither hears the other's check in time.
        let from_n2 = n2.own(Start::Now, t0);
        let from_n1 = n1.own(Start::Now, t0);
        assert!(n1.answers() && n2.answers());
        deliver(&mut [&mut n1, &mut n2], 1, from_n2, t0);
        deliver(&mut [&mut n1, &mut n2], 0, from_n1, t0);
        assert!(n1.answers(), "n1 ranks first and keeps it");
        assert!(!n2.answers(), "n2 yields");
        assert!(
            n1.events
                .iter()
                .any(|e| matches!(e, Event::Split { kept: true, .. }))
        );
    }

    #[test]
    fn a_foreign_host_is_a_conflict_not_a_split() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        // Another cluster's key: its marks do not open with ours.
        let other = Marker::new(&KeyRing::new(Key::from_bytes([8; 32]), []));
        let mut rogue = Node::new("n9", 9, Some(other), t0);
        rogue.own(Start::Now, t0);
        let probe = n1.own(Start::Check, t0);
        deliver(&mut [&mut n1, &mut rogue], 0, probe, t0);
        n1.apply(Input::Tick, t0 + MS);
        assert_eq!(n1.wire, Some(Wire::Conflicted { mac: rogue.mac }));
        assert!(matches!(
            n1.events.last(),
            Some(Event::Conflict {
                announced: false,
                ..
            })
        ));
    }

    #[test]
    fn a_leaving_speaker_stops_answering_when_its_successor_claims_the_ip() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let mut n2 = Node::new("n2", 2, Some(marker()), t0);
        n1.own(Start::Now, t0);
        n1.apply(Input::Leaving, t0 + MS);
        // n2 takes over from a departed member: at once, although n1 ranks first.
        let claims = n2.own(Start::Now, t0 + MS * 2);
        deliver(&mut [&mut n1, &mut n2], 1, claims, t0 + MS * 2);
        assert!(n2.answers());
        assert!(!n1.answers(), "handed over");
        assert_eq!(n1.wire, Some(Wire::HandedOver));
        assert!(
            n1.events.is_empty(),
            "no conflict reported: {:?}",
            n1.events
        );
        assert_eq!(
            n1.claimed, 0,
            "a hand-over counts as no split and no conflict"
        );
    }

    #[test]
    fn a_never_announced_ip_is_probed_for_the_whole_window() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let first = n1.own(Start::Probe, t0);
        assert_eq!(first.len(), 1);
        let plan = ProbePlan::default();
        let mut now = t0;
        while let Some(at) = n1.life.next_deadline(now) {
            if n1.answers() {
                break;
            }
            now = at;
            n1.apply(Input::Tick, now);
        }
        assert!(n1.answers());
        assert_eq!(now, t0 + plan.window());
    }

    #[test]
    fn marks_trail_every_claim_and_announcements_are_marked() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        let frames = n1.own(Start::Now, t0);
        assert_eq!(frames.len(), 2, "both gratuitous forms");
        for frame in &frames {
            let parsed = wire::parse_frame(frame).unwrap();
            assert!(matches!(parsed, Frame::Arp { .. }));
            let trailer = mark::trailer(frame, &parsed);
            assert_eq!(
                marker().open(n1.mac, VIP.into(), trailer),
                Some(standing("n1"))
            );
        }
        let owned = &n1.answer["eth0"];
        assert!(
            owned.answering[&IpAddr::V4(VIP)].is_some(),
            "replies are marked too"
        );
    }

    #[test]
    fn a_new_standing_or_mac_seals_the_claims_again() {
        let t0 = Instant::now();
        let mut n1 = Node::new("n1", 1, Some(marker()), t0);
        n1.own(Start::Now, t0);
        let mark = |n: &Node| n.answer["eth0"].answering[&IpAddr::V4(VIP)].unwrap();
        let first = mark(&n1);
        // The Service's first IP changed: another election key, another standing.
        let other = Standing::of("n1", ElectionKey("10.250.0.101".parse().unwrap()));
        let intent = Intent {
            interfaces: vec![],
            start: Start::Now,
            standing: Some(other),
        };
        n1.apply(Input::Owned([(VIP.into(), intent)].into()), t0 + MS);
        assert_ne!(mark(&n1), first);
        assert_eq!(marker().open(n1.mac, VIP.into(), &mark(&n1)), Some(other));
        // The interface got another MAC.
        let mut relinked = link("eth0", 1);
        relinked.mac = Some(MacAddr([2, 0, 0, 0, 0, 0x41]));
        n1.apply(Input::Links(vec![relinked]), t0 + MS * 2);
        assert_eq!(
            marker().open(MacAddr([2, 0, 0, 0, 0, 0x41]), VIP.into(), &mark(&n1)),
            Some(other)
        );
    }

    #[test]
    fn without_an_interface_nothing_is_sent_until_one_appears() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(Plans::default(), ExcludePatterns::default(), None);
        let intent = Intent {
            interfaces: vec!["eth1".into()],
            start: Start::Now,
            standing: None,
        };
        let out = life.step(Input::Owned([(VIP.into(), intent)].into()), t0);
        assert!(out.contains(&Effect::Event(Event::Wire {
            ip: VIP.into(),
            wire: Wire::NoInterface
        })));
        let out = life.step(Input::Links(vec![link("eth1", 5)]), t0 + MS);
        assert!(out.iter().any(|e| matches!(e, Effect::Send { .. })));
        assert!(life.answered().contains(&IpAddr::V4(VIP)));
    }
}
