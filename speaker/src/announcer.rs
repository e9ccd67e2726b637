//! The layer-2 announcer: responder threads (per interface, one per CPU, see
//! [`socket::open_per_cpu`]) answering ARP and NDP for the IPs this node owns, and one control
//! thread that probes new IPs, sends gratuitous announcements and reports conflicts. Callers
//! only say which IPs are owned and which links exist.
//!
//! The responders read the owned set from an `ArcSwap` snapshot, so the per-frame path takes
//! no lock; everything else goes through the control thread's channel. A responder blocks in
//! `recv` and answers with `send` on the same socket, on its own thread (a task would add a
//! reactor hop to every reply); the events come out on a Tokio channel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ferrolb_proto::wire::{MacAddr, solicited_node};
use tracing::{debug, info, trace, warn};

use crate::conflict::{self, Probe, ProbeOutcome, ProbePlan, ProbeStep};
use crate::gratuitous::{self, Burst, GratuitousPlan};
use crate::interfaces::{self, ExcludePatterns, Link};
use crate::kernel_arp::KernelArp;
use crate::responder::{self, Claim, Evidence, OwnedIps};
use crate::scheduling;
use crate::socket::{self, PacketSocket, SocketControl};

/// Everything the announcer can be tuned with; the defaults suit a home lab.
#[derive(Debug, Clone, Default)]
pub struct AnnouncerConfig {
    pub exclude: ExcludePatterns,
    pub gratuitous: GratuitousPlan,
    pub probe: ProbePlan,
    /// Let the kernel skip the ARP requests the speaker answers ([`crate::kernel_arp`]).
    pub kernel_arp: bool,
}

/// How one owned IP is to be announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// The advertisement's `interfaces`: empty means every eligible interface.
    pub interfaces: Vec<String>,
    /// Probe for another holder before the first announcement. The caller sets it for an IP the
    /// cluster has never announced; a takeover of an announced IP must not wait for a probe.
    pub probe_first: bool,
}

/// What the announcer tells its caller (for Events, metrics and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Now answering for `ip` on these interfaces, and announcing it.
    Announcing { ip: IpAddr, interfaces: Vec<String> },
    /// Another station claims `ip`. `announced` false: found by the probe, so the IP is not
    /// announced (probed again later); true: seen while we own and announce it.
    Conflict {
        ip: IpAddr,
        iface: String,
        mac: MacAddr,
        evidence: Evidence,
        announced: bool,
    },
    /// None of the requested interfaces exists or is eligible: nothing is sent for `ip`.
    NoInterface { ip: IpAddr, wanted: Vec<String> },
    /// The responder of `iface` failed; it is retried when the links change.
    ResponderFailed { iface: String, error: String },
}

/// The stream of [`Event`]s; drain it, it is unbounded.
pub type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// Counters of one IP since the announcer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpStats {
    pub requests_received: u64,
    pub replies_sent: u64,
    pub gratuitous_sent: u64,
    pub conflicts: u64,
}

/// Counters of one interface's responder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// ARP/NDP frames that failed to parse, dropped.
    pub malformed_frames: u64,
    pub send_errors: u64,
}

/// A copy of every counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub ips: BTreeMap<IpAddr, IpStats>,
    pub interfaces: BTreeMap<String, InterfaceStats>,
}

#[derive(Debug, Default)]
struct IpCounters {
    requests: AtomicU64,
    replies: AtomicU64,
    gratuitous: AtomicU64,
    conflicts: AtomicU64,
}

#[derive(Debug, Default)]
struct IfaceCounters {
    malformed: AtomicU64,
    send_errors: AtomicU64,
}

/// Counters outlive ownership, so that they only ever grow (as Prometheus counters must).
#[derive(Debug, Default)]
struct Registry {
    ips: Mutex<BTreeMap<IpAddr, Arc<IpCounters>>>,
    ifaces: Mutex<BTreeMap<String, Arc<IfaceCounters>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps only ever gain entries; a panic elsewhere leaves them valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    fn ip(&self, ip: IpAddr) -> Arc<IpCounters> {
        Arc::clone(lock(&self.ips).entry(ip).or_default())
    }

    fn iface(&self, name: &str) -> Arc<IfaceCounters> {
        Arc::clone(lock(&self.ifaces).entry(name.to_owned()).or_default())
    }

    fn stats(&self) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            ips: lock(&self.ips)
                .iter()
                .map(|(ip, c)| {
                    let stats = IpStats {
                        requests_received: load(&c.requests),
                        replies_sent: load(&c.replies),
                        gratuitous_sent: load(&c.gratuitous),
                        conflicts: load(&c.conflicts),
                    };
                    (*ip, stats)
                })
                .collect(),
            interfaces: lock(&self.ifaces)
                .iter()
                .map(|(name, c)| {
                    let stats = InterfaceStats {
                        malformed_frames: load(&c.malformed),
                        send_errors: load(&c.send_errors),
                    };
                    (name.clone(), stats)
                })
                .collect(),
        }
    }
}

enum Msg {
    Links(Vec<Link>),
    Owned(BTreeMap<IpAddr, Intent>),
    Reannounce,
    Claim { iface: String, claim: Claim },
    ResponderFailed { iface: String, error: String },
    Shutdown,
}

/// The handle the rest of the speaker drives. Dropping it stops every responder.
#[derive(Debug)]
pub struct Announcer {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    registry: Arc<Registry>,
    /// The owned IPs, for whoever acts on ownership besides answering ([`crate::local_vips`]);
    /// closed once the announcer has stopped answering.
    owned: tokio::sync::watch::Sender<BTreeSet<IpAddr>>,
}

impl Announcer {
    /// Starts the control thread. Nothing is answered until both [`set_links`](Self::set_links)
    /// and [`set_owned`](Self::set_owned) have been called.
    pub fn start(config: AnnouncerConfig) -> std::io::Result<(Announcer, Events)> {
        let (tx, rx) = mpsc::channel();
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let registry = Arc::new(Registry::default());
        let kernel_arp = KernelArp::start(config.kernel_arp);
        let mut control = Control {
            config,
            kernel_arp,
            answered_v4: BTreeSet::new(),
            links: Vec::new(),
            intents: BTreeMap::new(),
            ips: BTreeMap::new(),
            responders: BTreeMap::new(),
            failed: BTreeSet::new(),
            msgs: tx.clone(),
            events: events_tx,
            registry: Arc::clone(&registry),
        };
        let thread = thread::Builder::new()
            .name("ferrolb-announcer".to_owned())
            .spawn(move || control.run(&rx))?;
        Ok((
            Announcer {
                tx,
                thread: Some(thread),
                registry,
                owned: tokio::sync::watch::Sender::new(BTreeSet::new()),
            },
            events,
        ))
    }

    /// Every link of the node, as [`interfaces::watch`] reports them; the announcer keeps the
    /// eligible ones and opens, closes or reopens responders to match.
    pub fn set_links(&self, links: Vec<Link>) {
        let _ = self.tx.send(Msg::Links(links));
    }

    /// The IPs this node owns now, replacing the previous set. An IP left out stops being
    /// answered at once (the next frame already sees the new set); a new one is probed or
    /// announced right away.
    pub fn set_owned(&self, owned: BTreeMap<IpAddr, Intent>) {
        let ips: BTreeSet<IpAddr> = owned.keys().copied().collect();
        let _ = self.tx.send(Msg::Owned(owned));
        self.owned.send_if_modified(|current| {
            let changed = *current != ips;
            *current = ips;
            changed
        });
    }

    /// Follows the owned IPs as [`set_owned`](Self::set_owned) sets them; the sender closes
    /// after [`shutdown`](Self::shutdown) has stopped every responder.
    pub fn owned(&self) -> tokio::sync::watch::Receiver<BTreeSet<IpAddr>> {
        self.owned.subscribe()
    }

    /// Starts a fresh gratuitous burst for every IP being announced: for when stations may
    /// have learned another MAC meanwhile (a healed partition, where the other side's owner
    /// announced too).
    pub fn reannounce(&self) {
        let _ = self.tx.send(Msg::Reannounce);
    }

    pub fn stats(&self) -> Stats {
        self.registry.stats()
    }

    /// Stops answering everywhere and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(Msg::Shutdown);
            let _ = thread.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a responder reads on every frame.
#[derive(Debug, Default)]
struct Snapshot {
    owned: OwnedIps,
    counters: BTreeMap<IpAddr, Arc<IpCounters>>,
}

/// One interface's responder threads (one per CPU) and the control thread's handles on them.
struct Responder {
    link: Link,
    mac: MacAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    control: SocketControl,
    groups: BTreeSet<MacAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Stops answering at once, then lets the threads end within one read timeout.
    fn close(self, wait: bool) {
        self.snapshot.store(Arc::new(Snapshot::default()));
        self.stop.store(true, Ordering::Relaxed);
        if wait {
            for thread in self.threads {
                let _ = thread.join();
            }
        }
    }

    /// Joins the solicited-node groups of the IPv6 addresses in `owned`, leaves the others.
    fn sync_groups(&mut self, owned: &OwnedIps) {
        let wanted: BTreeSet<MacAddr> = owned
            .answering
            .iter()
            .chain(&owned.probing)
            .filter_map(|ip| match ip {
                IpAddr::V6(ip) => Some(MacAddr::ipv6_multicast(solicited_node(*ip))),
                IpAddr::V4(_) => None,
            })
            .collect();
        for group in wanted.difference(&self.groups) {
            if let Err(error) = self.control.join(*group) {
                warn!(iface = %self.link.name, %group, %error, "joining a solicited-node group");
            }
        }
        for group in self.groups.difference(&wanted) {
            if let Err(error) = self.control.leave(*group) {
                debug!(iface = %self.link.name, %group, %error, "leaving a solicited-node group");
            }
        }
        self.groups = wanted;
    }
}

#[derive(Debug)]
enum Phase {
    /// No selected interface exists.
    NoInterface,
    Probing(Probe),
    /// Answering on each interface, with its gratuitous schedule.
    Announcing(BTreeMap<String, Burst>),
    /// A probe found another holder; probe again at `recheck_at`.
    Conflicted {
        recheck_at: Instant,
    },
}

#[derive(Debug)]
struct IpState {
    ifaces: Vec<String>,
    phase: Phase,
    last_conflict_report: Option<Instant>,
    /// The first claim seen during the current probe, for the conflict event.
    probe_claim: Option<(String, Claim)>,
}

/// The same conflict seen while owning is reported at most this often (a conflicting host may
/// announce every second; each frame is still counted).
const CONFLICT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

struct Control {
    config: AnnouncerConfig,
    kernel_arp: KernelArp,
    /// The IPv4 addresses last given to `kernel_arp`.
    answered_v4: BTreeSet<Ipv4Addr>,
    links: Vec<Link>,
    intents: BTreeMap<IpAddr, Intent>,
    ips: BTreeMap<IpAddr, IpState>,
    responders: BTreeMap<String, Responder>,
    /// Interfaces whose responder failed: not retried until the links change.
    failed: BTreeSet<String>,
    msgs: mpsc::Sender<Msg>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    registry: Arc<Registry>,
}

impl Control {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            let now = Instant::now();
            let msg = match self.next_deadline(now) {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.tick(Instant::now());
        }
        let responders = std::mem::take(&mut self.responders);
        // Silence every interface first, then wait for the threads.
        for responder in responders.values() {
            responder.snapshot.store(Arc::new(Snapshot::default()));
        }
        for responder in responders.into_values() {
            responder.close(true);
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Links(links) => {
                self.links = links;
                self.failed.clear();
                self.reconcile(now);
            }
            Msg::Owned(intents) => {
                self.intents = intents;
                self.reconcile(now);
            }
            Msg::Reannounce => {
                for state in self.ips.values_mut() {
                    if let Phase::Announcing(bursts) = &mut state.phase {
                        for burst in bursts.values_mut() {
                            *burst = Burst::new(now);
                        }
                    }
                }
            }
            Msg::Claim { iface, claim } => self.claimed(&iface, claim, now),
            Msg::ResponderFailed { iface, error } => {
                warn!(%iface, %error, "responder failed; retrying when the links change");
                if let Some(responder) = self.responders.remove(&iface) {
                    responder.close(false);
                }
                self.failed.insert(iface.clone());
                self.emit(Event::ResponderFailed { iface, error });
            }
            Msg::Shutdown => {}
        }
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the caller chose not to watch.
        let _ = self.events.send(event);
    }

    /// Brings the per-IP states in line with the intents and links, then the responders.
    fn reconcile(&mut self, now: Instant) {
        let eligible: Vec<&Link> = interfaces::eligible(&self.links, &self.config.exclude);
        let gone: Vec<IpAddr> = self
            .ips
            .keys()
            .filter(|ip| !self.intents.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            self.ips.remove(&ip);
            info!(%ip, "no longer owned: stopped answering");
        }
        let mut events = Vec::new();
        for (ip, intent) in &self.intents {
            let ifaces: Vec<String> = interfaces::select(&eligible, &intent.interfaces)
                .iter()
                .map(|link| link.name.clone())
                .collect();
            let ip = *ip;
            match self.ips.get_mut(&ip) {
                None => {
                    let phase = start(ip, intent, &ifaces, now, &mut events);
                    self.ips.insert(
                        ip,
                        IpState {
                            ifaces,
                            phase,
                            last_conflict_report: None,
                            probe_claim: None,
                        },
                    );
                }
                Some(state) if state.ifaces != ifaces => {
                    state.ifaces.clone_from(&ifaces);
                    match &mut state.phase {
                        _ if ifaces.is_empty() => {
                            state.phase = start(ip, intent, &ifaces, now, &mut events);
                        }
                        Phase::NoInterface => {
                            state.phase = start(ip, intent, &ifaces, now, &mut events);
                        }
                        Phase::Announcing(bursts) => {
                            bursts.retain(|iface, _| ifaces.contains(iface));
                            for iface in &ifaces {
                                if !bursts.contains_key(iface) {
                                    info!(%ip, %iface, "announcing on a new interface");
                                    bursts.insert(iface.clone(), Burst::new(now));
                                }
                            }
                        }
                        // Probes go to whatever interfaces the IP has when they are sent.
                        Phase::Probing(_) | Phase::Conflicted { .. } => {}
                    }
                }
                Some(_) => {}
            }
        }
        for event in events {
            self.emit(event);
        }
        self.publish();
    }

    /// Opens and closes responders and hands each its new snapshot.
    fn publish(&mut self) {
        let mut wanted: BTreeMap<String, OwnedIps> = BTreeMap::new();
        for (ip, state) in &self.ips {
            match &state.phase {
                Phase::Probing(_) => {
                    for iface in &state.ifaces {
                        wanted.entry(iface.clone()).or_default().probing.insert(*ip);
                    }
                }
                Phase::Announcing(bursts) => {
                    for iface in bursts.keys() {
                        wanted
                            .entry(iface.clone())
                            .or_default()
                            .answering
                            .insert(*ip);
                    }
                }
                Phase::NoInterface | Phase::Conflicted { .. } => {}
            }
        }
        let answered_v4: BTreeSet<Ipv4Addr> = wanted
            .values()
            .flat_map(|owned| &owned.answering)
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if answered_v4 != self.answered_v4 {
            self.kernel_arp.set(answered_v4.clone());
            self.answered_v4 = answered_v4;
        }
        let eligible = interfaces::eligible(&self.links, &self.config.exclude);
        let current = |name: &str| eligible.iter().find(|link| link.name == name).copied();

        let stale: Vec<String> = self
            .responders
            .iter()
            .filter(|(name, responder)| {
                !wanted.contains_key(*name) || current(name) != Some(&responder.link)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(responder) = self.responders.remove(&name) {
                info!(iface = %name, "closing responder");
                responder.close(false);
            }
        }
        for (name, owned) in &wanted {
            if !self.responders.contains_key(name) && !self.failed.contains(name) {
                let Some(link) = current(name) else { continue };
                match self.open(link) {
                    Ok(responder) => {
                        info!(iface = %name, index = link.index, mac = %responder.mac, "responder listening");
                        self.responders.insert(name.clone(), responder);
                    }
                    Err(error) => {
                        warn!(iface = %name, %error, "cannot open the responder socket");
                        self.failed.insert(name.clone());
                        self.emit(Event::ResponderFailed {
                            iface: name.clone(),
                            error: error.to_string(),
                        });
                    }
                }
            }
            if let Some(responder) = self.responders.get_mut(name)
                && responder.snapshot.load().owned != *owned
            {
                let counters = owned
                    .answering
                    .iter()
                    .map(|ip| (*ip, self.registry.ip(*ip)))
                    .collect();
                // Groups first: a solicitation arriving right after the swap is received.
                responder.sync_groups(owned);
                responder.snapshot.store(Arc::new(Snapshot {
                    owned: owned.clone(),
                    counters,
                }));
            }
        }
    }

    fn open(&self, link: &Link) -> Result<Responder, socket::SocketError> {
        let channels = socket::open_per_cpu(link, socket::online_cpus())?;
        if let Some(why) = &channels.fallback {
            debug!(iface = %link.name, error = %why, "one responder socket for every CPU");
        }
        let pinned = channels.sockets.len() > 1;
        let mac = link.mac.unwrap_or_default();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(channels.sockets.len());
        for (cpu, socket) in channels.sockets.into_iter().enumerate() {
            let worker = Worker {
                iface: link.name.clone(),
                cpu: pinned.then_some(cpu),
                mac,
                snapshot: Arc::clone(&snapshot),
                stop: Arc::clone(&stop),
                msgs: self.msgs.clone(),
                counters: self.registry.iface(&link.name),
            };
            let spawned = thread::Builder::new()
                .name(format!("ferrolb-rx-{}", link.name))
                .spawn(move || worker.run(&socket));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(source) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(socket::SocketError {
                        iface: link.name.clone(),
                        step: "starting a responder thread",
                        source,
                    });
                }
            }
        }
        Ok(Responder {
            link: link.clone(),
            mac,
            snapshot,
            control: channels.control,
            groups: BTreeSet::new(),
            stop,
            threads,
        })
    }

    fn claimed(&mut self, iface: &str, claim: Claim, now: Instant) {
        let Some(state) = self.ips.get_mut(&claim.ip) else {
            return;
        };
        let counters = self.registry.ip(claim.ip);
        match &mut state.phase {
            Phase::Probing(probe) => {
                probe.observe(claim.mac);
                state.probe_claim.get_or_insert((iface.to_owned(), claim));
            }
            Phase::Announcing(_) => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                if state
                    .last_conflict_report
                    .is_some_and(|at| now.duration_since(at) < CONFLICT_REPORT_INTERVAL)
                {
                    return;
                }
                state.last_conflict_report = Some(now);
                warn!(ip = %claim.ip, %iface, mac = %claim.mac, evidence = %claim.evidence,
                    "IP conflict: another host claims an IP this node announces");
                self.emit(Event::Conflict {
                    ip: claim.ip,
                    iface: iface.to_owned(),
                    mac: claim.mac,
                    evidence: claim.evidence,
                    announced: true,
                });
            }
            Phase::NoInterface | Phase::Conflicted { .. } => {}
        }
    }

    /// Runs every timer that is due: probes, their verdicts, announcements, re-checks.
    fn tick(&mut self, now: Instant) {
        let mut changed = false;
        let mut events = Vec::new();
        for (ip, state) in &mut self.ips {
            let ip = *ip;
            match &mut state.phase {
                Phase::Probing(probe) => loop {
                    match probe.poll(now, &self.config.probe) {
                        ProbeStep::Send => {
                            for iface in &state.ifaces {
                                if let Some(responder) = self.responders.get(iface) {
                                    let frame = conflict::probe_frame(ip, responder.mac);
                                    send(responder, &frame, ip, "probe");
                                }
                            }
                        }
                        ProbeStep::WaitUntil(_) => break,
                        ProbeStep::Done(ProbeOutcome::Free) => {
                            info!(%ip, interfaces = ?state.ifaces, "probe found the IP free: announcing");
                            state.phase = announcing(ip, &state.ifaces, now, &mut events);
                            changed = true;
                            break;
                        }
                        ProbeStep::Done(ProbeOutcome::Taken { mac }) => {
                            let recheck = self.config.probe.recheck;
                            let (iface, evidence) = match state.probe_claim.take() {
                                Some((iface, claim)) => (iface, claim.evidence),
                                None => (state.ifaces.join(","), Evidence::ArpReply),
                            };
                            warn!(%ip, %iface, %mac, %evidence, recheck_in = ?recheck,
                                "IP conflict: another host answers for this IP; not announcing it");
                            self.registry
                                .ip(ip)
                                .conflicts
                                .fetch_add(1, Ordering::Relaxed);
                            events.push(Event::Conflict {
                                ip,
                                iface,
                                mac,
                                evidence,
                                announced: false,
                            });
                            state.phase = Phase::Conflicted {
                                recheck_at: now + recheck,
                            };
                            changed = true;
                            break;
                        }
                    }
                },
                Phase::Announcing(bursts) => {
                    for (iface, burst) in bursts.iter_mut() {
                        if burst
                            .next_due(&self.config.gratuitous)
                            .is_none_or(|due| due > now)
                        {
                            continue;
                        }
                        burst.mark_sent();
                        let Some(responder) = self.responders.get(iface) else {
                            continue;
                        };
                        let counters = self.registry.ip(ip);
                        for frame in gratuitous::frames(ip, responder.mac) {
                            if send(responder, &frame, ip, "gratuitous announcement") {
                                counters.gratuitous.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        debug!(%ip, %iface, n = burst.sent(), "gratuitous announcement sent");
                    }
                }
                Phase::Conflicted { recheck_at } if now >= *recheck_at => {
                    info!(%ip, "probing again an IP found taken");
                    state.probe_claim = None;
                    state.phase = Phase::Probing(Probe::new(now));
                    changed = true;
                }
                Phase::Conflicted { .. } | Phase::NoInterface => {}
            }
        }
        for event in events {
            self.emit(event);
        }
        if changed {
            self.publish();
            // A phase that just started may have something due now (the first probe or
            // announcement): run it without waiting for the next message.
            self.tick(Instant::now());
        }
    }

    /// The earliest timer, if any.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.ips
            .values()
            .filter_map(|state| match &state.phase {
                Phase::Probing(probe) => {
                    let mut probe = *probe;
                    match probe.poll(now, &self.config.probe) {
                        ProbeStep::WaitUntil(at) => Some(at),
                        ProbeStep::Send | ProbeStep::Done(_) => Some(now),
                    }
                }
                Phase::Announcing(bursts) => bursts
                    .values()
                    .filter_map(|burst| burst.next_due(&self.config.gratuitous))
                    .min(),
                Phase::Conflicted { recheck_at } => Some(*recheck_at),
                Phase::NoInterface => None,
            })
            .min()
    }
}

/// The phase an IP starts in: nothing without interfaces, a probe if asked, else announcing.
fn start(
    ip: IpAddr,
    intent: &Intent,
    ifaces: &[String],
    now: Instant,
    events: &mut Vec<Event>,
) -> Phase {
    if ifaces.is_empty() {
        warn!(%ip, wanted = ?intent.interfaces, "no eligible interface to announce on");
        events.push(Event::NoInterface {
            ip,
            wanted: intent.interfaces.clone(),
        });
        Phase::NoInterface
    } else if intent.probe_first {
        info!(%ip, interfaces = ?ifaces, "probing before the first announcement");
        Phase::Probing(Probe::new(now))
    } else {
        announcing(ip, ifaces, now, events)
    }
}

fn announcing(ip: IpAddr, ifaces: &[String], now: Instant, events: &mut Vec<Event>) -> Phase {
    info!(%ip, interfaces = ?ifaces, "owned: answering and announcing");
    events.push(Event::Announcing {
        ip,
        interfaces: ifaces.to_vec(),
    });
    Phase::Announcing(
        ifaces
            .iter()
            .map(|iface| (iface.clone(), Burst::new(now)))
            .collect(),
    )
}

fn send(responder: &Responder, frame: &[u8], ip: IpAddr, what: &str) -> bool {
    match responder.control.send(frame) {
        Ok(()) => true,
        Err(error) => {
            warn!(%ip, iface = %responder.link.name, %error, "sending a {what}");
            false
        }
    }
}

/// One responder loop of an interface, on its own thread.
struct Worker {
    iface: String,
    /// The CPU whose frames its socket receives, to run on.
    cpu: Option<usize>,
    mac: MacAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    stop: Arc<AtomicBool>,
    msgs: mpsc::Sender<Msg>,
    counters: Arc<IfaceCounters>,
}

impl Worker {
    fn run(self, socket: &PacketSocket) {
        use std::io::ErrorKind;
        // Larger than any ARP or neighbour discovery frame; a longer one is cut and then
        // rejected as malformed or ignored.
        let mut buf = vec![0u8; 4096];
        match scheduling::prioritise_responder_thread() {
            Ok(got) => debug!(iface = %self.iface, nice = got.nice, slice = ?got.slice,
                "responder thread scheduling (nice -10 needs CAP_SYS_NICE; a slice needs Linux 6.12)"),
            Err(error) => debug!(iface = %self.iface, %error,
                "responder keeps the default scheduling"),
        }
        if let Some(cpu) = self.cpu
            && let Err(error) = scheduling::pin_thread_to_cpu(cpu)
        {
            debug!(iface = %self.iface, cpu, %error, "responder not pinned (CPU outside the allowed set)");
        }
        while !self.stop.load(Ordering::Relaxed) {
            let frame = match socket.recv(&mut buf) {
                Ok(len) => buf.get(..len).unwrap_or_default(),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::Interrupted | ErrorKind::WouldBlock
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    if !self.stop.load(Ordering::Relaxed) {
                        let _ = self.msgs.send(Msg::ResponderFailed {
                            iface: self.iface.clone(),
                            error: format!("receiving: {e}"),
                        });
                    }
                    return;
                }
            };
            let snapshot = self.snapshot.load();
            let decision = match responder::decide(frame, &snapshot.owned, self.mac) {
                Ok(decision) => decision,
                Err(error) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    trace!(iface = %self.iface, %error, "dropped a malformed frame");
                    continue;
                }
            };
            if let Some(reply) = decision.reply {
                let counters = snapshot.counters.get(&reply.ip);
                if let Some(c) = counters {
                    c.requests.fetch_add(1, Ordering::Relaxed);
                }
                match socket.send(&reply.frame) {
                    Ok(()) => {
                        if let Some(c) = counters {
                            c.replies.fetch_add(1, Ordering::Relaxed);
                        }
                        trace!(ip = %reply.ip, iface = %self.iface, "answered");
                    }
                    Err(error) => {
                        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        debug!(ip = %reply.ip, iface = %self.iface, %error, "sending a reply");
                    }
                }
            }
            if let Some(claim) = decision.claim {
                let _ = self.msgs.send(Msg::Claim {
                    iface: self.iface.clone(),
                    claim,
                });
            }
        }
    }
}
