//! Counters and gauges of the membership loop, kept in atomics so the (later) Prometheus
//! exporter and tests read them without talking to the loop.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ferrolb_proto::gossip::Reason;

use super::{Event, Member, MemberState};

/// Figures of one membership loop. Gauges are set, counters only grow.
#[derive(Debug, Default)]
pub struct Metrics {
    pub members_alive: AtomicU64,
    pub members_suspect: AtomicU64,
    pub members_dead: AtomicU64,
    pub members_left: AtomicU64,
    pub joins: AtomicU64,
    pub suspicions: AtomicU64,
    pub refuted_suspicions: AtomicU64,
    pub deaths: AtomicU64,
    pub leaves: AtomicU64,
    /// Suspicions of this node that it refuted.
    pub refutations: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub send_errors: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    /// How long each member declared dead here had been suspected, not yet taken by the
    /// exporter (bounded: the oldest are dropped past [`MAX_PENDING_DETECTIONS`]).
    detections: Mutex<Vec<Duration>>,
    last_answer: Mutex<Option<std::time::Instant>>,
    /// The membership socket's inode, to read its drops by.
    socket_inode: Mutex<Option<u64>>,
}

/// Detection times kept for the exporter between two reads.
const MAX_PENDING_DETECTIONS: usize = 1024;

/// A plain copy of [`Metrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub members_alive: u64,
    pub members_suspect: u64,
    pub members_dead: u64,
    pub members_left: u64,
    pub joins: u64,
    pub suspicions: u64,
    pub refuted_suspicions: u64,
    pub deaths: u64,
    pub leaves: u64,
    pub refutations: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the socket (its receive buffer was full).
    pub receive_drops: u64,
    /// Rejected datagrams by reason, in [`Reason::ALL`] order.
    pub rejected: Vec<(Reason, u64)>,
}

impl Metrics {
    pub(crate) fn set_socket(&self, inode: Option<u64>) {
        *self
            .socket_inode
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = inode;
    }

    /// Datagrams the kernel dropped at the membership socket so far (reads `/proc/net/udp`).
    pub fn receive_drops(&self) -> u64 {
        let inode = *self
            .socket_inode
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inode.and_then(super::drops::read).unwrap_or(0)
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.slot(reason).load(Relaxed)
    }

    /// Rejections of every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub(crate) fn count_rejected(&self, reason: Reason) {
        self.slot(reason).fetch_add(1, Relaxed);
    }

    fn slot(&self, reason: Reason) -> &AtomicU64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        // `rejected` has one slot per entry of Reason::ALL.
        &self.rejected[i]
    }

    pub(crate) fn count_event(&self, event: &Event) {
        let counter = match event {
            Event::MemberUp(_) => &self.joins,
            Event::MemberSuspect { .. } => &self.suspicions,
            Event::MemberAlive { .. } => &self.refuted_suspicions,
            Event::MemberDead { suspected_for, .. } => {
                if let Some(d) = suspected_for
                    && let Ok(mut pending) = self.detections.lock()
                {
                    if pending.len() >= MAX_PENDING_DETECTIONS {
                        pending.remove(0);
                    }
                    pending.push(*d);
                }
                &self.deaths
            }
            Event::MemberLeft { .. } => &self.leaves,
            Event::Refuted { .. } => &self.refutations,
            Event::MemberForgotten { .. } => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_members(&self, members: &[Member]) {
        let count = |state| members.iter().filter(|m| m.state == state).count() as u64;
        self.members_alive.store(count(MemberState::Alive), Relaxed);
        self.members_suspect
            .store(count(MemberState::Suspect), Relaxed);
        self.members_dead.store(count(MemberState::Dead), Relaxed);
        self.members_left.store(count(MemberState::Left), Relaxed);
    }

    /// The detection times recorded since the last call (for a histogram): how long each
    /// member declared dead had been suspected by this node.
    pub fn take_detections(&self) -> Vec<Duration> {
        self.detections
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending))
            .unwrap_or_default()
    }

    /// When a member last answered this node (an ack or a push-pull reply): datagrams get
    /// through both ways. Self-fencing waits for one after a link comes back.
    pub fn last_answer(&self) -> Option<std::time::Instant> {
        self.last_answer.lock().ok().and_then(|a| *a)
    }

    pub(crate) fn set_last_answer(&self, at: Option<std::time::Instant>) {
        if let Ok(mut a) = self.last_answer.lock() {
            *a = at;
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            members_alive: self.members_alive.load(Relaxed),
            members_suspect: self.members_suspect.load(Relaxed),
            members_dead: self.members_dead.load(Relaxed),
            members_left: self.members_left.load(Relaxed),
            joins: self.joins.load(Relaxed),
            suspicions: self.suspicions.load(Relaxed),
            refuted_suspicions: self.refuted_suspicions.load(Relaxed),
            deaths: self.deaths.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
            refutations: self.refutations.load(Relaxed),
            datagrams_sent: self.datagrams_sent.load(Relaxed),
            datagrams_received: self.datagrams_received.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            receive_drops: self.receive_drops(),
            rejected: Reason::ALL
                .iter()
                .map(|r| (*r, self.rejected(*r)))
                .collect(),
        }
    }
}
