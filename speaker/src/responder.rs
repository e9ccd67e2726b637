//! What to do with one received ARP or neighbour discovery frame: a pure function of the bytes,
//! the IPs this interface answers for (or is probing), and the interface's MAC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_proto::wire::mark::{self, MARK_LEN, Mark};
use ferrolb_proto::wire::{self, ArpOperation, Frame, MacAddr, NdiscRepr, solicited_node};

/// The IPs one interface deals with right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedIps {
    /// Owned and announced here: requests for them are answered, with the mark sealed for this
    /// interface after each reply (none where the speaker has no cluster key).
    pub answering: BTreeMap<IpAddr, Option<Mark>>,
    /// Being probed before a first announcement: never answered, but any other station
    /// claiming them is reported.
    pub probing: BTreeSet<IpAddr>,
}

impl OwnedIps {
    /// Whether a claim on `ip` by another station matters to us.
    pub fn watches(&self, ip: IpAddr) -> bool {
        self.answering.contains_key(&ip) || self.probing.contains(&ip)
    }

    pub fn is_empty(&self) -> bool {
        self.answering.is_empty() && self.probing.is_empty()
    }
}

/// An answer to send: the owned IP it is about and the whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ip: IpAddr,
    pub frame: Vec<u8>,
}

/// What kind of frame showed another station using an IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// An ARP reply with the IP as sender.
    ArpReply,
    /// A gratuitous ARP (sender = target = the IP).
    GratuitousArp,
    /// An ARP request sent from the IP.
    ArpRequest,
    /// An RFC 5227 probe for an IP we are probing too.
    ArpProbe,
    /// A neighbour advertisement for the IP.
    NeighborAdvert,
    /// A neighbour solicitation sent from the IP.
    NeighborSolicit,
    /// A duplicate address detection solicitation for an IP we are probing too.
    DadSolicit,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Evidence::ArpReply => "ARP reply",
            Evidence::GratuitousArp => "gratuitous ARP",
            Evidence::ArpRequest => "ARP request",
            Evidence::ArpProbe => "ARP probe",
            Evidence::NeighborAdvert => "neighbour advertisement",
            Evidence::NeighborSolicit => "neighbour solicitation",
            Evidence::DadSolicit => "DAD solicitation",
        })
    }
}

/// Another station uses an IP we own or are probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub ip: IpAddr,
    pub mac: MacAddr,
    pub evidence: Evidence,
    /// What trailed the claim where a speaker puts its mark ([`mark`]), unchecked: the
    /// responder only copies it; opening it is the control thread's work, off the fast path.
    trailer: Option<Mark>,
}

impl Claim {
    pub fn new(ip: IpAddr, mac: MacAddr, evidence: Evidence) -> Self {
        Claim {
            ip,
            mac,
            evidence,
            trailer: None,
        }
    }

    /// The claim's trailing bytes, empty if it had no room for a mark.
    pub fn trailer(&self) -> &[u8] {
        self.trailer.as_ref().map_or(&[], |t| &t[..])
    }

    fn with_trailer(mut self, bytes: &[u8], frame: &Frame) -> Self {
        self.trailer = mark::trailer(bytes, frame)
            .get(..MARK_LEN)
            .and_then(|t| t.try_into().ok());
        self
    }
}

/// The reply frame, with `mark` after it when the interface has one for the IP.
fn marked(frame: Vec<u8>, mark: Option<&Mark>) -> Vec<u8> {
    match mark {
        Some(mark) => mark::marked(frame, mark),
        None => frame,
    }
}

/// The outcome of one frame. A request for an owned IP gets a `reply`; a foreign claim is
/// reported in `claim`, without changing how we answer. Usually at most one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub reply: Option<Reply>,
    pub claim: Option<Claim>,
}

/// Decides what to do with `frame`, received on an interface whose MAC is `iface_mac`.
///
/// Malformed ARP/NDP (anything [`wire::parse_frame`] rejects) is an error, to be counted and
/// dropped. Frames from `iface_mac` itself, tagged frames, and frames addressed to another
/// station's MAC are never answered.
pub fn decide(bytes: &[u8], owned: &OwnedIps, iface_mac: MacAddr) -> Result<Decision, wire::Error> {
    let frame = wire::parse_frame(bytes)?;
    let ethernet = frame.ethernet();
    if ethernet.src_addr == iface_mac || ethernet.vlan.is_some() {
        return Ok(Decision::default());
    }
    // A frame for another station's MAC reaches us only by flooding; the kernel ignores those
    // (PACKET_OTHERHOST) and so do we, but it still tells us who claims what.
    let addressed_to_us = ethernet.dst_addr.is_multicast() || ethernet.dst_addr == iface_mac;
    Ok(match frame {
        Frame::Arp { arp, .. } => {
            if arp.source_hardware_addr == iface_mac {
                return Ok(Decision::default());
            }
            let sender = arp.source_protocol_addr;
            let target = arp.target_protocol_addr;
            let claim = if !sender.is_unspecified() && owned.watches(sender.into()) {
                let evidence = if arp.is_gratuitous() {
                    Evidence::GratuitousArp
                } else if arp.operation == ArpOperation::Reply {
                    Evidence::ArpReply
                } else {
                    Evidence::ArpRequest
                };
                Some(
                    Claim::new(sender.into(), arp.source_hardware_addr, evidence)
                        .with_trailer(bytes, &frame),
                )
            } else if arp.is_probe() && owned.probing.contains(&target.into()) {
                Some(Claim::new(
                    target.into(),
                    arp.source_hardware_addr,
                    Evidence::ArpProbe,
                ))
            } else {
                None
            };
            let answer = owned.answering.get(&target.into()).filter(|_| {
                arp.operation == ArpOperation::Request
                    && !arp.is_gratuitous()
                    && addressed_to_us
                    && arp.source_hardware_addr.is_unicast()
            });
            let reply = answer.map(|mark| Reply {
                ip: target.into(),
                frame: marked(
                    wire::arp_reply(iface_mac, target, arp.source_hardware_addr, sender),
                    mark.as_ref(),
                ),
            });
            Decision { reply, claim }
        }
        Frame::Ndisc {
            ethernet,
            ipv6,
            ndisc,
        } => match ndisc {
            NdiscRepr::NeighborSolicit {
                target_addr,
                source_lladdr,
            } => {
                let requester_mac = source_lladdr.unwrap_or(ethernet.src_addr);
                let claim =
                    if !ipv6.src_addr.is_unspecified() && owned.watches(ipv6.src_addr.into()) {
                        Some(Claim::new(
                            ipv6.src_addr.into(),
                            requester_mac,
                            Evidence::NeighborSolicit,
                        ))
                    } else if ipv6.src_addr.is_unspecified()
                        && owned.probing.contains(&target_addr.into())
                    {
                        Some(Claim::new(
                            target_addr.into(),
                            ethernet.src_addr,
                            Evidence::DadSolicit,
                        ))
                    } else {
                        None
                    };
                // Multicast to the target's solicited-node group, or unicast to the target
                // itself (neighbour unreachability detection): both are answered.
                let for_target =
                    ipv6.dst_addr == solicited_node(target_addr) || ipv6.dst_addr == target_addr;
                let answer = owned
                    .answering
                    .get(&target_addr.into())
                    .filter(|_| addressed_to_us && for_target && requester_mac.is_unicast());
                let reply = answer.map(|mark| Reply {
                    ip: target_addr.into(),
                    frame: marked(
                        wire::solicited_na(iface_mac, target_addr, ipv6.src_addr, requester_mac),
                        mark.as_ref(),
                    ),
                });
                Decision { reply, claim }
            }
            NdiscRepr::NeighborAdvert {
                target_addr,
                target_lladdr,
                ..
            } => {
                let mac = target_lladdr.unwrap_or(ethernet.src_addr);
                let claim = (mac != iface_mac && owned.watches(target_addr.into())).then(|| {
                    Claim::new(target_addr.into(), mac, Evidence::NeighborAdvert)
                        .with_trailer(bytes, &frame)
                });
                Decision { reply: None, claim }
            }
        },
        Frame::Other { .. } => Decision::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ferrolb_proto::wire::{
        ArpRepr, EtherType, EthernetRepr, Ipv6Repr, NeighborFlags, VlanTag, arp_probe,
        gratuitous_arp_reply, gratuitous_arp_request, unsolicited_na,
    };

    use super::*;

    const OURS: MacAddr = MacAddr([0x02, 0, 0x0a, 0xfa, 0, 1]);
    const CLIENT: MacAddr = MacAddr([0x02, 0, 0x0a, 0xfa, 0, 0x10]);
    const ROGUE: MacAddr = MacAddr([0x02, 0, 0x0a, 0xfa, 0, 0x66]);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 101);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);

    fn vip6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100)
    }

    fn client6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x10)
    }

    fn owned() -> OwnedIps {
        OwnedIps {
            answering: [(IpAddr::from(VIP), None), (IpAddr::from(vip6()), None)].into(),
            probing: BTreeSet::new(),
        }
    }

    fn probing(ip: IpAddr) -> OwnedIps {
        OwnedIps {
            answering: BTreeMap::new(),
            probing: [ip].into(),
        }
    }

    fn arp(op: ArpOperation, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr, dst: MacAddr) -> Vec<u8> {
        arp_tagged(op, sha, spa, tpa, dst, None)
    }

    fn arp_tagged(
        op: ArpOperation,
        sha: MacAddr,
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
        dst: MacAddr,
        vlan: Option<VlanTag>,
    ) -> Vec<u8> {
        Frame::Arp {
            ethernet: EthernetRepr {
                src_addr: sha,
                dst_addr: dst,
                ethertype: EtherType::ARP,
                vlan,
            },
            arp: ArpRepr {
                operation: op,
                source_hardware_addr: sha,
                source_protocol_addr: spa,
                target_hardware_addr: MacAddr::UNSPECIFIED,
                target_protocol_addr: tpa,
            },
        }
        .to_bytes()
    }

    fn request(target: Ipv4Addr) -> Vec<u8> {
        arp(
            ArpOperation::Request,
            CLIENT,
            CLIENT_IP,
            target,
            MacAddr::BROADCAST,
        )
    }

    fn ns(src: Ipv6Addr, dst: Ipv6Addr, eth_dst: MacAddr, lladdr: Option<MacAddr>) -> Vec<u8> {
        let ndisc = NdiscRepr::NeighborSolicit {
            target_addr: vip6(),
            source_lladdr: lladdr,
        };
        Frame::Ndisc {
            ethernet: EthernetRepr {
                src_addr: CLIENT,
                dst_addr: eth_dst,
                ethertype: EtherType::IPV6,
                vlan: None,
            },
            ipv6: Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: wire::IPPROTO_ICMPV6,
                payload_len: ndisc.buffer_len(),
                hop_limit: 255,
            },
            ndisc,
        }
        .to_bytes()
    }

    fn reply_of(d: &Decision) -> Frame {
        let reply = d.reply.as_ref().expect("a reply");
        wire::parse_frame(&reply.frame).expect("our reply parses")
    }

    #[test]
    fn arp_request_for_owned_ip_is_answered_from_our_mac() {
        let d = decide(&request(VIP), &owned(), OURS).unwrap();
        assert_eq!(d.claim, None);
        assert_eq!(d.reply.as_ref().map(|r| r.ip), Some(VIP.into()));
        let Frame::Arp { ethernet, arp } = reply_of(&d) else {
            panic!("ARP expected")
        };
        assert_eq!((ethernet.src_addr, ethernet.dst_addr), (OURS, CLIENT));
        assert_eq!(arp.operation, ArpOperation::Reply);
        assert_eq!(
            (arp.source_hardware_addr, arp.source_protocol_addr),
            (OURS, VIP)
        );
        assert_eq!(
            (arp.target_hardware_addr, arp.target_protocol_addr),
            (CLIENT, CLIENT_IP)
        );
    }

    #[test]
    fn unicast_arp_request_to_us_is_answered_but_not_to_another_mac() {
        let to_us = arp(ArpOperation::Request, CLIENT, CLIENT_IP, VIP, OURS);
        assert!(decide(&to_us, &owned(), OURS).unwrap().reply.is_some());
        let to_them = arp(ArpOperation::Request, CLIENT, CLIENT_IP, VIP, ROGUE);
        assert_eq!(
            decide(&to_them, &owned(), OURS).unwrap(),
            Decision::default()
        );
    }

    #[test]
    fn nothing_for_ips_we_do_not_own() {
        assert_eq!(
            decide(&request(OTHER), &owned(), OURS).unwrap(),
            Decision::default()
        );
        // Probing is not owning: no answer.
        assert_eq!(
            decide(&request(VIP), &probing(VIP.into()), OURS).unwrap(),
            Decision::default()
        );
        assert_eq!(
            decide(&request(VIP), &OwnedIps::default(), OURS).unwrap(),
            Decision::default()
        );
    }

    #[test]
    fn a_probe_for_an_owned_ip_is_answered_to_the_prober() {
        let d = decide(&arp_probe(CLIENT, VIP), &owned(), OURS).unwrap();
        assert_eq!(d.claim, None, "someone probing is not claiming");
        let Frame::Arp { arp, .. } = reply_of(&d) else {
            panic!("ARP expected")
        };
        assert_eq!(arp.target_protocol_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(arp.target_hardware_addr, CLIENT);
    }

    #[test]
    fn our_own_frames_replies_and_gratuitous_are_not_answered() {
        let own = arp(
            ArpOperation::Request,
            OURS,
            CLIENT_IP,
            VIP,
            MacAddr::BROADCAST,
        );
        assert_eq!(decide(&own, &owned(), OURS).unwrap(), Decision::default());
        let reply = arp(ArpOperation::Reply, CLIENT, CLIENT_IP, VIP, OURS);
        assert_eq!(decide(&reply, &owned(), OURS).unwrap(), Decision::default());
        // Our own gratuitous ARP (as seen by a second socket) is neither answered nor a claim.
        assert_eq!(
            decide(&gratuitous_arp_request(OURS, VIP), &owned(), OURS).unwrap(),
            Decision::default()
        );
        // A tagged request belongs to the VLAN's own interface.
        let tagged = arp_tagged(
            ArpOperation::Request,
            CLIENT,
            CLIENT_IP,
            VIP,
            MacAddr::BROADCAST,
            Some(VlanTag::new(100)),
        );
        assert_eq!(
            decide(&tagged, &owned(), OURS).unwrap(),
            Decision::default()
        );
    }

    #[test]
    fn foreign_claims_on_owned_ips_are_reported_not_answered() {
        for (frame, evidence) in [
            (gratuitous_arp_request(ROGUE, VIP), Evidence::GratuitousArp),
            (gratuitous_arp_reply(ROGUE, VIP), Evidence::GratuitousArp),
            (
                arp(ArpOperation::Reply, ROGUE, VIP, CLIENT_IP, CLIENT),
                Evidence::ArpReply,
            ),
            (
                arp(
                    ArpOperation::Request,
                    ROGUE,
                    VIP,
                    CLIENT_IP,
                    MacAddr::BROADCAST,
                ),
                Evidence::ArpRequest,
            ),
            (unsolicited_na(ROGUE, vip6()), Evidence::NeighborAdvert),
        ] {
            let d = decide(&frame, &owned(), OURS).unwrap();
            assert_eq!(d.reply, None, "{evidence}");
            let claim = d.claim.expect("a claim");
            assert_eq!(claim.mac, ROGUE);
            assert_eq!(claim.evidence, evidence);
        }
        // A claim on an IP we neither own nor probe is none of our business.
        assert_eq!(
            decide(&gratuitous_arp_request(ROGUE, OTHER), &owned(), OURS).unwrap(),
            Decision::default()
        );
    }

    #[test]
    fn probing_sees_replies_and_simultaneous_probes() {
        let watched = probing(VIP.into());
        let reply = arp(ArpOperation::Reply, ROGUE, VIP, Ipv4Addr::UNSPECIFIED, OURS);
        let d = decide(&reply, &watched, OURS).unwrap();
        assert_eq!(
            d.claim,
            Some(Claim::new(VIP.into(), ROGUE, Evidence::ArpReply))
        );
        let d = decide(&arp_probe(ROGUE, VIP), &watched, OURS).unwrap();
        assert_eq!(d.claim.map(|c| c.evidence), Some(Evidence::ArpProbe));
        assert_eq!(d.reply, None);
        // DAD: an advertisement for the target, or someone else's DAD for it.
        let watched6 = probing(vip6().into());
        let d = decide(&unsolicited_na(ROGUE, vip6()), &watched6, OURS).unwrap();
        assert_eq!(d.claim.map(|c| c.evidence), Some(Evidence::NeighborAdvert));
        let d = decide(&wire::dad_solicit(ROGUE, vip6()), &watched6, OURS).unwrap();
        assert_eq!(d.claim.map(|c| c.evidence), Some(Evidence::DadSolicit));
    }

    #[test]
    fn marks_go_out_with_replies_and_come_back_with_claims() {
        use ferrolb_proto::election::ElectionKey;
        use ferrolb_proto::gossip::{Key, KeyRing};
        use ferrolb_proto::wire::mark::{Marker, Standing};
        let marker = Marker::new(&KeyRing::new(Key::from_bytes([7; 32]), []));
        let standing = Standing::of("n1", ElectionKey(VIP.into()));
        let mark = marker.seal(OURS, VIP.into(), standing);
        let marked_owner = OwnedIps {
            answering: [(IpAddr::from(VIP), Some(mark))].into(),
            probing: BTreeSet::new(),
        };
        let reply = decide(&request(VIP), &marked_owner, OURS)
            .unwrap()
            .reply
            .unwrap();
        assert_eq!(reply.frame.len(), 60, "the mark fills the padding");
        // Another speaker, probing the VIP, hears that reply: the claim carries the mark.
        let d = decide(&reply.frame, &probing(VIP.into()), ROGUE).unwrap();
        let claim = d.claim.unwrap();
        assert_eq!(
            marker.open(claim.mac, claim.ip, claim.trailer()),
            Some(standing)
        );
        // A kernel's reply, padded with zeros or not at all, carries none.
        let plain = arp(ArpOperation::Reply, ROGUE, VIP, Ipv4Addr::UNSPECIFIED, OURS);
        let mut padded = plain.clone();
        padded.resize(60, 0);
        for frame in [plain, padded] {
            let claim = decide(&frame, &probing(VIP.into()), OURS)
                .unwrap()
                .claim
                .unwrap();
            assert_eq!(marker.open(claim.mac, claim.ip, claim.trailer()), None);
        }
    }

    #[test]
    fn multicast_solicitation_gets_a_solicited_na_with_our_lladdr() {
        let group = solicited_node(vip6());
        let frame = ns(
            client6(),
            group,
            MacAddr::ipv6_multicast(group),
            Some(CLIENT),
        );
        let d = decide(&frame, &owned(), OURS).unwrap();
        assert_eq!(d.reply.as_ref().map(|r| r.ip), Some(vip6().into()));
        let Frame::Ndisc {
            ethernet,
            ipv6,
            ndisc,
        } = reply_of(&d)
        else {
            panic!("NDP expected")
        };
        assert_eq!((ethernet.src_addr, ethernet.dst_addr), (OURS, CLIENT));
        assert_eq!((ipv6.src_addr, ipv6.dst_addr), (vip6(), client6()));
        assert_eq!(
            ndisc,
            NdiscRepr::NeighborAdvert {
                flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
                target_addr: vip6(),
                target_lladdr: Some(OURS)
            }
        );
    }

    #[test]
    fn unicast_nud_solicitation_without_lladdr_is_answered_to_the_ethernet_source() {
        // What Linux sends from a STALE/DELAY entry: unicast to the target, no source option.
        let frame = ns(client6(), vip6(), OURS, None);
        let d = decide(&frame, &owned(), OURS).unwrap();
        let Frame::Ndisc { ethernet, ipv6, .. } = reply_of(&d) else {
            panic!("NDP expected")
        };
        assert_eq!(ethernet.dst_addr, CLIENT);
        assert_eq!(ipv6.dst_addr, client6());
        // Unicast to somebody else's MAC (flooded to us): not ours to answer.
        let theirs = ns(client6(), vip6(), ROGUE, None);
        assert_eq!(decide(&theirs, &owned(), OURS).unwrap().reply, None);
    }

    #[test]
    fn solicitations_for_other_targets_or_groups_are_ignored() {
        let other = solicited_node(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x77));
        let frame = ns(
            client6(),
            other,
            MacAddr::ipv6_multicast(other),
            Some(CLIENT),
        );
        assert_eq!(decide(&frame, &owned(), OURS).unwrap(), Decision::default());
        let not_owned = OwnedIps {
            answering: [(IpAddr::from(VIP), None)].into(),
            probing: BTreeSet::new(),
        };
        let group = solicited_node(vip6());
        let frame = ns(
            client6(),
            group,
            MacAddr::ipv6_multicast(group),
            Some(CLIENT),
        );
        assert_eq!(
            decide(&frame, &not_owned, OURS).unwrap(),
            Decision::default()
        );
    }

    #[test]
    fn someone_elses_dad_for_an_owned_ip_is_defended() {
        let d = decide(&wire::dad_solicit(ROGUE, vip6()), &owned(), OURS).unwrap();
        assert_eq!(d.claim, None);
        let Frame::Ndisc { ipv6, .. } = reply_of(&d) else {
            panic!("NDP expected")
        };
        assert!(ipv6.dst_addr.is_multicast(), "to all nodes");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(decide(&[], &owned(), OURS).is_err());
        assert!(decide(&[0xff; 13], &owned(), OURS).is_err());
        let mut bad = request(VIP);
        bad[14 + 7] = 9; // ARP operation 9
        assert!(decide(&bad, &owned(), OURS).is_err());
        let mut truncated = request(VIP);
        truncated.truncate(30);
        assert!(decide(&truncated, &owned(), OURS).is_err());
        // Pseudo-random bytes of every length up to 128, with ARP and IPv6 ethertypes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..128usize {
            for ethertype in [[0x08, 0x06], [0x86, 0xdd]] {
                let mut bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state.to_le_bytes()[0]
                    })
                    .collect();
                if let Some(t) = bytes.get_mut(12..14) {
                    t.copy_from_slice(&ethertype);
                }
                let _ = decide(&bytes, &owned(), OURS);
            }
        }
    }
}
