//! SWIM in virtual time: N state machines on a simulated network that delays, drops, partitions
//! and pauses, checking detection times, stability under loss, refutation, leave and healing.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrolb_proto::gossip::{ENVELOPE_OVERHEAD, Packet};
use ferrolb_speaker::membership::{Config, Event, MemberState, Output, Swim};

/// The simulation's own randomness (loss, jitter, crash phases), separate from the nodes'.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Run {
    Up,
    Crashed,
    /// Stopped (SIGSTOP): datagrams wait in the socket buffer, no timer fires.
    Paused {
        until: Duration,
        held: Vec<(SocketAddr, Packet)>,
    },
}

struct Node {
    swim: Swim,
    run: Run,
    group: u32,
}

struct Sim {
    base: Instant,
    now: Duration,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<(Duration, u64)>>,
    datagrams: HashMap<u64, (usize, SocketAddr, Packet)>,
    next_id: u64,
    rand: Rand,
    loss: f64,
    /// Every event: (virtual time, observer index, event).
    events: Vec<(Duration, usize, Event)>,
    sent: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 250, (i / 250) as u8, (i % 250 + 1) as u8], 7946))
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

impl Sim {
    /// `n` nodes with default settings, all seeded with node 0, started within one interval.
    fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, Config::default())
    }

    fn with_config(n: usize, seed: u64, config: Config) -> Self {
        let base = Instant::now();
        let nodes = (0..n)
            .map(|i| Node {
                swim: Swim::new(
                    name(i),
                    addr(i),
                    1,
                    vec![addr(0)],
                    config.clone(),
                    seed.wrapping_mul(1000).wrapping_add(i as u64),
                    base,
                ),
                run: Run::Up,
                group: 0,
            })
            .collect();
        Sim {
            base,
            now: Duration::ZERO,
            nodes,
            by_addr: (0..n).map(|i| (addr(i), i)).collect(),
            in_flight: BinaryHeap::new(),
            datagrams: HashMap::new(),
            next_id: 0,
            rand: Rand(seed),
            loss: 0.0,
            events: Vec::new(),
            sent: 0,
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn outputs(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Event(e) => self.events.push((self.now, from, e)),
                Output::Send { to, packet } => {
                    assert!(
                        packet.encoded_len() + ENVELOPE_OVERHEAD <= 1200,
                        "{} byte datagram",
                        packet.encoded_len() + ENVELOPE_OVERHEAD
                    );
                    self.sent += 1;
                    let Some(&dest) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if self.rand.unit() < self.loss
                        || self.nodes[dest].group != self.nodes[from].group
                    {
                        continue;
                    }
                    // LAN latency: 100-600 us.
                    let delay = Duration::from_micros(100 + self.rand.next() % 500);
                    let id = self.next_id;
                    self.next_id += 1;
                    self.datagrams.insert(id, (dest, addr(from), packet));
                    self.in_flight.push(Reverse((self.now + delay, id)));
                }
            }
        }
    }

    fn next_wake(&self) -> Option<(Duration, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.run {
                Run::Up => Some((n.swim.poll_at().saturating_duration_since(self.base), i)),
                Run::Paused { until, .. } => Some((*until, i)),
                Run::Crashed => None,
            })
            .min()
    }

    /// Runs until virtual time `until`.
    fn run_until(&mut self, until: Duration) {
        loop {
            let delivery = self.in_flight.peek().map(|Reverse((t, _))| *t);
            let wake = self.next_wake();
            let next = match (delivery, wake) {
                (Some(d), Some((w, _))) => d.min(w),
                (Some(d), None) => d,
                (None, Some((w, _))) => w,
                (None, None) => until,
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            if delivery == Some(next) {
                let Reverse((_, id)) = self.in_flight.pop().unwrap();
                let (dest, from, packet) = self.datagrams.remove(&id).unwrap();
                let now = self.instant();
                match &mut self.nodes[dest].run {
                    Run::Up => {
                        let out = self.nodes[dest].swim.handle(from, packet, now);
                        self.outputs(dest, out);
                    }
                    Run::Paused { held, .. } => held.push((from, packet)),
                    Run::Crashed => {}
                }
            } else if let Some((_, i)) = wake {
                let now = self.instant();
                if let Run::Paused { until, .. } = &self.nodes[i].run
                    && *until <= self.now
                {
                    // Resumed: the socket buffer is read before timers fire.
                    let Run::Paused { held, .. } =
                        std::mem::replace(&mut self.nodes[i].run, Run::Up)
                    else {
                        unreachable!()
                    };
                    for (from, packet) in held {
                        let out = self.nodes[i].swim.handle(from, packet, now);
                        self.outputs(i, out);
                    }
                }
                let out = self.nodes[i].swim.tick(now);
                self.outputs(i, out);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Whether every running node sees every other running node alive.
    fn converged(&self) -> bool {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !matches!(self.nodes[*i].run, Run::Crashed))
            .collect();
        up.iter().all(|&i| {
            up.iter()
                .all(|&j| self.nodes[i].swim.state_of(&name(j)) == Some(MemberState::Alive))
        })
    }

    /// Runs until converged, returning how long it took.
    fn converge(&mut self, within: Duration) -> Duration {
        let start = self.now;
        while !self.converged() {
            assert!(
                self.now - start < within,
                "not converged after {within:?}: {}",
                self.describe()
            );
            self.run_for(Duration::from_millis(10));
        }
        self.now - start
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let states: BTreeMap<String, MemberState> = n
                .swim
                .members()
                .into_iter()
                .filter(|m| m.state != MemberState::Alive)
                .map(|m| (m.name, m.state))
                .collect();
            s.push_str(&format!(
                "\n  {} inc {} sees {} members, not alive: {states:?}",
                name(i),
                n.swim.incarnation(),
                n.swim.members().len()
            ));
        }
        s
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].run = Run::Crashed;
    }

    fn pause(&mut self, i: usize, d: Duration) {
        self.nodes[i].run = Run::Paused {
            until: self.now + d,
            held: Vec::new(),
        };
    }

    fn deaths_since(&self, since: Duration) -> Vec<(Duration, usize, String)> {
        self.events
            .iter()
            .filter(|(t, _, _)| *t >= since)
            .filter_map(|(t, i, e)| match e {
                Event::MemberDead { name, .. } => Some((*t, *i, name.clone())),
                _ => None,
            })
            .collect()
    }

    fn count_since(&self, since: Duration, f: impl Fn(&Event) -> bool) -> usize {
        self.events
            .iter()
            .filter(|(t, _, e)| *t >= since && f(e))
            .count()
    }

    /// Crashes `victim` at a random phase and returns how long until every other node saw it
    /// dead.
    fn detection(&mut self, victim: usize, limit: Duration) -> Duration {
        let phase = Duration::from_micros(self.rand.next() % 100_000);
        self.run_for(phase);
        self.crash(victim);
        let crashed_at = self.now;
        let observers = self.nodes.len() - 1;
        loop {
            let seen: std::collections::BTreeSet<usize> = self
                .deaths_since(crashed_at)
                .into_iter()
                .filter(|(_, _, n)| *n == name(victim))
                .map(|(_, i, _)| i)
                .collect();
            if seen.len() == observers {
                let last = self
                    .deaths_since(crashed_at)
                    .into_iter()
                    .filter(|(_, _, n)| *n == name(victim))
                    .map(|(t, _, _)| t)
                    .max()
                    .unwrap();
                return last - crashed_at;
            }
            assert!(
                self.now - crashed_at < limit,
                "{} not declared dead by all within {limit:?}",
                name(victim)
            );
            self.run_for(Duration::from_millis(1));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn detection_trials(n: usize, trials: u64) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..trials)
        .map(|trial| {
            let mut sim = Sim::new(n, 7 + trial);
            sim.converge(Duration::from_secs(10));
            sim.run_for(Duration::from_secs(1));
            let victim = 1 + (trial as usize % (n - 1));
            sim.detection(victim, Duration::from_secs(3))
        })
        .collect();
    times.sort();
    println!(
        "{n} members, {trials} crashes at random phases: detected by all in median {:?}, p90 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times[times.len() - 1]
    );
    times
}

#[test]
fn members_join_through_a_seed() {
    let mut sim = Sim::new(20, 1);
    let took = sim.converge(Duration::from_secs(5));
    println!("20 members converged in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(sim.deaths_since(Duration::ZERO), vec![]);
}

#[test]
fn three_members_detect_a_crash_within_250_ms() {
    // The failover target is a 300 ms median from crash to the client's first ARP reply from
    // the new owner; detection must leave room for the announcer and the client's probe.
    let times = detection_trials(3, 30);
    assert!(
        percentile(&times, 0.5) < Duration::from_millis(250),
        "{times:?}"
    );
    assert!(
        times[times.len() - 1] < Duration::from_millis(400),
        "{times:?}"
    );
}

#[test]
fn fifty_members_detect_a_crash_within_300_ms() {
    let times = detection_trials(50, 10);
    assert!(
        percentile(&times, 0.5) < Duration::from_millis(300),
        "{times:?}"
    );
    assert!(times[times.len() - 1] < Duration::from_secs(1), "{times:?}");
}

#[test]
fn a_hundred_members_with_one_percent_loss_never_kill_anyone() {
    let mut sim = Sim::new(100, 42);
    sim.converge(Duration::from_secs(10));
    sim.loss = 0.01;
    let start = sim.now;
    sim.run_for(Duration::from_secs(30));
    let suspicions = sim.count_since(start, |e| matches!(e, Event::MemberSuspect { .. }));
    let refutations = sim.count_since(start, |e| matches!(e, Event::Refuted { .. }));
    println!(
        "100 members, 1% loss, 30 s: {} datagrams, {suspicions} suspect events, {refutations} refutations",
        sim.sent
    );
    assert_eq!(sim.deaths_since(start), vec![]);
    assert!(
        sim.converged() || {
            sim.run_for(Duration::from_secs(1));
            sim.converged()
        }
    );
}

/// Pauses members 3 and 4 in turn, `rounds` times, and returns (suspicions, refutations).
fn pauses(pause: Duration, rounds: usize, seed: u64) -> (usize, usize) {
    let mut sim = Sim::new(20, seed);
    sim.converge(Duration::from_secs(5));
    sim.loss = 0.01;
    let start = sim.now;
    for round in 0..rounds {
        let gap = Duration::from_millis(500 + sim.rand.next() % 1000);
        sim.run_for(gap);
        sim.pause(3 + round % 2, pause);
    }
    sim.run_for(Duration::from_secs(2));
    let suspicions = sim.count_since(start, |e| matches!(e, Event::MemberSuspect { .. }));
    let refutations = sim.count_since(start, |e| matches!(e, Event::Refuted { .. }));
    println!(
        "20 members, 1% loss, {rounds} pauses of {pause:?}: {suspicions} suspect events, {refutations} refutations"
    );
    assert_eq!(sim.deaths_since(start), vec![]);
    assert!(sim.converged(), "{}", sim.describe());
    (suspicions, refutations)
}

#[test]
fn a_member_paused_for_100_ms_is_never_declared_dead() {
    pauses(Duration::from_millis(100), 30, 5);
}

#[test]
fn a_member_paused_for_120_ms_is_suspected_and_refutes() {
    // Longer than the soak's pause: long enough to be suspected (one probe interval, 50 ms),
    // short of the probe interval plus the minimum suspicion (150 ms at defaults).
    let (suspicions, refutations) = pauses(Duration::from_millis(120), 20, 6);
    assert!(
        suspicions > 0 && refutations > 0,
        "the pauses were noticed and refuted"
    );
}

#[test]
fn a_graceful_leave_is_seen_at_once() {
    let mut sim = Sim::new(10, 9);
    sim.converge(Duration::from_secs(5));
    let now = sim.instant();
    let out = sim.nodes[4].swim.leave(now);
    let left_at = sim.now;
    sim.outputs(4, out);
    sim.run_for(Duration::from_millis(5));
    let seen = sim.count_since(
        left_at,
        |e| matches!(e, Event::MemberLeft { name, .. } if name == "node-4"),
    );
    assert_eq!(seen, 9, "within 5 ms of the leave");
    sim.crash(4);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.deaths_since(left_at),
        vec![],
        "a departed member is not declared dead"
    );
}

#[test]
fn a_healed_partition_reunites() {
    let mut sim = Sim::new(10, 11);
    sim.converge(Duration::from_secs(5));
    for i in 5..10 {
        sim.nodes[i].group = 1;
    }
    sim.run_for(Duration::from_secs(5));
    // Each side declared the other dead.
    let dead_on_0 = sim.nodes[0]
        .swim
        .members()
        .iter()
        .filter(|m| m.state == MemberState::Dead)
        .count();
    assert_eq!(dead_on_0, 5, "{}", sim.describe());
    for i in 5..10 {
        sim.nodes[i].group = 0;
    }
    let took = sim.converge(Duration::from_secs(5));
    println!("10 members, 5 s partition: all alive again everywhere {took:?} after healing");
}

#[test]
fn a_partition_longer_than_the_retention_reunites_through_the_seed() {
    let config = Config {
        dead_retention: Duration::from_secs(3),
        push_pull_interval: Duration::from_secs(2),
        ..Config::default()
    };
    let mut sim = Sim::with_config(6, 13, config);
    sim.converge(Duration::from_secs(5));
    for i in 3..6 {
        sim.nodes[i].group = 1;
    }
    let cut = sim.now;
    sim.run_for(Duration::from_secs(6));
    assert_eq!(
        sim.nodes[1].swim.members().len(),
        3,
        "the others were forgotten"
    );
    // Each of the 3 nodes on side 0 says so (its live set then drops them for good).
    let forgotten = sim.count_since(cut, |e| matches!(e, Event::MemberForgotten { .. }));
    assert!(forgotten >= 9, "forgotten events: {forgotten}");
    for i in 3..6 {
        sim.nodes[i].group = 0;
    }
    let took = sim.converge(Duration::from_secs(6));
    println!("6 members, partition beyond retention: reunited {took:?} after healing");
}

#[test]
fn a_restarted_member_rejoins_above_its_old_incarnation() {
    let mut sim = Sim::new(5, 17);
    sim.converge(Duration::from_secs(5));
    // Node 2 is suspected and refutes a few times, raising its incarnation.
    for _ in 0..3 {
        sim.pause(2, Duration::from_millis(400));
        sim.run_for(Duration::from_millis(800));
    }
    sim.crash(2);
    sim.run_for(Duration::from_secs(2));
    let base = sim.base;
    sim.nodes[2] = Node {
        swim: Swim::new(
            name(2),
            addr(2),
            2,
            vec![addr(0)],
            Config::default(),
            99,
            base + sim.now,
        ),
        run: Run::Up,
        group: 0,
    };
    let took = sim.converge(Duration::from_secs(5));
    println!(
        "restarted member back everywhere after {took:?} at incarnation {}",
        sim.nodes[2].swim.incarnation()
    );
}
