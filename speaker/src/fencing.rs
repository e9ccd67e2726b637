//! Self-fencing: whether this node may announce at all, from its own links and the membership.
//!
//! A node alone in the live set cannot tell, from the membership alone, whether the others died
//! (it must keep serving: a lone survivor is the whole point of failover) or whether it is the
//! one cut off (it must not answer: the others elected new owners, and a returning node that
//! announces everything at once makes two owners per IP). Its own links are the evidence:
//!
//! - **Doubt** arises when the node starts (it has not heard from anyone yet) and when one of
//!   its announcing-capable links loses its carrier or goes down.
//! - A node **alone** in the live set while the cluster lists other nodes, with doubt, is
//!   **fenced**: it announces nothing.
//! - Doubt ends when a peer is live again with every link up (the election then includes
//!   everyone), or when every link has been up for `hold` and still no peer answered: then the
//!   others really are gone and the node serves alone.
//!
//! Mere absence of peers, with no link of ours lost, is not doubt: a switch partition looks the
//! same as the death of every other node, and treating it as a partition would take a lone
//! survivor's IPs offline. `docs/failure-modes.md` walks through each case.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::interfaces::{self, ExcludePatterns, Link};

/// How long a node with every link up waits for a peer before concluding it is alone.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);

/// Why the node doubts that being alone means the others are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// Just started: not joined yet.
    Starting,
    /// One of its own links lost its carrier or went down.
    LinkLost,
}

/// What [`Fence::verdict`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Announce nothing.
    pub fenced: bool,
    /// Why, when fenced.
    pub doubt: Option<Doubt>,
    /// Ask again at this instant (the hold may end then).
    pub recheck_at: Option<Instant>,
}

/// The fencing state of one node.
#[derive(Debug, Clone)]
pub struct Fence {
    hold: Duration,
    exclude: ExcludePatterns,
    doubt: Option<Doubt>,
    /// When the last lost link came back (or the node started): the hold runs from here.
    quiet_since: Instant,
    /// Announcing-capable links that lost their carrier or went down.
    down: BTreeSet<String>,
    /// Links seen up with carrier.
    up: BTreeSet<String>,
}

impl Fence {
    pub fn new(hold: Duration, exclude: ExcludePatterns, now: Instant) -> Self {
        Fence {
            hold,
            exclude,
            doubt: Some(Doubt::Starting),
            quiet_since: now,
            down: BTreeSet::new(),
            up: BTreeSet::new(),
        }
    }

    /// Takes the node's links as they are now. Returns true when a lost link came back (the
    /// caller should make the membership reach out at once).
    pub fn links(&mut self, links: &[Link], now: Instant) -> bool {
        let mut came_back = false;
        let mut up_now = BTreeSet::new();
        for link in links {
            // Links that could announce if they were up: the ones whose loss matters.
            let capable = Link {
                up: true,
                carrier: true,
                ..link.clone()
            };
            if interfaces::check(&capable, &self.exclude).is_err() {
                continue;
            }
            if link.up && link.carrier {
                up_now.insert(link.name.clone());
                if self.down.remove(&link.name) {
                    came_back = true;
                }
            } else if self.up.contains(&link.name) && self.down.insert(link.name.clone()) {
                self.doubt = Some(Doubt::LinkLost);
            }
        }
        // A link that vanished altogether is no longer waited for.
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        self.down.retain(|name| names.contains(name.as_str()));
        self.up = up_now;
        if came_back && self.down.is_empty() {
            self.quiet_since = now;
        }
        came_back
    }

    /// Whether the node may announce: `alone` when the live set holds only this node,
    /// `others_listed` when the cluster lists other nodes it could share the work with,
    /// `last_answer` when a member last answered this node (proof that datagrams get through
    /// both ways; the live set alone may be stale right after a link comes back).
    pub fn verdict(
        &mut self,
        alone: bool,
        others_listed: bool,
        last_answer: Option<Instant>,
        now: Instant,
    ) -> Verdict {
        let links_ok = self.down.is_empty();
        if self.doubt.is_some() && links_ok {
            let answered = last_answer.is_some_and(|at| at > self.quiet_since);
            let held = now.saturating_duration_since(self.quiet_since) >= self.hold;
            if answered || held || !others_listed {
                self.doubt = None;
            }
        }
        // While a link is down the node still serves on its other links unless it is alone;
        // once every link is back it waits for an answer (or the hold) before serving.
        let fenced = others_listed && self.doubt.is_some() && (alone || links_ok);
        let recheck_at =
            (fenced && links_ok).then(|| (self.quiet_since + self.hold).min(now + ANSWER_POLL));
        Verdict {
            fenced,
            doubt: if fenced { self.doubt } else { None },
            recheck_at,
        }
    }
}

/// How often a fenced node looks for an answer from a member.
const ANSWER_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_proto::wire::MacAddr;

    fn eth0(up: bool) -> Vec<Link> {
        vec![
            Link {
                name: "lo".into(),
                index: 1,
                mac: None,
                up: true,
                carrier: true,
                broadcast: false,
                noarp: true,
                master: None,
            },
            Link {
                name: "eth0".into(),
                index: 2,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                up: true,
                carrier: up,
                broadcast: true,
                noarp: false,
                master: None,
            },
        ]
    }

    const HOLD: Duration = Duration::from_secs(2);
    const MS: Duration = Duration::from_millis(1);

    fn fence(t0: Instant) -> Fence {
        let mut f = Fence::new(HOLD, ExcludePatterns::default(), t0);
        f.links(&eth0(true), t0);
        f
    }

    #[test]
    fn a_starting_node_waits_for_an_answer_then_serves() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        let v = f.verdict(true, true, None, t0);
        assert!(v.fenced);
        assert_eq!(v.recheck_at, Some(t0 + ANSWER_POLL));
        assert!(
            f.verdict(false, true, None, t0 + MS).fenced,
            "known, not answered"
        );
        assert!(!f.verdict(false, true, Some(t0 + MS), t0 + MS * 2).fenced);
        assert!(
            !f.verdict(true, true, None, t0 + HOLD * 3).fenced,
            "peers dying later: serve"
        );
    }

    #[test]
    fn a_starting_node_nobody_answers_serves_alone_after_the_hold() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(f.verdict(true, true, None, t0 + HOLD / 2).fenced);
        assert!(!f.verdict(true, true, None, t0 + HOLD).fenced);
        assert!(!f.verdict(true, true, None, t0 + HOLD * 3).fenced);
    }

    #[test]
    fn a_single_node_cluster_is_never_fenced() {
        let t0 = Instant::now();
        assert!(!fence(t0).verdict(true, false, None, t0).fenced);
    }

    #[test]
    fn a_lone_survivor_keeps_serving() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(!f.verdict(false, true, Some(t0 + MS), t0 + MS).fenced);
        // Both peers crash: alone, but its own link never failed.
        assert!(!f.verdict(true, true, Some(t0 + MS), t0 + HOLD * 5).fenced);
    }

    #[test]
    fn a_node_whose_link_was_cut_stays_fenced_until_answered() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(!f.verdict(false, true, Some(t0 + MS), t0 + MS).fenced);
        let t1 = t0 + Duration::from_secs(10);
        assert!(!f.links(&eth0(false), t1));
        assert!(
            !f.verdict(false, true, Some(t0 + MS), t1).fenced,
            "not alone yet"
        );
        let v = f.verdict(true, true, Some(t0 + MS), t1 + MS * 300);
        assert!(v.fenced);
        assert_eq!(v.doubt, Some(Doubt::LinkLost));
        assert_eq!(v.recheck_at, None, "no hold while the link is down");
        assert!(f.verdict(true, true, Some(t0 + MS), t1 + HOLD * 30).fenced);
        let t2 = t1 + HOLD * 31;
        assert!(f.links(&eth0(true), t2), "link back: rejoin");
        // Back, its stale view still lists the others as live: fenced until one answers.
        assert!(f.verdict(false, true, Some(t0 + MS), t2 + MS).fenced);
        assert!(f.verdict(true, true, Some(t0 + MS), t2 + MS * 2).fenced);
        assert!(
            !f.verdict(false, true, Some(t2 + MS * 3), t2 + MS * 3)
                .fenced
        );
    }

    #[test]
    fn a_short_blip_fences_only_until_the_next_answer() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(!f.verdict(false, true, Some(t0 + MS), t0).fenced);
        f.links(&eth0(false), t0 + MS);
        assert!(
            !f.verdict(false, true, Some(t0 + MS), t0 + MS * 2).fenced,
            "not alone: serve on"
        );
        f.links(&eth0(true), t0 + MS * 30);
        assert!(f.verdict(false, true, Some(t0 + MS), t0 + MS * 31).fenced);
        assert!(
            !f.verdict(false, true, Some(t0 + MS * 40), t0 + MS * 40)
                .fenced
        );
    }

    #[test]
    fn a_cut_node_whose_peers_died_meanwhile_serves_after_the_hold() {
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(!f.verdict(false, true, Some(t0 + MS), t0).fenced);
        f.links(&eth0(false), t0 + MS);
        assert!(f.verdict(true, true, Some(t0 + MS), t0 + HOLD).fenced);
        let back = t0 + HOLD * 2;
        f.links(&eth0(true), back);
        assert!(f.verdict(true, true, Some(t0 + MS), back + HOLD / 2).fenced);
        assert!(!f.verdict(true, true, Some(t0 + MS), back + HOLD).fenced);
    }
}
