//! Self-fencing: whether this node may announce at all, from its own links and the membership.
//!
//! A node alone in the live set cannot tell, from the membership alone, whether the others died
//! or whether it is the one cut off; [`crate::quorum`] decides what it may take over. Its own
//! links are further evidence, and they say more than the count:
//!
//! - When the link that carries the membership (the one holding the node's membership address)
//!   loses its carrier or goes down, the others will declare this node dead within a few hundred
//!   milliseconds and take its IPs over, on every segment. The node is **fenced** at once, on
//!   every interface: answering on another link until it notices it is alone would make two
//!   owners there.
//! - When another announcing-capable link goes down, **doubt** arises: a node alone in the live
//!   set with doubt, while the cluster lists other nodes, is fenced.
//! - Doubt ends when a peer answers again with every link up (the election then includes
//!   everyone), or when every link has been up for `hold` and still no peer answered.
//!
//! Mere absence of peers, with no link of ours lost, is not doubt: the quorum rules that case.
//! `docs/failure-modes.md` walks through each case.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::interfaces::{self, ExcludePatterns, Link};

/// How long a node with every link up waits for a peer before concluding it is alone.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);

/// Why the node doubts that being alone means the others are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// One of its own links lost its carrier or went down.
    LinkLost,
    /// The link carrying the membership lost its carrier or went down.
    MembershipLinkLost,
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
    /// The link holding the node's membership address, if known.
    membership_link: Option<String>,
    /// That link is down now.
    membership_cut: bool,
    doubt: Option<Doubt>,
    /// When the last lost link came back (or the node started): the hold runs from here.
    quiet_since: Instant,
    /// Announcing-capable links that lost their carrier or went down.
    down: BTreeSet<String>,
    /// Links seen up with carrier.
    up: BTreeSet<String>,
}

impl Fence {
    pub fn new(
        hold: Duration,
        exclude: ExcludePatterns,
        membership_link: Option<String>,
        now: Instant,
    ) -> Self {
        Fence {
            hold,
            exclude,
            membership_link,
            membership_cut: false,
            doubt: None,
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
        if let Some(name) = &self.membership_link {
            let up = links
                .iter()
                .find(|l| l.name == *name)
                .is_some_and(|l| l.up && l.carrier);
            if !up && !self.membership_cut {
                self.doubt = Some(Doubt::MembershipLinkLost);
            }
            came_back |= up && self.membership_cut;
            self.membership_cut = !up;
        }
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
                self.doubt.get_or_insert(Doubt::LinkLost);
            }
        }
        // A link that vanished altogether is no longer waited for.
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        self.down.retain(|name| names.contains(name.as_str()));
        self.up = up_now;
        if came_back && self.down.is_empty() && !self.membership_cut {
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
        let links_ok = self.down.is_empty() && !self.membership_cut;
        if self.doubt.is_some() && links_ok {
            let answered = last_answer.is_some_and(|at| at > self.quiet_since);
            let held = now.saturating_duration_since(self.quiet_since) >= self.hold;
            if answered || held || !others_listed {
                self.doubt = None;
            }
        }
        // While a link other than the membership's is down the node still serves on its other
        // links unless it is alone; once every link is back it waits for an answer (or the
        // hold) before serving.
        let fenced =
            others_listed && self.doubt.is_some() && (alone || links_ok || self.membership_cut);
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
        let mut f = Fence::new(HOLD, ExcludePatterns::default(), None, t0);
        f.links(&eth0(true), t0);
        f
    }

    #[test]
    fn a_starting_node_is_not_fenced_by_its_links() {
        // Whether it may serve before meeting a peer is the quorum's call, not the links'.
        let t0 = Instant::now();
        let mut f = fence(t0);
        assert!(!f.verdict(true, true, None, t0).fenced);
    }

    fn two_nics(eth0_up: bool, eth1_up: bool) -> Vec<Link> {
        let mut links = eth0(eth0_up);
        links.push(Link {
            name: "eth1".into(),
            index: 3,
            mac: Some(MacAddr([2, 0, 0, 0, 1, 1])),
            carrier: eth1_up,
            ..links[1].clone()
        });
        links
    }

    #[test]
    fn losing_the_membership_link_fences_at_once_on_every_link() {
        let t0 = Instant::now();
        let mut f = Fence::new(HOLD, ExcludePatterns::default(), Some("eth0".into()), t0);
        f.links(&two_nics(true, true), t0);
        assert!(!f.verdict(false, true, Some(t0), t0).fenced);
        // eth1 down: the membership still runs over eth0, the others still count this node.
        f.links(&two_nics(true, false), t0 + MS);
        assert!(
            !f.verdict(false, true, Some(t0), t0 + MS).fenced,
            "serves on eth0"
        );
        f.links(&two_nics(true, true), t0 + MS * 2);
        assert!(
            !f.verdict(false, true, Some(t0 + MS * 3), t0 + MS * 3)
                .fenced
        );
        // eth0 down: not alone yet, but the others are about to declare it dead.
        f.links(&two_nics(false, true), t0 + MS * 4);
        let v = f.verdict(false, true, Some(t0 + MS * 3), t0 + MS * 4);
        assert!(v.fenced, "fenced before anyone takes over");
        assert_eq!(v.doubt, Some(Doubt::MembershipLinkLost));
        // Back: fenced until a member answers after the link returned.
        assert!(f.links(&two_nics(true, true), t0 + MS * 10));
        assert!(
            f.verdict(false, true, Some(t0 + MS * 3), t0 + MS * 11)
                .fenced
        );
        assert!(
            !f.verdict(false, true, Some(t0 + MS * 12), t0 + MS * 12)
                .fenced
        );
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
