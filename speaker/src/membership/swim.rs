//! The SWIM membership state machine: pure and deterministic, driven by received packets and by
//! the passage of (caller-supplied) time, returning the datagrams to send and the membership
//! events that happened.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrolb_proto::gossip::{
    ENVELOPE_OVERHEAD, MAX_UPDATES, MemberRecord, MemberState, Message, Packet, Update,
};

use sha2::{Digest, Sha256};

use super::Config;
use super::rng::Rng;

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub name: String,
    pub address: SocketAddr,
    pub incarnation: u64,
    pub state: MemberState,
}

impl Member {
    /// Alive or suspect: still a candidate for owning IPs.
    pub fn is_live(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }
}

/// A change in membership, as this node learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined, or came back after being dead or gone.
    MemberUp(Member),
    /// `by` could not reach the member; it stays live until the suspicion times out.
    MemberSuspect {
        name: String,
        incarnation: u64,
        by: String,
    },
    /// A suspected member refuted the suspicion.
    MemberAlive { name: String, incarnation: u64 },
    /// A member was declared failed. `suspected_for`: how long this node had suspected it
    /// (none when the death was learned before any suspicion).
    MemberDead {
        name: String,
        incarnation: u64,
        suspected_for: Option<Duration>,
    },
    /// A member left gracefully.
    MemberLeft { name: String, incarnation: u64 },
    /// A dead or departed member was forgotten after `dead_retention`.
    MemberForgotten { name: String },
    /// This node heard it was suspected, dead or gone, and refuted with a higher incarnation.
    Refuted { incarnation: u64 },
}

/// What the state machine asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Seal and send `packet` to `to`.
    Send {
        to: SocketAddr,
        packet: Packet,
    },
    Event(Event),
}

#[derive(Debug, Clone)]
struct Entry {
    address: SocketAddr,
    incarnation: u64,
    state: MemberState,
    /// When the state last changed.
    since: Instant,
}

#[derive(Debug, Clone)]
struct Probe {
    target: String,
    seq: u32,
    started: Instant,
    indirect_sent: bool,
}

/// An out-of-turn ping to a member someone else suspects: if it fails too, this node confirms
/// the suspicion, which brings every timer to its minimum within one probe interval instead of
/// waiting for other members' regular turns. Only `indirect_checks` members check each
/// suspicion (see [`Swim::is_checker`]): if every hearer checked, one suspicion of a member
/// slowed by an overloaded CPU would cost the cluster O(n) pings and O(n) confirmations, whose
/// load slows more members: a storm that feeds itself.
#[derive(Debug, Clone)]
struct Check {
    target: String,
    seq: u32,
    deadline: Instant,
}

/// A ping this node sends on behalf of another member's indirect probe.
#[derive(Debug, Clone)]
struct Relay {
    seq: u32,
    requester: String,
    requester_address: SocketAddr,
    requester_seq: u32,
    expires: Instant,
}

/// Lifeguard's suspicion: the timeout starts at `max` and falls towards `min` as independent
/// confirmations arrive, so a member many others cannot reach is declared quickly while a lone
/// accuser (perhaps itself the slow one) waits longer.
#[derive(Debug, Clone)]
struct Suspicion {
    started: Instant,
    first_accuser: String,
    confirmations: BTreeSet<String>,
    expected: usize,
    min: Duration,
    max: Duration,
}

impl Suspicion {
    fn timeout(&self) -> Duration {
        let c = self.confirmations.len();
        if self.expected == 0 || c >= self.expected {
            return self.min;
        }
        let frac = ((c + 1) as f64).ln() / ((self.expected + 1) as f64).ln();
        let span = self.max.saturating_sub(self.min);
        self.max.saturating_sub(span.mul_f64(frac)).max(self.min)
    }

    fn deadline(&self) -> Instant {
        self.started + self.timeout()
    }
}

#[derive(Debug, Clone)]
struct Queued {
    update: Update,
    transmits: u32,
}

/// The SWIM protocol for one node. Feed it received packets with [`Swim::handle`] and call
/// [`Swim::tick`] at [`Swim::poll_at`] (or more often); send what it returns.
#[derive(Debug)]
pub struct Swim {
    config: Config,
    name: String,
    address: SocketAddr,
    incarnation: u64,
    epoch: u64,
    next_datagram: u64,
    next_seq: u32,
    leaving: bool,
    seeds: Vec<SocketAddr>,
    members: BTreeMap<String, Entry>,
    rng: Rng,
    probe_order: Vec<String>,
    probe_pos: usize,
    probe: Option<Probe>,
    relays: Vec<Relay>,
    checks: Vec<Check>,
    suspicions: BTreeMap<String, Suspicion>,
    queue: Vec<Queued>,
    next_probe: Instant,
    next_gossip: Instant,
    next_join: Instant,
    next_reconnect: Instant,
    next_push_pull: Instant,
    last_tick: Option<Instant>,
    /// When a member last answered this node (an ack, or a push-pull reply): proof that
    /// datagrams get through both ways.
    last_answer: Option<Instant>,
    out: Vec<Output>,
}

impl Swim {
    /// A node named `name`, reachable by its peers at `address`, started at boot `epoch` (must
    /// grow across restarts, e.g. unix millis), that joins through `seeds`. `rng_seed` fixes
    /// every random choice.
    pub fn new(
        name: impl Into<String>,
        address: SocketAddr,
        epoch: u64,
        seeds: Vec<SocketAddr>,
        config: Config,
        rng_seed: u64,
        now: Instant,
    ) -> Self {
        let name = name.into();
        let mut rng = Rng::new(rng_seed);
        // Spread the first probe over one interval so nodes started together do not probe in
        // lockstep.
        let first_probe = now + config.probe_interval.mul_f64(rng.unit());
        let mut swim = Swim {
            next_probe: first_probe,
            next_gossip: now,
            next_join: now,
            next_reconnect: now + config.reconnect_interval,
            next_push_pull: now + config.push_pull_interval,
            config,
            seeds: seeds.into_iter().filter(|s| *s != address).collect(),
            address,
            incarnation: 0,
            epoch,
            next_datagram: 0,
            next_seq: 0,
            leaving: false,
            members: BTreeMap::new(),
            rng,
            probe_order: Vec::new(),
            probe_pos: 0,
            probe: None,
            relays: Vec::new(),
            checks: Vec::new(),
            suspicions: BTreeMap::new(),
            queue: Vec::new(),
            last_tick: None,
            last_answer: None,
            out: Vec::new(),
            name,
        };
        swim.enqueue(swim.alive_update());
        swim
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// When a member last answered this node (an ack or a push-pull reply).
    pub fn last_answer(&self) -> Option<Instant> {
        self.last_answer
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every known member, this node included, by name.
    pub fn members(&self) -> Vec<Member> {
        let mut all: Vec<Member> = self
            .members
            .iter()
            .map(|(name, e)| Member {
                name: name.clone(),
                address: e.address,
                incarnation: e.incarnation,
                state: e.state,
            })
            .collect();
        all.push(self.me());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The state of `name` as this node sees it.
    pub fn state_of(&self, name: &str) -> Option<MemberState> {
        if name == self.name {
            return Some(self.me().state);
        }
        self.members.get(name).map(|e| e.state)
    }

    /// Live members (alive or suspect), this node included: the election's candidates.
    pub fn live(&self) -> Vec<Member> {
        self.members().into_iter().filter(Member::is_live).collect()
    }

    fn me(&self) -> Member {
        Member {
            name: self.name.clone(),
            address: self.address,
            incarnation: self.incarnation,
            state: if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            },
        }
    }

    fn live_count(&self) -> usize {
        1 + self
            .members
            .values()
            .filter(|e| matches!(e.state, MemberState::Alive | MemberState::Suspect))
            .count()
    }

    /// The latest instant by which [`Swim::tick`] must be called. After a tick at `now` it is
    /// always later than `now`.
    pub fn poll_at(&self) -> Instant {
        let mut at = self
            .last_tick
            .map_or(self.next_probe, |t| t + self.config.probe_interval);
        if !self.queue.is_empty() {
            at = at.min(self.next_gossip);
        }
        if self.leaving {
            return at;
        }
        at = at.min(self.next_probe);
        if let Some(p) = &self.probe {
            at = at.min(p.started + self.config.probe_interval);
            if !p.indirect_sent {
                at = at.min(p.started + self.config.probe_timeout);
            }
        }
        for s in self.suspicions.values() {
            at = at.min(s.deadline());
        }
        for c in &self.checks {
            at = at.min(c.deadline);
        }
        if self.is_alone() && !self.seeds.is_empty() {
            at = at.min(self.next_join);
        }
        at.min(self.next_reconnect).min(self.next_push_pull)
    }

    fn is_alone(&self) -> bool {
        self.live_count() == 1
    }

    /// Handles one authenticated, fresh packet received from `from`.
    pub fn handle(&mut self, from: SocketAddr, packet: Packet, now: Instant) -> Vec<Output> {
        if packet.sender == self.name {
            // Our own datagram looped back, or another node uses our name: believe neither.
            return Vec::new();
        }
        let sender = packet.sender;
        // A push-pull already carries (and may ask for) whole tables.
        let unknown = !self.members.contains_key(&sender)
            && !matches!(packet.message, Message::PushPull { .. });
        for update in packet.updates {
            self.apply(update, Some(&sender), now);
        }
        match packet.message {
            Message::Ping { seq } => {
                self.send(from, &sender, Message::Ack { seq });
            }
            Message::Ack { seq } => {
                self.last_answer = Some(now);
                self.on_ack(seq);
            }
            Message::PingReq {
                seq,
                target,
                address,
            } => {
                if target == self.name {
                    // Asked to probe ourselves (stale address book): just answer.
                    self.send(from, &sender, Message::Ack { seq });
                } else {
                    let my_seq = self.next_probe_seq();
                    self.relays.push(Relay {
                        seq: my_seq,
                        requester: sender.clone(),
                        requester_address: from,
                        requester_seq: seq,
                        expires: now + self.config.probe_interval,
                    });
                    self.send(address, &target, Message::Ping { seq: my_seq });
                }
            }
            Message::PushPull {
                want_reply,
                members,
            } => {
                for record in members {
                    if record.state == MemberState::Suspect {
                        // A suspect is still a member: learn it before learning the suspicion.
                        self.apply(
                            Update::Alive {
                                member: record.name.clone(),
                                incarnation: record.incarnation,
                                address: record.address,
                            },
                            Some(&sender),
                            now,
                        );
                    }
                    let update = record_update(record, &sender);
                    self.apply(update, Some(&sender), now);
                }
                if want_reply {
                    self.push_table(from, &sender, false);
                } else {
                    self.last_answer = Some(now);
                }
            }
            Message::Gossip => {}
        }
        // A member we had not heard of (its Alive ran out of retransmits before reaching us):
        // swap tables with it rather than wait for the periodic push-pull.
        if unknown && !self.members.contains_key(&sender) && !self.leaving {
            self.push_table(from, &sender, true);
        }
        std::mem::take(&mut self.out)
    }

    fn on_ack(&mut self, seq: u32) {
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            self.probe = None;
            return;
        }
        if let Some(i) = self.checks.iter().position(|c| c.seq == seq) {
            self.checks.swap_remove(i);
            return;
        }
        if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
            let relay = self.relays.swap_remove(i);
            self.send(
                relay.requester_address,
                &relay.requester,
                Message::Ack {
                    seq: relay.requester_seq,
                },
            );
        }
    }

    /// Advances timers: probes, suspicions, gossip, joins, reconnects, anti-entropy, reaping.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        // A gap of several probe intervals between ticks means this process was stalled
        // (SIGSTOP, CPU starvation): a probe that "timed out" meanwhile says nothing about its
        // target, so drop it instead of accusing anyone.
        let stalled = self.last_tick.is_some_and(|last| {
            now.saturating_duration_since(last) > self.config.probe_interval * 2
        });
        self.last_tick = Some(now);
        self.relays.retain(|r| r.expires > now);

        if !self.leaving {
            self.tick_probe(now, stalled);
            self.tick_checks(now, stalled);
            self.tick_suspicions(now);
        }
        self.tick_gossip(now);
        if !self.leaving {
            self.tick_join(now);
            self.tick_reconnect(now);
            self.tick_push_pull(now);
        }
        self.reap(now);
        std::mem::take(&mut self.out)
    }

    fn tick_probe(&mut self, now: Instant, stalled: bool) {
        if stalled {
            self.probe = None;
            self.next_probe = now;
        }
        if let Some(probe) = self.probe.clone() {
            if now >= probe.started + self.config.probe_interval {
                self.probe = None;
                self.probe_failed(&probe.target, now);
            } else if !probe.indirect_sent && now >= probe.started + self.config.probe_timeout {
                self.indirect_probe(&probe);
                if let Some(p) = self.probe.as_mut() {
                    p.indirect_sent = true;
                }
            }
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = advance(self.next_probe, self.config.probe_interval, now);
            if let Some(target) = self.next_probe_target()
                && let Some(address) = self.members.get(&target).map(|e| e.address)
            {
                let seq = self.next_probe_seq();
                self.probe = Some(Probe {
                    target: target.clone(),
                    seq,
                    started: now,
                    indirect_sent: false,
                });
                self.send(address, &target, Message::Ping { seq });
            }
        }
    }

    fn indirect_probe(&mut self, probe: &Probe) {
        let Some(address) = self.members.get(&probe.target).map(|e| e.address) else {
            return;
        };
        let helpers: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(name, e)| e.state == MemberState::Alive && **name != probe.target)
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        let chosen = self.rng.choose(&helpers, self.config.indirect_checks);
        for (helper, helper_address) in chosen {
            self.send(
                helper_address,
                &helper,
                Message::PingReq {
                    seq: probe.seq,
                    target: probe.target.clone(),
                    address,
                },
            );
        }
        // A second direct attempt costs one datagram and halves the chance that plain loss
        // turns into a suspicion.
        self.send(address, &probe.target, Message::Ping { seq: probe.seq });
    }

    fn probe_failed(&mut self, target: &str, now: Instant) {
        let Some(entry) = self.members.get(target) else {
            return;
        };
        if !matches!(entry.state, MemberState::Alive | MemberState::Suspect) {
            return;
        }
        let (incarnation, address) = (entry.incarnation, entry.address);
        let suspect = Update::Suspect {
            member: target.to_owned(),
            incarnation,
            from: self.name.clone(),
        };
        self.apply(suspect.clone(), None, now);
        // Tell the suspect at once: if it is alive it refutes in one round trip instead of
        // waiting for the rumour to reach it.
        self.send_with(address, target, Message::Gossip, Some(suspect));
    }

    fn tick_checks(&mut self, now: Instant, stalled: bool) {
        let (due, pending): (Vec<Check>, Vec<Check>) = std::mem::take(&mut self.checks)
            .into_iter()
            .partition(|c| now >= c.deadline);
        self.checks = pending;
        if stalled {
            return;
        }
        for check in due {
            let Some(entry) = self.members.get(&check.target) else {
                continue;
            };
            if entry.state == MemberState::Suspect {
                let confirm = Update::Suspect {
                    member: check.target,
                    incarnation: entry.incarnation,
                    from: self.name.clone(),
                };
                self.apply(confirm, None, now);
            }
        }
    }

    fn tick_suspicions(&mut self, now: Instant) {
        let expired: Vec<(String, u64)> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline())
            .filter_map(|(name, _)| {
                self.members
                    .get(name)
                    .map(|e| (name.clone(), e.incarnation))
            })
            .collect();
        if !expired.is_empty() {
            // A death is urgent news: gossip it in this tick, not up to an interval later.
            self.next_gossip = now;
        }
        for (name, incarnation) in expired {
            let me = self.name.clone();
            self.apply(
                Update::Dead {
                    member: name,
                    incarnation,
                    from: me,
                },
                None,
                now,
            );
        }
    }

    fn tick_gossip(&mut self, now: Instant) {
        if now < self.next_gossip {
            return;
        }
        self.next_gossip = advance(self.next_gossip, self.config.gossip_interval, now);
        if self.queue.is_empty() {
            return;
        }
        // Recently dead members get gossip too, so one that was only cut off hears it was
        // declared dead and refutes when the partition heals.
        let targets: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| match e.state {
                MemberState::Alive | MemberState::Suspect => true,
                MemberState::Dead => {
                    now.saturating_duration_since(e.since) < self.config.gossip_to_dead
                }
                MemberState::Left => false,
            })
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        for (name, address) in self.rng.choose(&targets, self.config.gossip_nodes) {
            if self.queue.is_empty() {
                break;
            }
            self.send(address, &name, Message::Gossip);
        }
    }

    fn tick_join(&mut self, now: Instant) {
        if !self.is_alone() || self.seeds.is_empty() || now < self.next_join {
            return;
        }
        self.next_join = now + self.config.join_retry_interval;
        for seed in self.seeds.clone() {
            self.push_table(seed, "", true);
        }
    }

    fn tick_reconnect(&mut self, now: Instant) {
        if now < self.next_reconnect {
            return;
        }
        self.next_reconnect = now + self.config.reconnect_interval;
        let dead: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Dead)
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        if let Some((name, address)) = self.rng.choose(&dead, 1).pop() {
            self.push_table(address, &name, true);
        }
    }

    /// Reaches out at once to every seed and every member believed dead, as a push-pull:
    /// called when this node's own link comes back, so a node that was cut off learns the
    /// others are alive (and they learn it is) in one round trip instead of at the next
    /// reconnect or join attempt.
    pub fn rejoin(&mut self, now: Instant) -> Vec<Output> {
        if self.leaving {
            return Vec::new();
        }
        let mut targets: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Dead)
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        for seed in &self.seeds {
            if !targets.iter().any(|(_, a)| a == seed) {
                targets.push((String::new(), *seed));
            }
        }
        for (name, address) in targets {
            self.push_table(address, &name, true);
        }
        self.next_reconnect = now + self.config.reconnect_interval;
        self.next_join = now + self.config.join_retry_interval;
        std::mem::take(&mut self.out)
    }

    fn tick_push_pull(&mut self, now: Instant) {
        if now < self.next_push_pull {
            return;
        }
        self.next_push_pull = now + self.config.push_pull_interval;
        // A seed we hold no live member at gets the exchange: that reunites halves of a
        // partition that outlasted the dead-member retention.
        let live_addresses: BTreeSet<SocketAddr> = self
            .members
            .values()
            .filter(|e| matches!(e.state, MemberState::Alive | MemberState::Suspect))
            .map(|e| e.address)
            .collect();
        let lost_seeds: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|s| !live_addresses.contains(s))
            .collect();
        if let Some(seed) = self.rng.choose(&lost_seeds, 1).pop() {
            self.push_table(seed, "", true);
            return;
        }
        let alive: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Alive)
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        if let Some((name, address)) = self.rng.choose(&alive, 1).pop() {
            self.push_table(address, &name, true);
        }
    }

    fn reap(&mut self, now: Instant) {
        let retention = self.config.dead_retention;
        let mut forgotten = Vec::new();
        self.members.retain(|name, e| {
            let keep = !matches!(e.state, MemberState::Dead | MemberState::Left)
                || now.saturating_duration_since(e.since) < retention;
            if !keep {
                forgotten.push(name.clone());
            }
            keep
        });
        for name in forgotten {
            self.event(Event::MemberForgotten { name });
        }
    }

    /// Leaves gracefully: tells every live member at once and stops probing. Keep calling
    /// [`Swim::tick`] and [`Swim::handle`] for a little while so the news spreads and late
    /// probes are still answered.
    pub fn leave(&mut self, _now: Instant) -> Vec<Output> {
        if self.leaving {
            return Vec::new();
        }
        self.leaving = true;
        self.probe = None;
        self.checks.clear();
        self.suspicions.clear();
        let leave = Update::Leave {
            member: self.name.clone(),
            incarnation: self.incarnation,
        };
        self.enqueue(leave.clone());
        let live: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, e)| matches!(e.state, MemberState::Alive | MemberState::Suspect))
            .map(|(name, e)| (name.clone(), e.address))
            .collect();
        for (name, address) in live {
            self.send_with(address, &name, Message::Gossip, Some(leave.clone()));
        }
        std::mem::take(&mut self.out)
    }

    /// Applies one membership update; `via` is the node that told us (the accuser to answer
    /// directly when the update is a lie about us).
    fn apply(&mut self, update: Update, via: Option<&str>, now: Instant) {
        if update.member() == self.name {
            self.about_me(update, via);
            return;
        }
        match update {
            Update::Alive {
                member,
                incarnation,
                address,
            } => {
                let Some(entry) = self.members.get_mut(&member) else {
                    let entry = Entry {
                        address,
                        incarnation,
                        state: MemberState::Alive,
                        since: now,
                    };
                    self.members.insert(member.clone(), entry);
                    self.add_to_probe_order(&member);
                    self.event(Event::MemberUp(Member {
                        name: member.clone(),
                        address,
                        incarnation,
                        state: MemberState::Alive,
                    }));
                    self.enqueue(Update::Alive {
                        member,
                        incarnation,
                        address,
                    });
                    return;
                };
                if incarnation <= entry.incarnation {
                    return;
                }
                let previous = entry.state;
                *entry = Entry {
                    address,
                    incarnation,
                    state: MemberState::Alive,
                    since: now,
                };
                self.suspicions.remove(&member);
                match previous {
                    MemberState::Suspect => self.event(Event::MemberAlive {
                        name: member.clone(),
                        incarnation,
                    }),
                    MemberState::Dead | MemberState::Left => {
                        self.add_to_probe_order(&member);
                        self.event(Event::MemberUp(Member {
                            name: member.clone(),
                            address,
                            incarnation,
                            state: MemberState::Alive,
                        }))
                    }
                    MemberState::Alive => {}
                }
                self.enqueue(Update::Alive {
                    member,
                    incarnation,
                    address,
                });
            }
            Update::Suspect {
                member,
                incarnation,
                from,
            } => {
                let n = self.live_count();
                let Some(entry) = self.members.get_mut(&member) else {
                    return;
                };
                if incarnation < entry.incarnation {
                    return;
                }
                match entry.state {
                    MemberState::Dead | MemberState::Left => {}
                    MemberState::Suspect if incarnation == entry.incarnation => {
                        // Beyond `expected` a confirmation shortens no timer, so it is
                        // neither kept nor passed on (as memberlist's suspicion does).
                        let confirmed = self.suspicions.get_mut(&member).is_some_and(|s| {
                            from != s.first_accuser
                                && s.confirmations.len() < s.expected
                                && s.confirmations.insert(from.clone())
                        });
                        if confirmed {
                            // Pass confirmations on: every node's timer shortens with them.
                            self.enqueue(Update::Suspect {
                                member,
                                incarnation,
                                from,
                            });
                        }
                    }
                    MemberState::Alive | MemberState::Suspect => {
                        entry.state = MemberState::Suspect;
                        entry.incarnation = incarnation;
                        entry.since = now;
                        let address = entry.address;
                        if from != self.name
                            && !self.leaving
                            && self.is_checker(&member, incarnation, &from)
                        {
                            let seq = self.next_probe_seq();
                            self.checks.push(Check {
                                target: member.clone(),
                                seq,
                                deadline: now + self.config.check_timeout(),
                            });
                            self.send(address, &member, Message::Ping { seq });
                        }
                        let suspicion = self.new_suspicion(&from, n, now);
                        self.suspicions.insert(member.clone(), suspicion);
                        // Others' confirmations shorten every timer: spread the news in
                        // this tick, not up to a gossip interval later.
                        self.next_gossip = self.next_gossip.min(now);
                        self.event(Event::MemberSuspect {
                            name: member.clone(),
                            incarnation,
                            by: from.clone(),
                        });
                        self.enqueue(Update::Suspect {
                            member,
                            incarnation,
                            from,
                        });
                    }
                }
            }
            Update::Dead {
                member,
                incarnation,
                from,
            } => {
                let Some(entry) = self.members.get_mut(&member) else {
                    return;
                };
                if incarnation < entry.incarnation
                    || matches!(entry.state, MemberState::Dead | MemberState::Left)
                {
                    return;
                }
                entry.state = MemberState::Dead;
                entry.incarnation = incarnation;
                entry.since = now;
                let suspected_for = self
                    .suspicions
                    .remove(&member)
                    .map(|s| now.saturating_duration_since(s.started));
                if self.probe.as_ref().is_some_and(|p| p.target == member) {
                    self.probe = None;
                }
                self.event(Event::MemberDead {
                    name: member.clone(),
                    incarnation,
                    suspected_for,
                });
                self.enqueue(Update::Dead {
                    member,
                    incarnation,
                    from,
                });
            }
            Update::Leave {
                member,
                incarnation,
            } => {
                let Some(entry) = self.members.get_mut(&member) else {
                    return;
                };
                if incarnation < entry.incarnation || entry.state == MemberState::Left {
                    return;
                }
                entry.state = MemberState::Left;
                entry.incarnation = incarnation;
                entry.since = now;
                self.suspicions.remove(&member);
                if self.probe.as_ref().is_some_and(|p| p.target == member) {
                    self.probe = None;
                }
                self.event(Event::MemberLeft {
                    name: member.clone(),
                    incarnation,
                });
                self.enqueue(Update::Leave {
                    member,
                    incarnation,
                });
            }
        }
    }

    /// Something said about this node. Anything but the truth at our current incarnation is
    /// refuted by going one incarnation higher.
    fn about_me(&mut self, update: Update, via: Option<&str>) {
        let lie = match &update {
            Update::Alive {
                incarnation,
                address,
                ..
            } => {
                *incarnation > self.incarnation
                    || (*incarnation == self.incarnation && *address != self.address)
            }
            Update::Suspect { incarnation, .. }
            | Update::Dead { incarnation, .. }
            | Update::Leave { incarnation, .. } => {
                !self.leaving && *incarnation >= self.incarnation
            }
        };
        if !lie || self.leaving {
            return;
        }
        self.incarnation = self.incarnation.max(update.incarnation()) + 1;
        self.event(Event::Refuted {
            incarnation: self.incarnation,
        });
        self.enqueue(self.alive_update());
        // Answer the accuser directly (it holds the timer that would declare us dead), and
        // whoever told us, if that is someone else.
        let mut tell: Vec<String> = Vec::new();
        if let Update::Suspect { from, .. } | Update::Dead { from, .. } = &update {
            tell.push(from.clone());
        }
        if let Some(via) = via
            && !tell.iter().any(|t| t == via)
        {
            tell.push(via.to_owned());
        }
        let alive = self.alive_update();
        for name in tell {
            if let Some(address) = self.members.get(&name).map(|e| e.address) {
                self.send_with(address, &name, Message::Gossip, Some(alive.clone()));
            }
        }
    }

    /// Whether this node is one of the `indirect_checks` members that check `suspect`'s
    /// suspicion at `incarnation` raised by `accuser`: the live members other than those two
    /// ranked by a hash of (suspect, incarnation, member), so every node picks the same few
    /// without a word exchanged, and a new incarnation picks others.
    fn is_checker(&self, suspect: &str, incarnation: u64, accuser: &str) -> bool {
        let rank = |member: &str| {
            let mut hash = Sha256::new();
            hash.update(suspect.as_bytes());
            hash.update([0u8]);
            hash.update(incarnation.to_be_bytes());
            hash.update(member.as_bytes());
            <[u8; 32]>::from(hash.finalize())
        };
        let mine = rank(&self.name);
        let ahead = self
            .members
            .iter()
            .filter(|(name, e)| {
                e.state == MemberState::Alive && *name != suspect && *name != accuser
            })
            .filter(|(name, _)| rank(name) < mine)
            .count();
        ahead < self.config.indirect_checks
    }

    fn new_suspicion(&self, accuser: &str, live: usize, now: Instant) -> Suspicion {
        let min = self.config.suspicion_min(live);
        Suspicion {
            started: now,
            first_accuser: accuser.to_owned(),
            confirmations: BTreeSet::new(),
            expected: self.config.indirect_checks.min(live.saturating_sub(2)),
            min,
            max: min * self.config.suspicion_max_mult,
        }
    }

    fn alive_update(&self) -> Update {
        Update::Alive {
            member: self.name.clone(),
            incarnation: self.incarnation,
            address: self.address,
        }
    }

    fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    fn enqueue(&mut self, update: Update) {
        // A newer word about a member supersedes the older one still queued.
        self.queue.retain(|q| q.update.member() != update.member());
        self.queue.push(Queued {
            update,
            transmits: 0,
        });
    }

    fn next_probe_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn add_to_probe_order(&mut self, name: &str) {
        // At a random place in the rest of this round, as memberlist does, so a newcomer is
        // probed within one round without upsetting everyone else's turn.
        let rest = self.probe_order.len().saturating_sub(self.probe_pos);
        let at = self.probe_pos + self.rng.below(rest + 1);
        self.probe_order
            .insert(at.min(self.probe_order.len()), name.to_owned());
    }

    fn next_probe_target(&mut self) -> Option<String> {
        for _ in 0..2 {
            while let Some(name) = self.probe_order.get(self.probe_pos).cloned() {
                self.probe_pos += 1;
                if self
                    .members
                    .get(&name)
                    .is_some_and(|e| matches!(e.state, MemberState::Alive | MemberState::Suspect))
                {
                    return Some(name);
                }
            }
            // End of a round: a fresh random order of everyone live.
            self.probe_order = self
                .members
                .iter()
                .filter(|(_, e)| matches!(e.state, MemberState::Alive | MemberState::Suspect))
                .map(|(name, _)| name.clone())
                .collect();
            let mut order = std::mem::take(&mut self.probe_order);
            self.rng.shuffle(&mut order);
            self.probe_order = order;
            self.probe_pos = 0;
        }
        None
    }

    /// Our whole member table (ourselves first), as push-pull packets that each fit a datagram.
    fn push_table(&mut self, to: SocketAddr, to_name: &str, want_reply: bool) {
        let mut records = vec![MemberRecord {
            name: self.name.clone(),
            address: self.address,
            incarnation: self.incarnation,
            state: self.me().state,
        }];
        records.extend(self.members.iter().map(|(name, e)| MemberRecord {
            name: name.clone(),
            address: e.address,
            incarnation: e.incarnation,
            state: e.state,
        }));
        let budget = self.payload_budget(to_name);
        let mut first = true;
        let mut chunk: Vec<MemberRecord> = Vec::new();
        let mut used = Message::PushPull {
            want_reply,
            members: Vec::new(),
        }
        .encoded_len();
        for record in records {
            let len = record.encoded_len();
            if !chunk.is_empty() && used + len > budget {
                let members = std::mem::take(&mut chunk);
                self.send(
                    to,
                    to_name,
                    Message::PushPull {
                        want_reply: want_reply && first,
                        members,
                    },
                );
                first = false;
                used = Message::PushPull {
                    want_reply: false,
                    members: Vec::new(),
                }
                .encoded_len();
            }
            used += len;
            chunk.push(record);
        }
        self.send(
            to,
            to_name,
            Message::PushPull {
                want_reply: want_reply && first,
                members: chunk,
            },
        );
    }

    /// Plaintext bytes left for message + updates in a datagram to `to_name`.
    fn payload_budget(&self, to_name: &str) -> usize {
        self.config
            .max_datagram
            .saturating_sub(ENVELOPE_OVERHEAD + Packet::header_len(&self.name, to_name))
    }

    /// Sends `message` to `to` with as many queued updates as fit: first those about the
    /// recipient (a suspect learns of its suspicion from the probe itself), then those about
    /// ourselves (refutations), then the least-sent.
    fn send(&mut self, to: SocketAddr, to_name: &str, message: Message) {
        self.send_with(to, to_name, message, None);
    }

    /// [`Swim::send`], with `must` carried first whatever its transmit count (a leave, a
    /// refutation or a suspicion told to the one concerned).
    fn send_with(&mut self, to: SocketAddr, to_name: &str, message: Message, must: Option<Update>) {
        let mut budget = self
            .payload_budget(to_name)
            .saturating_sub(message.encoded_len());
        let mut updates = Vec::new();
        if let Some(update) = must {
            budget = budget.saturating_sub(update.encoded_len());
            updates.push(update);
        }
        let limit = self.config.retransmit_limit(self.live_count());
        let mut order: Vec<usize> = (0..self.queue.len()).collect();
        let rank = |q: &Queued| {
            let m = q.update.member();
            let group = if !to_name.is_empty() && m == to_name {
                0
            } else if m == self.name {
                1
            } else {
                2
            };
            (group, q.transmits)
        };
        order.sort_by_key(|&i| self.queue.get(i).map(rank));
        for i in order {
            if updates.len() >= MAX_UPDATES {
                break;
            }
            let Some(q) = self.queue.get_mut(i) else {
                continue;
            };
            let len = q.update.encoded_len();
            if len > budget || updates.contains(&q.update) {
                continue;
            }
            budget -= len;
            q.transmits += 1;
            updates.push(q.update.clone());
        }
        self.queue.retain(|q| q.transmits < limit);
        if matches!(message, Message::Gossip) && updates.is_empty() {
            return;
        }
        let seq = self.next_datagram;
        self.next_datagram += 1;
        self.out.push(Output::Send {
            to,
            packet: Packet {
                sender: self.name.clone(),
                epoch: self.epoch,
                seq,
                to: to_name.to_owned(),
                message,
                updates,
            },
        });
    }
}

/// The next firing of a periodic timer that fired at `now`: a steady cadence, but never a
/// burst to catch up on rounds missed while stalled.
fn advance(next: Instant, interval: Duration, now: Instant) -> Instant {
    let following = next + interval;
    if following <= now {
        now + interval
    } else {
        following
    }
}

/// What a push-pull row says, as an update attributed to the node that sent the table. A row
/// saying dead is taken as a suspicion (as memberlist does): the table may be stale, e.g. that
/// of a node rejoining after it was cut off and declared everyone dead, and a suspicion lets a
/// live member refute it instead of being declared dead by a rumour.
fn record_update(record: MemberRecord, sender: &str) -> Update {
    let MemberRecord {
        name,
        address,
        incarnation,
        state,
    } = record;
    match state {
        MemberState::Alive => Update::Alive {
            member: name,
            incarnation,
            address,
        },
        MemberState::Suspect | MemberState::Dead => Update::Suspect {
            member: name,
            incarnation,
            from: sender.to_owned(),
        },
        MemberState::Left => Update::Leave {
            member: name,
            incarnation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 250, 0, i], 7946))
    }

    fn node(i: u8, now: Instant) -> Swim {
        Swim::new(
            format!("n{i}"),
            addr(i),
            1,
            vec![],
            Config::default(),
            u64::from(i),
            now,
        )
    }

    fn packet(sender: &str, to: &str, message: Message, updates: Vec<Update>) -> Packet {
        Packet {
            sender: sender.into(),
            epoch: 1,
            seq: 0,
            to: to.into(),
            message,
            updates,
        }
    }

    fn sends(outputs: &[Output]) -> Vec<&Packet> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { packet, .. } => Some(packet),
                Output::Event(_) => None,
            })
            .collect()
    }

    fn alive(i: u8, incarnation: u64) -> Update {
        Update::Alive {
            member: format!("n{i}"),
            incarnation,
            address: addr(i),
        }
    }

    #[test]
    fn a_suspicion_of_me_is_refuted_to_the_accuser() {
        let now = Instant::now();
        let mut n1 = node(1, now);
        n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![alive(2, 0)]),
            now,
        );
        let suspect = Update::Suspect {
            member: "n1".into(),
            incarnation: 0,
            from: "n2".into(),
        };
        let out = n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![suspect]),
            now,
        );
        assert_eq!(n1.incarnation(), 1);
        assert!(out.contains(&Output::Event(Event::Refuted { incarnation: 1 })));
        let refutation = sends(&out)
            .into_iter()
            .find(|p| p.to == "n2")
            .expect("a datagram straight to the accuser");
        assert!(refutation.updates.contains(&alive(1, 1)), "{refutation:?}");
    }

    /// Ten members who all know each other; `n2` suspects `n9`.
    fn ten_hear_a_suspicion(now: Instant) -> Vec<(Swim, Vec<Output>)> {
        let everyone: Vec<Update> = (1..=10).map(|i| alive(i, 0)).collect();
        let suspicion = Update::Suspect {
            member: "n9".into(),
            incarnation: 0,
            from: "n2".into(),
        };
        (1..=10)
            .filter(|i| ![2, 9].contains(i))
            .map(|i| {
                let mut n = node(i, now);
                let me = format!("n{i}");
                n.handle(
                    addr(2),
                    packet("n2", &me, Message::Gossip, everyone.clone()),
                    now,
                );
                let out = n.handle(
                    addr(2),
                    packet("n2", &me, Message::Gossip, vec![suspicion.clone()]),
                    now,
                );
                (n, out)
            })
            .collect()
    }

    #[test]
    fn exactly_indirect_checks_members_check_a_suspicion() {
        let now = Instant::now();
        let heard = ten_hear_a_suspicion(now);
        let checkers: Vec<&str> = heard
            .iter()
            .filter(|(_, out)| {
                sends(out)
                    .iter()
                    .any(|p| p.to == "n9" && matches!(p.message, Message::Ping { .. }))
            })
            .map(|(n, _)| n.name())
            .collect();
        assert_eq!(
            checkers.len(),
            Config::default().indirect_checks,
            "{checkers:?}"
        );
        // Every hearer still counts n9 as a suspect, checker or not.
        assert!(
            heard
                .iter()
                .all(|(n, _)| n.state_of("n9") == Some(MemberState::Suspect))
        );
    }

    #[test]
    fn confirmations_beyond_the_expected_count_are_not_passed_on() {
        let now = Instant::now();
        let (mut n1, _) = ten_hear_a_suspicion(now)
            .into_iter()
            .next()
            .expect("n1 heard it");
        let mut passed_on = 0;
        for accuser in 3..=8 {
            let confirmation = Update::Suspect {
                member: "n9".into(),
                incarnation: 0,
                from: format!("n{accuser}"),
            };
            n1.handle(
                addr(accuser),
                packet(
                    &format!("n{accuser}"),
                    "n1",
                    Message::Gossip,
                    vec![confirmation],
                ),
                now,
            );
            if n1.queue.iter().any(|q| {
                matches!(&q.update, Update::Suspect { from, .. } if *from == format!("n{accuser}"))
            }) {
                passed_on += 1;
            }
        }
        assert_eq!(passed_on, Config::default().indirect_checks);
    }

    #[test]
    fn stale_news_changes_nothing() {
        let now = Instant::now();
        let mut n1 = node(1, now);
        n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![alive(3, 5)]),
            now,
        );
        let old_death = Update::Dead {
            member: "n3".into(),
            incarnation: 4,
            from: "n2".into(),
        };
        let out = n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![old_death]),
            now,
        );
        assert!(
            out.iter().all(|o| !matches!(o, Output::Event(_))),
            "{out:?}"
        );
        assert_eq!(n1.state_of("n3"), Some(MemberState::Alive));
        // A suspicion of an unknown member is not a membership.
        let out = n1.handle(
            addr(2),
            packet(
                "n2",
                "n1",
                Message::Gossip,
                vec![Update::Suspect {
                    member: "ghost".into(),
                    incarnation: 9,
                    from: "n2".into(),
                }],
            ),
            now,
        );
        assert_eq!(n1.state_of("ghost"), None, "{out:?}");
    }

    #[test]
    fn a_ping_is_acked_and_an_unanswered_probe_leads_to_suspicion() {
        let t0 = Instant::now();
        let mut n1 = node(1, t0);
        n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![alive(2, 0), alive(3, 0)]),
            t0,
        );
        let out = n1.handle(
            addr(2),
            packet("n2", "n1", Message::Ping { seq: 77 }, vec![]),
            t0,
        );
        assert!(
            sends(&out)
                .iter()
                .any(|p| p.message == Message::Ack { seq: 77 })
        );
        // Run the clock; nobody answers n1's probes.
        let mut t = t0;
        let mut suspected = false;
        for _ in 0..100 {
            t += Duration::from_millis(10);
            let out = n1.tick(t);
            suspected |= out
                .iter()
                .any(|o| matches!(o, Output::Event(Event::MemberSuspect { by, .. }) if by == "n1"));
            if sends(&out)
                .iter()
                .any(|p| matches!(p.message, Message::PingReq { .. }))
            {
                assert!(!suspected, "indirect probes come before suspicion");
            }
        }
        assert!(suspected);
    }

    #[test]
    fn every_datagram_fits_the_budget_however_much_is_queued() {
        let now = Instant::now();
        let mut n1 = node(1, now);
        let updates: Vec<Update> = (0..200u16)
            .map(|i| Update::Alive {
                member: format!("a-rather-long-node-name-for-padding-{i:04}.example.internal"),
                incarnation: u64::from(i),
                address: SocketAddr::from(([10, 250, (i / 250) as u8, (i % 250) as u8], 7946)),
            })
            .collect();
        for chunk in updates.chunks(50) {
            n1.handle(
                addr(2),
                packet("n2", "n1", Message::Gossip, chunk.to_vec()),
                now,
            );
        }
        // A join reply carries the whole table in several datagrams.
        let out = n1.handle(
            addr(9),
            packet(
                "n9",
                "",
                Message::PushPull {
                    want_reply: true,
                    members: vec![],
                },
                vec![],
            ),
            now,
        );
        let replies = sends(&out);
        assert!(replies.len() > 5, "{} datagrams", replies.len());
        for p in replies
            .iter()
            .chain(sends(&n1.tick(now + Duration::from_millis(60))).iter())
        {
            assert!(
                p.encoded_len() + ENVELOPE_OVERHEAD <= 1200,
                "{}",
                p.encoded_len()
            );
        }
        let wanted = replies
            .iter()
            .filter(|p| {
                matches!(
                    p.message,
                    Message::PushPull {
                        want_reply: true,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(wanted, 0, "a reply never asks for a reply");
    }

    #[test]
    fn poll_at_moves_forward_after_a_tick() {
        let t0 = Instant::now();
        let mut n1 = node(1, t0);
        n1.handle(
            addr(2),
            packet("n2", "n1", Message::Gossip, vec![alive(2, 0)]),
            t0,
        );
        let mut t = t0;
        for _ in 0..200 {
            t = n1.poll_at().max(t);
            n1.tick(t);
            assert!(n1.poll_at() > t);
        }
        n1.leave(t);
        n1.tick(t);
        assert!(n1.poll_at() > t, "a leaving node does not spin");
    }
}
