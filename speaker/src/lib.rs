//! FerroLB's speaker: makes the LAN send each Service IP's traffic to exactly one node, by
//! answering ARP and NDP for the IPs this node owns.
//!
//! - [`announcements`]: which node announces each Service (the pure decision over all inputs).
//! - [`interfaces`]: which links may announce (MetalLB's rules), and a netlink link watcher.
//! - [`responder`]: the pure decision for one received frame (answer, ignore, or conflict).
//! - [`gratuitous`]: the schedule of announcements after a takeover.
//! - [`carry`]: which in-flight connections go on to an IP's previous owner after a move;
//!   [`nftables`] writes the rules that do it.
//! - [`conflict`]: RFC 5227 / DAD probing before a first announcement.
//! - [`lifecycle`]: the life of each owned IP (probe, check, announce, hold, yield), pure.
//! - [`socket`]: the filtered AF_PACKET socket of one interface, handed to pnet.
//! - [`quorum`]: what this node may take over, from how much of the cluster it sees.
//! - [`fencing`]: whether this node may announce at all (cut off from its peers by its own link).
//! - [`local_vips`]: owned IPs held on a dummy interface for listeners on the node itself.
//! - [`node`]: the loop on one node: decisions in, announcer and reports out.
//! - [`kubernetes`]: the backend over the Kubernetes API.
//! - [`standalone`]: the backend over the shared state directory.
//! - [`metrics`]: the Prometheus metrics.
//! - [`announcer`]: the threads that put these together; what the rest of the speaker drives.

pub mod announcements;
pub mod announcer;
pub mod carry;
pub mod conflict;
pub mod fencing;
pub mod gratuitous;
pub mod interfaces;
pub mod kernel_arp;
pub mod kubernetes;
pub mod lifecycle;
pub mod local_vips;
pub mod membership;
pub mod metrics;
pub mod nftables;
pub mod node;
pub mod quorum;
pub mod responder;
pub mod scheduling;
pub mod socket;
pub mod standalone;

pub use announcer::{Announcer, AnnouncerConfig, Event, Events, Intent, Start, Stats};
