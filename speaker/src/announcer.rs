//! The layer-2 announcer: responder threads (per interface, one per CPU, see
//! [`socket::open_per_cpu`]) answering ARP and NDP for the IPs this node owns, and one control
//! thread that carries out what the [`Lifecycle`] of the owned IPs decides: probes, checks,
//! gratuitous announcements, what each interface answers, and the events. Callers only say which
//! IPs are owned and which links exist.
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
use std::time::Instant;

use arc_swap::ArcSwap;
use ferrolb_proto::wire::mark::Marker;
use ferrolb_proto::wire::{MacAddr, solicited_node};
use tracing::{debug, info, trace, warn};

use crate::conflict::ProbePlan;
use crate::gratuitous::GratuitousPlan;
use crate::interfaces::{self, ExcludePatterns, Link};
use crate::kernel_arp::KernelArp;
use crate::lifecycle::{self, CheckPlan, Effect, Input, Lifecycle, Plans, Purpose, Wire};
use crate::responder::{self, Claim, OwnedIps};
use crate::scheduling;
use crate::socket::{self, PacketSocket, SocketControl};

pub use crate::lifecycle::{Intent, Start};

/// Everything the announcer can be tuned with; the defaults suit a home lab.
#[derive(Debug, Clone, Default)]
pub struct AnnouncerConfig {
    pub exclude: ExcludePatterns,
    pub gratuitous: GratuitousPlan,
    pub probe: ProbePlan,
    pub check: CheckPlan,
    /// Let the kernel skip the ARP requests the speaker answers ([`crate::kernel_arp`]).
    pub kernel_arp: bool,
    /// Seals this node's claims and recognises other speakers' ([`ferrolb_proto::wire::mark`]);
    /// without it every other claim counts as a foreign host's.
    pub marker: Option<Marker>,
}

/// What the announcer tells its caller (for Events, metrics and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// What happened to an owned IP.
    Ip(lifecycle::Event),
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
    /// Claim frames of foreign stations on the IP.
    pub conflicts: u64,
    /// Claim frames of other speakers of this cluster on the IP (a split membership).
    pub splits: u64,
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
    splits: AtomicU64,
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
                        splits: load(&c.splits),
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
    Leaving,
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
        let plans = Plans {
            probe: config.probe,
            check: config.check,
            gratuitous: config.gratuitous,
        };
        let mut control = Control {
            lifecycle: Lifecycle::new(plans, config.exclude.clone(), config.marker),
            exclude: config.exclude,
            kernel_arp: KernelArp::start(config.kernel_arp),
            answered_v4: BTreeSet::new(),
            links: Vec::new(),
            answer: BTreeMap::new(),
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
    /// answered at once (the next frame already sees the new set); a new one is probed, checked
    /// or announced right away, as its [`Intent`] says.
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

    /// This node is leaving: each IP stops being answered as soon as another speaker of the
    /// cluster claims it (its successor has announced), and by [`shutdown`](Self::shutdown)
    /// at the latest.
    pub fn leaving(&self) {
        let _ = self.tx.send(Msg::Leaving);
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
            .keys()
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

/// The control thread: the lifecycle, and the sockets, counters and kernel table it drives.
struct Control {
    lifecycle: Lifecycle,
    exclude: ExcludePatterns,
    kernel_arp: KernelArp,
    /// The IPv4 addresses last given to `kernel_arp`.
    answered_v4: BTreeSet<Ipv4Addr>,
    links: Vec<Link>,
    /// What each interface answers, as the lifecycle last said.
    answer: BTreeMap<String, OwnedIps>,
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
            let msg = match self.lifecycle.next_deadline(now) {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let input = match msg {
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => Input::Tick,
                Ok(Msg::Links(links)) => {
                    self.links.clone_from(&links);
                    self.failed.clear();
                    Input::Links(links)
                }
                Ok(Msg::Owned(intents)) => Input::Owned(intents),
                Ok(Msg::Reannounce) => Input::Reannounce,
                Ok(Msg::Leaving) => Input::Leaving,
                Ok(Msg::Claim { iface, claim }) => Input::Claim { iface, claim },
                Ok(Msg::ResponderFailed { iface, error }) => {
                    warn!(%iface, %error, "responder failed; retrying when the links change");
                    if let Some(responder) = self.responders.remove(&iface) {
                        responder.close(false);
                    }
                    self.failed.insert(iface.clone());
                    self.emit(Event::ResponderFailed { iface, error });
                    continue;
                }
            };
            let links_changed = matches!(input, Input::Links(_));
            let effects = self.lifecycle.step(input, Instant::now());
            let answered = effects.iter().any(|e| matches!(e, Effect::Answer(_)));
            for effect in effects {
                self.carry_out(effect);
            }
            if links_changed && !answered {
                self.sync_responders();
            }
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

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the caller chose not to watch.
        let _ = self.events.send(event);
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Send {
                iface,
                ip,
                purpose,
                frame,
            } => {
                let Some(responder) = self.responders.get(&iface) else {
                    return;
                };
                let what = match purpose {
                    Purpose::Probe => "probe",
                    Purpose::Gratuitous => "gratuitous announcement",
                };
                match responder.control.send(&frame) {
                    Ok(()) => {
                        if purpose == Purpose::Gratuitous {
                            let counters = self.registry.ip(ip);
                            counters.gratuitous.fetch_add(1, Ordering::Relaxed);
                        }
                        trace!(%ip, %iface, "sent a {what}");
                    }
                    Err(error) => warn!(%ip, %iface, %error, "sending a {what}"),
                }
            }
            Effect::Answer(answer) => {
                self.answer = answer;
                self.sync_responders();
            }
            Effect::Claimed { ip, split } => {
                let counters = self.registry.ip(ip);
                let counter = if split {
                    &counters.splits
                } else {
                    &counters.conflicts
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Effect::Event(event) => {
                log(&event);
                self.emit(Event::Ip(event));
            }
        }
    }

    /// Opens and closes responders to match what each interface answers, and hands each its
    /// new snapshot.
    fn sync_responders(&mut self) {
        let answered_v4: BTreeSet<Ipv4Addr> = self
            .answer
            .values()
            .flat_map(|owned| owned.answering.keys())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if answered_v4 != self.answered_v4 {
            self.kernel_arp.set(answered_v4.clone());
            self.answered_v4 = answered_v4;
        }
        let eligible = interfaces::eligible(&self.links, &self.exclude);
        let current = |name: &str| eligible.iter().find(|link| link.name == name).copied();

        let stale: Vec<String> = self
            .responders
            .iter()
            .filter(|(name, responder)| {
                !self.answer.contains_key(*name) || current(name) != Some(&responder.link)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(responder) = self.responders.remove(&name) {
                info!(iface = %name, "closing responder");
                responder.close(false);
            }
        }
        for (name, owned) in &self.answer {
            if !self.responders.contains_key(name) && !self.failed.contains(name) {
                let Some(link) = current(name) else { continue };
                match open(link, &self.msgs, &self.registry) {
                    Ok(responder) => {
                        info!(iface = %name, index = link.index, mac = %responder.mac, "responder listening");
                        self.responders.insert(name.clone(), responder);
                    }
                    Err(error) => {
                        warn!(iface = %name, %error, "cannot open the responder socket");
                        self.failed.insert(name.clone());
                        let _ = self.events.send(Event::ResponderFailed {
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
                    .keys()
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
}

/// One log line per event of an owned IP.
fn log(event: &lifecycle::Event) {
    match event {
        lifecycle::Event::Wire { ip, wire } => match wire {
            Wire::Answering { interfaces } => {
                info!(%ip, ?interfaces, "answering and announcing")
            }
            Wire::Probing => info!(%ip, "probing before announcing"),
            Wire::Held { by } => {
                warn!(%ip, holder = %by, "not answering: another speaker of this cluster with a better standing answers it (a split membership); checking again")
            }
            Wire::Conflicted { mac } => {
                warn!(%ip, %mac, "IP conflict: another host answers for this IP; not announcing it, probing again later")
            }
            Wire::NoInterface => warn!(%ip, "no eligible interface to announce on"),
            Wire::HandedOver => {
                info!(%ip, "handed over: the successor announced it, no longer answering")
            }
        },
        lifecycle::Event::Conflict {
            ip,
            iface,
            mac,
            evidence,
            announced: true,
        } => {
            warn!(%ip, %iface, %mac, %evidence, "IP conflict: another host claims an IP this node announces")
        }
        lifecycle::Event::Conflict { .. } => {}
        lifecycle::Event::Split {
            ip,
            iface,
            mac,
            kept,
        } => {
            if *kept {
                warn!(%ip, %iface, %mac, "split: another speaker of this cluster claims this IP too; this node's standing is better, it keeps the IP and announces again")
            } else {
                warn!(%ip, %iface, %mac, "split: another speaker of this cluster with a better standing claims this IP; this node yields it")
            }
        }
    }
}

fn open(
    link: &Link,
    msgs: &mpsc::Sender<Msg>,
    registry: &Arc<Registry>,
) -> Result<Responder, socket::SocketError> {
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
            msgs: msgs.clone(),
            counters: registry.iface(&link.name),
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
