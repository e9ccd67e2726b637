//! Membership and failure detection between speakers: SWIM with Lifeguard's suspicion, over
//! UDP, every datagram sealed with the cluster key ([`ferrolb_proto::gossip`]).
//!
//! - [`Swim`]: the pure, deterministic state machine. `handle(from, packet, now)` and
//!   `tick(now)` return [`Output`]s: datagrams to send and [`Event`]s. Time is passed in; all
//!   randomness comes from a seeded generator it owns, so simulations replay exactly.
//! - [`Membership`]: the thin tokio shell: one UDP socket, the key ring, the tick timer; it
//!   publishes the live member set on a `watch` channel (the election's input), events on a
//!   broadcast channel, and [`Metrics`].
//!
//! # The protocol
//!
//! Every probe interval a node pings the next member of its own randomly ordered round
//! (reshuffled every round, newcomers inserted at a random place). No ack within the probe
//! timeout: it asks `indirect_checks` random members to ping the target for it (and pings once
//! more itself). No ack by the end of the interval: the target becomes *suspect*, and the suspect
//! is told at once (so a live one refutes in one round trip). Of the members hearing a new
//! suspicion, the `indirect_checks` ranked first by a hash of (suspect, incarnation, member)
//! ping the suspect once out of turn and, if that fails too, confirm it (every member checking
//! would make one slow member cost O(n) pings and confirmations); confirmations beyond
//! `indirect_checks` are not passed on. A suspect that hears of it raises
//! its incarnation and broadcasts `Alive`, which overrides the suspicion everywhere. A suspicion
//! nobody refutes turns into *dead* after a timeout that starts at `suspicion_max_mult` times
//! its minimum and shrinks (Lifeguard) as other members independently confirm it. The minimum is
//! `suspicion_mult × probe_interval`, scaled by `max(1, log10 n − 1)` (so flat up to 100
//! members): Lifeguard scales it by log n because a suspect learns of its suspicion by gossip,
//! but here the accuser tells the suspect directly and the suspect answers the accuser directly,
//! so refuting takes a round trip at any size; members who heard the rumour later also hear the
//! refutation later, by the same gossip. Updates ride piggybacked on every datagram
//! (recipient's own news first, then our own, then the least-sent), each about
//! `retransmit_mult × ⌈log10(n+1)⌉` times, plus a gossip round to `gossip_nodes` random members
//! every `gossip_interval` while anything is queued. Joiners push their table to the seeds and
//! get theirs back (push-pull, chunked to the datagram budget); a periodic push-pull, reconnect
//! attempts to dead members and to seeds we lost heal partitions. `Leave` is sent to every live
//! member directly.
//!
//! # Defaults, and the detection time they give
//!
//! Detection time = time until some member probes the crashed node (each of the n-1 others
//! probes one member per interval in a shuffled round, so the first probe comes after about
//! half an interval at 3 members, less at 50) + one probe interval (the direct timeout, the
//! retry and the indirect probes all fit in it) + the suspicion timeout (at its minimum once
//! `indirect_checks` others, or everyone at 3 members, confirmed with an out-of-turn check of
//! `2 × probe_timeout`). The failover target is a 300 ms median (p99 1 s) from the failure to
//! the client's first ARP reply from the new owner; the node loop reacts to the live set at
//! once and the announcer sends its gratuitous burst at once, so detection must stay near 200 ms.
//!
//! | knob | default | why |
//! |---|---|---|
//! | `probe_interval` | 50 ms | twenty probes a second per node: ~60 datagrams/s per node with acks and gossip, nothing for a LAN; halves the wait for the first probe against 100 ms |
//! | `probe_timeout` | 20 ms | a LAN round trip is < 1 ms; 20 ms absorbs scheduling hiccups and leaves 30 ms for the retry and the indirect round |
//! | `indirect_checks` | 3 | with 1 % loss a probe fails only if the direct ping, the retry and all three relayed paths fail (~10⁻⁶) |
//! | `suspicion_mult` | 2 | minimum suspicion 100 ms up to 100 members (200 ms at 1000): a live suspect is told directly and refutes in one round trip, hundreds of times faster |
//! | `suspicion_max_mult` | 3 | an unconfirmed lone accusation waits 3× longer (Lifeguard: the accuser may be the sick one) |
//! | `retransmit_mult` | 4 | each update piggybacked 4 × ⌈log10(n+1)⌉ times (memberlist's choice) |
//! | `gossip_interval` / `gossip_nodes` | 50 ms / 3 | news reaches everyone in a few tens of ms even when no probe carries it; suspicions and deaths go out in the tick they happen |
//! | `reconnect_interval` / `join_retry_interval` | 500 ms | a healed partition is found within half a second by each side (so one owner per IP within 1 s); a node whose own link comes back reaches out at once ([`Membership::rejoiner`]) |
//!
//! Simulated (`speaker/tests/membership_sim.rs`, virtual time, crash at a random phase, time
//! until *every* member declared it dead): 3 members median 186 ms, p90 211 ms, max 238 ms;
//! 50 members median 203 ms, p90 256 ms, max 395 ms. The old defaults (100 ms probes, 200 ms
//! suspicion) gave 361 / 448 ms.
//!
//! The price is stall tolerance: a member stalled (SIGSTOP, CPU starvation) for longer than one
//! probe interval plus the minimum suspicion, 150 ms, is declared dead (and rejoins at once when
//! it runs again). A 100 ms stall costs at most a refuted suspicion: the simulation checks 100 ms
//! (never dead) and 120 ms (suspected, refuted) with 1 % loss, and a stalled node itself drops
//! the probe it could not finish instead of accusing its target. Clusters with worse stalls
//! raise `--membership-suspicion-mult` (each step adds 50 ms to both detection and tolerance).
//!
//! Default UDP port: **7946**, the port of MetalLB's memberlist, so firewall rules written for
//! MetalLB keep working; the protocols differ (and refuse each other by the envelope's magic),
//! so do not run both on one node with the same port.

mod drops;
mod metrics;
mod rng;
mod shell;
mod swim;

pub use ferrolb_proto::gossip::MemberState;
pub use metrics::{Metrics, MetricsSnapshot};
pub use shell::{LiveSet, Membership, MembershipConfig, MembershipError, Rejoin};
pub use swim::{Event, Member, Output, Swim};

use std::time::Duration;

/// The default UDP port of the membership protocol.
pub const DEFAULT_PORT: u16 = 7946;

/// Every knob of the protocol; defaults in the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How often each node probes one member.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe.
    pub probe_timeout: Duration,
    /// How many members to ask for an indirect probe (and how many independent confirmations
    /// bring a suspicion to its minimum timeout).
    pub indirect_checks: usize,
    /// Minimum suspicion timeout, in probe intervals, before the log10(n) scale.
    pub suspicion_mult: u32,
    /// Maximum (unconfirmed) suspicion timeout, as a multiple of the minimum.
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked `retransmit_mult × ⌈log10(n+1)⌉` times.
    pub retransmit_mult: u32,
    /// How often queued updates are gossiped to random members.
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to.
    pub gossip_nodes: usize,
    /// How long dead members keep receiving gossip (so a cut-off one learns and refutes).
    pub gossip_to_dead: Duration,
    /// How often a full state exchange (push-pull) runs with a random member or a lost seed.
    pub push_pull_interval: Duration,
    /// How often a node with no live peer retries its seeds.
    pub join_retry_interval: Duration,
    /// How often a push-pull goes to one random dead member (partition healing).
    pub reconnect_interval: Duration,
    /// How long dead and departed members are remembered.
    pub dead_retention: Duration,
    /// Largest datagram sent, envelope included: below any LAN MTU, IPv6 headers included.
    pub max_datagram: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(20),
            indirect_checks: 3,
            suspicion_mult: 2,
            suspicion_max_mult: 3,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(50),
            gossip_nodes: 3,
            gossip_to_dead: Duration::from_secs(10),
            push_pull_interval: Duration::from_secs(10),
            join_retry_interval: Duration::from_millis(500),
            reconnect_interval: Duration::from_millis(500),
            dead_retention: Duration::from_secs(60),
            max_datagram: 1200,
        }
    }
}

impl Config {
    /// The suspicion timeout once fully confirmed, for `live` live members: `suspicion_mult`
    /// probe intervals up to 100 members, growing with log10 beyond (2× at 1000).
    pub fn suspicion_min(&self, live: usize) -> Duration {
        let scale = ((live.max(1) as f64).log10() - 1.0).max(1.0);
        (self.probe_interval * self.suspicion_mult).mul_f64(scale)
    }

    /// How long an out-of-turn check of someone else's suspect waits for its ack before
    /// confirming the suspicion: two probe timeouts (a LAN round trip is far below one),
    /// at most one probe interval.
    pub fn check_timeout(&self) -> Duration {
        (self.probe_timeout * 2).min(self.probe_interval)
    }

    /// How many times one update is piggybacked, for `live` live members.
    pub fn retransmit_limit(&self, live: usize) -> u32 {
        let scale = ((live + 1) as f64).log10().ceil().max(1.0) as u32;
        self.retransmit_mult.saturating_mul(scale).max(1)
    }
}
