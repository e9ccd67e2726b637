//! Connections in flight across a move: when this node takes an IP over from a node whose
//! kernel still forwards (it left gracefully, or it is alive and the election moved the IP),
//! the TCP packets of connections made through that node are sent on to it instead of being
//! reset here.
//!
//! Why they would be reset: the client's ARP entry moves at once, so the next packet of a
//! connection opened through the previous owner arrives here. kube-proxy (with
//! `externalTrafficPolicy: Cluster`) NATs it to a backend with this node's address as source,
//! the backend knows no such connection and answers with a reset. The previous owner's
//! conntrack still has the connection, with the source address the backend knows: sent there
//! (the packet unchanged, only the link-layer destination), it is served, and the reply goes
//! from that node straight to the client. This is GitHub GLB's "second chance" for a layer-2
//! load balancer. [`crate::nftables`] writes the rule; this module decides what to carry, and
//! [`Carrier`] (its shell) keeps the kernel in step with the decision.
//!
//! What is carried, per IP this node owns: TCP packets without SYN that this node's conntrack
//! has never seen (new connections, and everything the node already tracks, stay here), to the
//! node that announced the IP before. Carrying ends when this node stops owning the IP, or
//! when that node is declared dead or forgotten by the membership (a crashed node's
//! connections are gone; a reset is then the better answer than silence).
//!
//! Who announced the IP before: the owner of the previous decision, when another node. When
//! the previous decision gave the IP to this node itself without it holding the IP (it
//! decided alone before joining, or while fenced), or at this node's first decision, the node
//! the election picks without this one, which is the node that held the IP while this one was
//! away, provided some speaker recorded announcing the Service. An IP nobody was given before
//! (a new Service) is carried nowhere.

mod shell;

pub use shell::{Carrier, remove_tables};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::announcements::{Decision, Outcome};
use crate::nftables::CarryRule;

/// The IPs this node carries, and to which node.
#[derive(Debug, Default)]
pub struct Carries {
    /// The IPs this node owned after the last step.
    held: BTreeSet<IpAddr>,
    /// Owned IP → the node that announced it before this node.
    from: BTreeMap<IpAddr, String>,
    /// Whether a step ran before (the first has no previous decisions to go by).
    stepped: bool,
}

/// What one step needs besides the owned set.
pub struct Step<'a, W> {
    pub me: &'a str,
    /// The decisions of the previous step.
    pub before: &'a [Decision],
    /// The decisions as if this node were not live; called at most once, only if needed.
    pub without_me: W,
    /// The Services (`namespace/name`) some speaker has recorded announcing: only those can
    /// have connections in flight when the history of this node's decisions says nothing.
    pub announced: &'a BTreeSet<String>,
}

impl<W> std::fmt::Debug for Step<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("me", &self.me)
            .field("before", &self.before)
            .finish_non_exhaustive()
    }
}

impl Carries {
    /// Follows the owned set (after self-fencing) to its new value and returns the rules:
    /// `reach(node, ip)` is the address of `node` in `ip`'s family if its kernel still
    /// forwards (live, or departed gracefully), `None` otherwise (dead, forgotten, or no
    /// address of that family).
    pub fn step<W>(
        &mut self,
        owned: &BTreeSet<IpAddr>,
        step: Step<'_, W>,
        reach: impl Fn(&str, IpAddr) -> Option<IpAddr>,
    ) -> Vec<CarryRule>
    where
        W: FnOnce() -> Vec<Decision>,
    {
        self.from.retain(|ip, _| owned.contains(ip));
        let mut without_me = Some(step.without_me);
        let mut alternative: Option<Vec<Decision>> = None;
        let first = !std::mem::replace(&mut self.stepped, true);
        for ip in owned.difference(&self.held) {
            let before = step.before.iter().find(|d| d.ips.contains(ip));
            let previous = match before.map(|d| (owner(d), &d.service)) {
                Some((Some(node), _)) if node != step.me => Some(node),
                // Given to this node, which did not hold it (alone before joining, or fenced),
                // or the first step: the node that held it meanwhile, if anyone announced it.
                Some((Some(_), _)) | None if first || before.is_some() => {
                    let decisions = alternative
                        .get_or_insert_with(|| without_me.take().map(|w| w()).unwrap_or_default());
                    decisions
                        .iter()
                        .find(|d| d.ips.contains(ip) && step.announced.contains(&d.service))
                        .and_then(owner)
                        .filter(|node| *node != step.me)
                }
                // A Service new since the last step, or one nobody announced.
                _ => None,
            }
            .map(str::to_owned);
            if let Some(node) = previous {
                self.from.insert(*ip, node);
            }
        }
        self.held = owned.clone();
        let mut rules = Vec::new();
        self.from.retain(|ip, node| match reach(node, *ip) {
            Some(to) => {
                rules.push(CarryRule { vip: *ip, to });
                true
            }
            None => false,
        });
        rules
    }

    /// The node each carried IP goes to.
    pub fn carried(&self) -> &BTreeMap<IpAddr, String> {
        &self.from
    }
}

/// The node a decision gives its IPs to, if any.
fn owner(decision: &Decision) -> Option<&str> {
    match &decision.outcome {
        Outcome::Announced { node, .. } => Some(node.as_str()),
        Outcome::NotAnnounced(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcements::{Interfaces, Reason};

    const VIP: &str = "10.250.0.100";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn decided(owner: Option<&str>) -> Vec<Decision> {
        vec![Decision {
            service: "demo/web".into(),
            ips: vec![ip(VIP)],
            outcome: match owner {
                Some(node) => Outcome::Announced {
                    node: node.into(),
                    interfaces: Interfaces::All,
                },
                None => Outcome::NotAnnounced(Reason::NoCandidate),
            },
        }]
    }

    /// The Service of [`decided`], recorded as announced.
    fn announced() -> BTreeSet<String> {
        ["demo/web".to_owned()].into()
    }

    fn owned(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|i| ip(i)).collect()
    }

    /// Every node reachable at 10.250.0.<its number>.
    fn everyone(node: &str, _: IpAddr) -> Option<IpAddr> {
        let n: u8 = node.trim_start_matches('n').parse().ok()?;
        Some(IpAddr::from([10, 250, 0, n]))
    }

    fn never() -> Vec<Decision> {
        panic!("the election without this node was not needed")
    }

    #[test]
    fn an_ip_taken_over_from_a_departed_owner_is_carried_to_it() {
        let mut carries = Carries::default();
        let step = Step {
            me: "n2",
            before: &decided(Some("n1")),
            without_me: never,
            announced: &announced(),
        };
        let rules = carries.step(&owned(&[VIP]), step, everyone);
        assert_eq!(
            rules,
            vec![CarryRule {
                vip: ip(VIP),
                to: ip("10.250.0.1")
            }]
        );
        // Still owned at the next step: still carried, whatever the decisions say now.
        let step = Step {
            me: "n2",
            before: &decided(Some("n2")),
            without_me: never,
            announced: &announced(),
        };
        assert_eq!(carries.step(&owned(&[VIP]), step, everyone).len(), 1);
    }

    #[test]
    fn a_returning_node_carries_to_the_node_that_held_the_ip_meanwhile() {
        let mut carries = Carries::default();
        // Its first decisions ran alone (or fenced), giving the IP to itself.
        let step = Step {
            me: "n1",
            before: &decided(Some("n1")),
            without_me: || decided(Some("n3")),
            announced: &announced(),
        };
        let rules = carries.step(&owned(&[VIP]), step, everyone);
        assert_eq!(rules[0].to, ip("10.250.0.3"));
        assert_eq!(carries.carried()[&ip(VIP)], "n3");
    }

    #[test]
    fn carrying_ends_with_ownership_or_with_the_previous_owner() {
        let mut carries = Carries::default();
        let before = decided(Some("n1"));
        let recorded = announced();
        let take = |carries: &mut Carries, reach: &dyn Fn(&str, IpAddr) -> Option<IpAddr>| {
            let step = Step {
                me: "n2",
                before: &before,
                without_me: never,
                announced: &recorded,
            };
            carries.step(&owned(&[VIP]), step, reach)
        };
        assert_eq!(take(&mut carries, &everyone).len(), 1);
        // n1 declared dead: no longer carried, and not again once it is back.
        assert!(take(&mut carries, &|_, _| None).is_empty());
        assert!(take(&mut carries, &everyone).is_empty());

        let mut carries = Carries::default();
        assert_eq!(take(&mut carries, &everyone).len(), 1);
        let step = Step {
            me: "n2",
            before: &before,
            without_me: never,
            announced: &announced(),
        };
        assert!(carries.step(&owned(&[]), step, everyone).is_empty());
    }

    #[test]
    fn nothing_is_carried_without_another_previous_owner() {
        for (before, without_me) in [
            // A Service nobody announced before: nothing to carry, whoever would hold it.
            (decided(None), decided(Some("n3"))),
            // A Service new since the last step: the same.
            (vec![], decided(Some("n3"))),
            (decided(Some("n2")), decided(Some("n2"))),
        ] {
            let mut carries = Carries::default();
            let first = Step {
                me: "n2",
                before: &[],
                without_me: Vec::new,
                announced: &announced(),
            };
            assert!(carries.step(&owned(&[]), first, everyone).is_empty());
            let step = Step {
                me: "n2",
                before: &before,
                without_me: || without_me,
                announced: &announced(),
            };
            assert!(carries.step(&owned(&[VIP]), step, everyone).is_empty());
        }
    }

    #[test]
    fn a_first_step_carries_only_a_recorded_service_to_the_node_that_held_it() {
        for (recorded, expected) in [(announced(), Some("n3")), (BTreeSet::new(), None)] {
            let mut carries = Carries::default();
            // The membership joined before this node's first decision.
            let step = Step {
                me: "n1",
                before: &[],
                without_me: || decided(Some("n3")),
                announced: &recorded,
            };
            carries.step(&owned(&[VIP]), step, everyone);
            assert_eq!(
                carries.carried().get(&ip(VIP)).map(String::as_str),
                expected
            );
        }
    }

    #[test]
    fn an_ip_owned_all_along_is_not_carried_later() {
        let mut carries = Carries::default();
        let step = Step {
            me: "n2",
            before: &[],
            without_me: || decided(Some("n2")),
            announced: &announced(),
        };
        assert!(carries.step(&owned(&[VIP]), step, everyone).is_empty());
        // The previous decisions now name another node, but the IP never left this one.
        let step = Step {
            me: "n2",
            before: &decided(Some("n1")),
            without_me: never,
            announced: &announced(),
        };
        assert!(carries.step(&owned(&[VIP]), step, everyone).is_empty());
    }
}
