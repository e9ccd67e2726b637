//! Whether this node may take Service IPs over, from how much of the cluster it can see. A
//! speaker cut off from the others sees them all dead, exactly as a survivor sees its dead peers;
//! only counting tells the two apart.
//!
//! - **Majority**: more than half of the speakers it knows of are live, itself included: it takes
//!   over whatever the election gives it.
//! - **Half**: exactly half (a two-node cluster with one node down, two of four): it keeps what it
//!   announces and takes over an IP another speaker announced, once the wire shows that nobody
//!   answers for it any more ([`crate::lifecycle::Start::Check`]); it starts no IP that nobody
//!   ever announced.
//! - **Minority**: fewer: it keeps the IPs it already announces and takes nothing else. The
//!   majority, if there is one, takes the rest, after checking the wire: an IP the minority still
//!   answers for is left to it.
//! - **Unadmitted**: it has not seen a single peer since it started, while others are listed: it
//!   announces nothing. A speaker with the wrong key, behind a firewalled port, or still joining
//!   must not answer beside the real owners.
//!
//! The speakers it knows of are those listed (the Node objects in standalone mode, the nodes
//! running a speaker pod on Kubernetes) and every live member. A node listed but never running a
//! speaker counts against the majority: list only the nodes that run one.

use std::collections::BTreeSet;
use std::fmt;

/// How much of the cluster this node sees; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quorum {
    Unadmitted,
    Minority,
    Half,
    Majority,
}

impl Quorum {
    /// The label the `ferrolb_speaker_quorum` metric and the status use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Quorum::Majority => "majority",
            Quorum::Half => "half",
            Quorum::Minority => "minority",
            Quorum::Unadmitted => "unadmitted",
        }
    }

    pub const ALL: [Quorum; 4] = [
        Quorum::Majority,
        Quorum::Half,
        Quorum::Minority,
        Quorum::Unadmitted,
    ];
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `me`'s quorum: `listed` the speakers the backend lists, `live` the members alive or suspect
/// (this node among them), `admitted` whether any other member has been live since it started.
pub fn quorum<'a>(
    me: &'a str,
    listed: &BTreeSet<String>,
    live: impl IntoIterator<Item = &'a str>,
    admitted: bool,
) -> Quorum {
    let live: BTreeSet<&str> = live.into_iter().chain([me]).collect();
    let known: BTreeSet<&str> = listed
        .iter()
        .map(String::as_str)
        .chain(live.iter().copied())
        .collect();
    if known.len() == 1 {
        // A cluster of one: nobody to be split from.
        return Quorum::Majority;
    }
    if !admitted {
        return Quorum::Unadmitted;
    }
    match (live.len() * 2).cmp(&known.len()) {
        std::cmp::Ordering::Greater => Quorum::Majority,
        std::cmp::Ordering::Equal => Quorum::Half,
        std::cmp::Ordering::Less => Quorum::Minority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn three_nodes_tolerate_one_loss() {
        let three = listed(&["n1", "n2", "n3"]);
        assert_eq!(
            quorum("n1", &three, ["n1", "n2", "n3"], true),
            Quorum::Majority
        );
        assert_eq!(quorum("n1", &three, ["n1", "n2"], true), Quorum::Majority);
        assert_eq!(quorum("n1", &three, ["n1"], true), Quorum::Minority);
    }

    #[test]
    fn two_nodes_split_in_halves() {
        let two = listed(&["n1", "n2"]);
        assert_eq!(quorum("n1", &two, ["n1", "n2"], true), Quorum::Majority);
        assert_eq!(quorum("n1", &two, ["n1"], true), Quorum::Half);
    }

    #[test]
    fn a_speaker_that_never_met_a_peer_is_unadmitted_unless_alone_in_the_cluster() {
        let three = listed(&["n1", "n2", "n3"]);
        assert_eq!(quorum("n1", &three, ["n1"], false), Quorum::Unadmitted);
        assert_eq!(
            quorum("n1", &listed(&["n1"]), ["n1"], false),
            Quorum::Majority
        );
        assert_eq!(quorum("n1", &listed(&[]), [], false), Quorum::Majority);
    }

    #[test]
    fn live_members_count_even_when_not_listed() {
        // Two listed, a third member live but not (yet) listed: three known, two live.
        let two = listed(&["n1", "n2"]);
        assert_eq!(quorum("n1", &two, ["n1", "n3"], true), Quorum::Majority);
        assert_eq!(quorum("n1", &two, ["n1"], true), Quorum::Half);
    }

    #[test]
    fn four_nodes_split_two_and_two() {
        let four = listed(&["n1", "n2", "n3", "n4"]);
        assert_eq!(quorum("n1", &four, ["n1", "n2"], true), Quorum::Half);
        assert_eq!(
            quorum("n1", &four, ["n1", "n2", "n3"], true),
            Quorum::Majority
        );
    }
}
