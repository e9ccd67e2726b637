//! The mark a FerroLB speaker appends to every claim it puts on the wire (ARP replies, gratuitous
//! ARP, neighbour advertisements): the standing it claims the IP with, sealed with the cluster key.
//!
//! Two stations answering for one IP is either a foreign host squatting on it or, when the
//! membership is split while the LAN is not, two speakers of one cluster that each believe they
//! own it. The mark tells the two apart (only a holder of the cluster key can make one), and
//! settles the second case alike on both sides: the lower standing, the order the election would
//! have chosen had both been live, keeps the IP and the other yields.
//!
//! It rides where no station looks: after the ARP packet, in the padding that every Ethernet frame
//! shorter than 60 bytes carries anyway (18 bytes, exactly one mark), and after the IPv6 payload
//! of a neighbour advertisement (receivers trim a frame to the IPv6 payload length).
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | `FL` |
//! | 2 | version, 1 |
//! | 3..10 | standing: the first 7 bytes of the claimant's [`score`](crate::election::score) for the IP's election key |
//! | 10..18 | tag: the first 8 bytes of HMAC-SHA256, under a key derived from the cluster key, of the version, standing, claimed MAC and IP |
//!
//! The tag covers the MAC and the IP, so a mark copied into another host's claim does not verify;
//! it covers no requester, so a speaker seals each (IP, interface) once instead of per reply.

use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Frame, MacAddr};
use crate::election::{ElectionKey, score};
use crate::gossip::KeyRing;

/// Bytes of a mark.
pub const MARK_LEN: usize = 18;
/// A sealed mark, as it trails a frame.
pub type Mark = [u8; MARK_LEN];

const MAGIC: [u8; 2] = *b"FL";
const VERSION: u8 = 1;
const STANDING_LEN: usize = 7;
const TAG_LEN: usize = 8;
const TAG_AT: usize = MAGIC.len() + 1 + STANDING_LEN;
/// Keeps the mark's key apart from the membership's use of the same secret.
const PURPOSE: &str = "ferrolb layer-2 claim mark v1";

/// How strongly a speaker claims an IP: its election score for the IP's election key, cut to
/// what a mark carries. Lower keeps the IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Standing([u8; STANDING_LEN]);

impl Standing {
    /// `node`'s standing in the election of `key`.
    pub fn of(node: &str, key: ElectionKey) -> Self {
        let score = score(node, key);
        let mut standing = [0u8; STANDING_LEN];
        standing.copy_from_slice(&score[..STANDING_LEN]);
        Standing(standing)
    }
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Seals marks with a cluster key ring's primary key and opens them with any of its keys.
#[derive(Clone)]
pub struct Marker {
    keys: Vec<[u8; 32]>,
}

impl fmt::Debug for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Marker({} keys)", self.keys.len())
    }
}

impl Marker {
    pub fn new(ring: &KeyRing) -> Self {
        Marker {
            keys: ring.keys().map(|key| key.derive(PURPOSE)).collect(),
        }
    }

    /// The mark claiming that `ip` is at `mac`, with `standing`.
    pub fn seal(&self, mac: MacAddr, ip: IpAddr, standing: Standing) -> Mark {
        let mut mark = [0u8; MARK_LEN];
        mark[..2].copy_from_slice(&MAGIC);
        mark[2] = VERSION;
        mark[3..TAG_AT].copy_from_slice(&standing.0);
        if let Some(key) = self.keys.first() {
            let tag = tag(key, mac, ip, &standing).finalize().into_bytes();
            mark[TAG_AT..].copy_from_slice(&tag[..TAG_LEN]);
        }
        mark
    }

    /// The standing a speaker of this cluster claims `ip` at `mac` with, if `trailer` starts
    /// with a mark that verifies under one of the keys; `None` for anything else (no mark, a
    /// foreign host, another cluster's key, a mark copied from another claim).
    pub fn open(&self, mac: MacAddr, ip: IpAddr, trailer: &[u8]) -> Option<Standing> {
        let mark = trailer.get(..MARK_LEN)?;
        if mark.get(..2)? != MAGIC || *mark.get(2)? != VERSION {
            return None;
        }
        let standing = Standing(mark.get(3..TAG_AT)?.try_into().ok()?);
        let claimed = mark.get(TAG_AT..)?;
        self.keys
            .iter()
            .any(|key| {
                tag(key, mac, ip, &standing)
                    .verify_truncated_left(claimed)
                    .is_ok()
            })
            .then_some(standing)
    }
}

fn tag(key: &[u8; 32], mac: MacAddr, ip: IpAddr, standing: &Standing) -> Hmac<Sha256> {
    let mut hmac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    hmac.update(&[VERSION]);
    hmac.update(&standing.0);
    hmac.update(&mac.0);
    match ip {
        IpAddr::V4(ip) => hmac.update(&ip.octets()),
        IpAddr::V6(ip) => hmac.update(&ip.octets()),
    }
    hmac
}

/// What follows the ARP packet or the IPv6 payload of a parsed `frame` in its `bytes`: padding,
/// or a mark. Empty for other frames.
pub fn trailer<'a>(bytes: &'a [u8], frame: &Frame) -> &'a [u8] {
    let end = match frame {
        Frame::Arp { .. } => frame.buffer_len(),
        Frame::Ndisc { ethernet, ipv6, .. } => {
            ethernet.buffer_len() + ipv6.buffer_len() + ipv6.payload_len
        }
        Frame::Other { .. } => return &[],
    };
    bytes.get(end..).unwrap_or_default()
}

/// `frame` with `mark` after it.
pub fn marked(mut frame: Vec<u8>, mark: &Mark) -> Vec<u8> {
    frame.extend_from_slice(mark);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::Key;
    use crate::wire::{gratuitous_arp_reply, parse_frame, unsolicited_na};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC: MacAddr = MacAddr([2, 0, 0x0a, 0xfa, 0, 1]);
    const OTHER: MacAddr = MacAddr([2, 0, 0x0a, 0xfa, 0, 2]);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);

    fn ring(byte: u8) -> KeyRing {
        KeyRing::new(Key::from_bytes([byte; 32]), [])
    }

    fn standing(node: &str) -> Standing {
        Standing::of(node, ElectionKey(VIP.into()))
    }

    #[test]
    fn a_marked_gratuitous_arp_is_one_minimum_frame_and_opens_to_its_standing() {
        let marker = Marker::new(&ring(7));
        let mark = marker.seal(MAC, VIP.into(), standing("n1"));
        let bytes = marked(gratuitous_arp_reply(MAC, VIP), &mark);
        assert_eq!(bytes.len(), 60, "the mark fills the padding exactly");
        let frame = parse_frame(&bytes).unwrap();
        let trailer = trailer(&bytes, &frame);
        assert_eq!(marker.open(MAC, VIP.into(), trailer), Some(standing("n1")));
    }

    #[test]
    fn a_marked_neighbour_advertisement_still_parses_and_opens() {
        let vip6: Ipv6Addr = "fd00:250::100".parse().unwrap();
        let marker = Marker::new(&ring(7));
        let key = ElectionKey(vip6.into());
        let mark = marker.seal(MAC, vip6.into(), Standing::of("n1", key));
        let bytes = marked(unsolicited_na(MAC, vip6), &mark);
        let frame = parse_frame(&bytes).unwrap();
        assert!(matches!(frame, Frame::Ndisc { .. }));
        assert_eq!(
            marker.open(MAC, vip6.into(), trailer(&bytes, &frame)),
            Some(Standing::of("n1", key))
        );
    }

    #[test]
    fn only_the_cluster_key_and_the_sealed_claim_open_a_mark() {
        let ours = Marker::new(&ring(7));
        let mark = ours.seal(MAC, VIP.into(), standing("n1"));
        assert_eq!(Marker::new(&ring(8)).open(MAC, VIP.into(), &mark), None);
        assert_eq!(ours.open(OTHER, VIP.into(), &mark), None, "another MAC");
        assert_eq!(
            ours.open(MAC, Ipv4Addr::new(10, 250, 0, 101).into(), &mark),
            None,
            "another IP"
        );
        let mut forged = mark;
        forged[3] ^= 1;
        assert_eq!(
            ours.open(MAC, VIP.into(), &forged),
            None,
            "a changed standing"
        );
        // A rotated ring still opens marks of the old primary.
        let rotated = Marker::new(&KeyRing::new(
            Key::from_bytes([9; 32]),
            [Key::from_bytes([7; 32])],
        ));
        assert_eq!(rotated.open(MAC, VIP.into(), &mark), Some(standing("n1")));
    }

    #[test]
    fn padding_and_garbage_are_no_mark() {
        let marker = Marker::new(&ring(7));
        for trailer in [&[][..], &[0u8; 18], &[0u8; 5], b"FL\x01", &[0xff; 40]] {
            assert_eq!(marker.open(MAC, VIP.into(), trailer), None);
        }
    }

    #[test]
    fn the_standing_orders_as_the_election_does() {
        let key = ElectionKey(VIP.into());
        let ranked = crate::election::ranking(key, ["n1", "n2", "n3"]);
        let standings: Vec<Standing> = ranked.iter().map(|n| Standing::of(n, key)).collect();
        assert!(standings.windows(2).all(|w| w[0] < w[1]));
    }
}
