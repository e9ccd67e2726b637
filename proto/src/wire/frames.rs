//! Whole frames as the speaker sees them: one classifier for what arrives, one constructor for
//! each frame it sends.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::icmpv6::{TYPE_NEIGHBOR_ADVERT, TYPE_NEIGHBOR_SOLICIT};
use super::ipv6::{IPPROTO_ICMPV6, is_solicited_node, solicited_node};
use super::{
    ArpOperation, ArpPacket, ArpRepr, Error, EtherType, EthernetFrame, EthernetRepr, Icmpv6Packet,
    Ipv6Packet, Ipv6Repr, MacAddr, NdiscRepr, NeighborFlags, Result,
};

/// Neighbour discovery messages travel with this hop limit and are dropped with any other,
/// which proves they were not routed (RFC 4861 §7.1).
const NDISC_HOP_LIMIT: u8 = 255;

/// A received frame, classified: what the speaker answers, and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Arp {
        ethernet: EthernetRepr,
        arp: ArpRepr,
    },
    Ndisc {
        ethernet: EthernetRepr,
        ipv6: Ipv6Repr,
        ndisc: NdiscRepr,
    },
    /// Not ARP, and not an IPv6 neighbour solicitation or advertisement. Its payload is not kept.
    Other { ethernet: EthernetRepr },
}

/// Classifies a received Ethernet frame (one 802.1Q tag allowed; padding ignored).
///
/// ARP and neighbour discovery frames that are malformed, or break RFC 4861's validity rules
/// (hop limit 255, code 0, checksum, DAD from :: only to a solicited-node group and without a
/// source link-layer option, no Solicited flag to a multicast address) are errors: the speaker
/// must not answer them. Other ICMPv6 messages and other protocols are [`Frame::Other`].
pub fn parse_frame(bytes: &[u8]) -> Result<Frame> {
    let frame = EthernetFrame::new_checked(bytes)?;
    let ethernet = EthernetRepr::parse(&frame)?;
    match ethernet.ethertype {
        EtherType::ARP => {
            let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload())?)?;
            Ok(Frame::Arp { ethernet, arp })
        }
        EtherType::IPV6 => {
            let packet = Ipv6Packet::new_checked(frame.payload())?;
            let ipv6 = Ipv6Repr::parse(&packet)?;
            if ipv6.next_header != IPPROTO_ICMPV6 {
                return Ok(Frame::Other { ethernet });
            }
            let icmp = Icmpv6Packet::new_checked(packet.payload())?;
            if !matches!(
                icmp.msg_type(),
                TYPE_NEIGHBOR_SOLICIT | TYPE_NEIGHBOR_ADVERT
            ) {
                return Ok(Frame::Other { ethernet });
            }
            let ndisc = NdiscRepr::parse(ipv6.src_addr, ipv6.dst_addr, &icmp)?;
            check_ndisc_rules(&ipv6, &ndisc)?;
            Ok(Frame::Ndisc {
                ethernet,
                ipv6,
                ndisc,
            })
        }
        _ => Ok(Frame::Other { ethernet }),
    }
}

/// The RFC 4861 §7.1 checks that need the IPv6 header as well as the message.
fn check_ndisc_rules(ipv6: &Ipv6Repr, ndisc: &NdiscRepr) -> Result<()> {
    if ipv6.hop_limit != NDISC_HOP_LIMIT {
        return Err(Error::NdiscHopLimit(ipv6.hop_limit));
    }
    match *ndisc {
        NdiscRepr::NeighborSolicit { source_lladdr, .. } if ipv6.src_addr.is_unspecified() => {
            if source_lladdr.is_some() {
                return Err(Error::NdiscDadWithSourceLinkLayer);
            }
            if !is_solicited_node(ipv6.dst_addr) {
                return Err(Error::NdiscDadDestination(ipv6.dst_addr));
            }
        }
        NdiscRepr::NeighborAdvert { flags, .. }
            if flags.solicited() && ipv6.dst_addr.is_multicast() =>
        {
            return Err(Error::NdiscSolicitedToMulticast(ipv6.dst_addr));
        }
        _ => {}
    }
    Ok(())
}

impl Frame {
    pub const fn ethernet(&self) -> &EthernetRepr {
        match self {
            Frame::Arp { ethernet, .. }
            | Frame::Ndisc { ethernet, .. }
            | Frame::Other { ethernet } => ethernet,
        }
    }

    /// The frame's length on the wire, without padding (the NIC pads to 60 bytes if it must).
    pub const fn buffer_len(&self) -> usize {
        match self {
            Frame::Arp { ethernet, arp } => ethernet.buffer_len() + arp.buffer_len(),
            Frame::Ndisc {
                ethernet,
                ipv6,
                ndisc,
            } => ethernet.buffer_len() + ipv6.buffer_len() + ndisc.buffer_len(),
            Frame::Other { ethernet } => ethernet.buffer_len(),
        }
    }

    /// Writes the frame to the front of `buf` and returns its length. The EtherType, IPv6 next
    /// header and payload length are derived from the contents, whatever the reprs say, so the
    /// frame is always consistent. [`Frame::Other`] writes the Ethernet header alone.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let Some(buf) = buf.get_mut(..len) else {
            return Err(Error::BufferTooSmall {
                what: "frame",
                len: buf.len(),
                need: len,
            });
        };
        let mut frame = EthernetFrame::new_unchecked(buf);
        match self {
            Frame::Arp { ethernet, arp } => {
                EthernetRepr {
                    ethertype: EtherType::ARP,
                    ..*ethernet
                }
                .emit(&mut frame);
                arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
            }
            Frame::Ndisc {
                ethernet,
                ipv6,
                ndisc,
            } => {
                EthernetRepr {
                    ethertype: EtherType::IPV6,
                    ..*ethernet
                }
                .emit(&mut frame);
                let ipv6 = Ipv6Repr {
                    next_header: IPPROTO_ICMPV6,
                    payload_len: ndisc.buffer_len(),
                    ..*ipv6
                };
                let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
                ipv6.emit(&mut packet)?;
                ndisc.emit(
                    ipv6.src_addr,
                    ipv6.dst_addr,
                    &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
                )?;
            }
            Frame::Other { ethernet } => ethernet.emit(&mut frame),
        }
        Ok(len)
    }

    /// The frame as bytes, ready for a raw socket.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0; self.buffer_len()];
        // Cannot fail: the buffer has the exact length and NDP messages are far below 64 KiB.
        let written = self.emit(&mut buf).unwrap_or(0);
        buf.truncate(written);
        buf
    }
}

fn arp_frame(dst: MacAddr, arp: ArpRepr) -> Vec<u8> {
    Frame::Arp {
        ethernet: EthernetRepr {
            src_addr: arp.source_hardware_addr,
            dst_addr: dst,
            ethertype: EtherType::ARP,
            vlan: None,
        },
        arp,
    }
    .to_bytes()
}

/// The ARP reply telling `requester_ip` at `requester_mac` that `local_ip` is at `local_mac`.
/// Sent to the requester's MAC, as the kernel does; answering a probe (requester IP 0.0.0.0)
/// works the same way.
pub fn arp_reply(
    local_mac: MacAddr,
    local_ip: Ipv4Addr,
    requester_mac: MacAddr,
    requester_ip: Ipv4Addr,
) -> Vec<u8> {
    arp_frame(
        requester_mac,
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: local_mac,
            source_protocol_addr: local_ip,
            target_hardware_addr: requester_mac,
            target_protocol_addr: requester_ip,
        },
    )
}

/// Gratuitous ARP, request form: broadcast, sender = target = `ip`, target MAC zero (unused in a
/// request, RFC 5944 §4.6). Byte for byte what Linux sends with `arp_notify`.
pub fn gratuitous_arp_request(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: ip,
        },
    )
}

/// Gratuitous ARP, reply form: broadcast, sender = target = `ip`, and the target MAC is the
/// sender's too (RFC 5944 §4.6), for hosts that only learn from replies.
pub fn gratuitous_arp_reply(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: mac,
            target_protocol_addr: ip,
        },
    )
}

/// RFC 5227 §2.1.1 probe: "does anyone hold `ip`?" from sender IP 0.0.0.0, so no cache learns
/// a binding from it. Any reply, or a probe from someone else for the same IP, is a conflict.
pub fn arp_probe(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: mac,
            source_protocol_addr: Ipv4Addr::UNSPECIFIED,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: ip,
        },
    )
}

/// RFC 5227 §2.3 announcement, sent after probing finds `ip` free: the same frame as
/// [`gratuitous_arp_request`].
pub fn arp_announcement(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    gratuitous_arp_request(mac, ip)
}

fn ndisc_frame(
    eth_dst: MacAddr,
    eth_src: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ndisc: NdiscRepr,
) -> Vec<u8> {
    Frame::Ndisc {
        ethernet: EthernetRepr {
            src_addr: eth_src,
            dst_addr: eth_dst,
            ethertype: EtherType::IPV6,
            vlan: None,
        },
        ipv6: Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IPPROTO_ICMPV6,
            payload_len: ndisc.buffer_len(),
            hop_limit: NDISC_HOP_LIMIT,
        },
        ndisc,
    }
    .to_bytes()
}

/// The neighbour advertisement answering a solicitation for `target` (an address this node
/// owns) from `requester_ip`. `requester_mac` is the solicitation's source link-layer option,
/// or its Ethernet source when it has none (unicast NUD probes).
///
/// Solicited and Override set, target link-layer option `local_mac`. A solicitation from ::
/// (someone's DAD) is answered to ff02::1 without the Solicited flag, as RFC 4861 §7.2.4 asks.
pub fn solicited_na(
    local_mac: MacAddr,
    target: Ipv6Addr,
    requester_ip: Ipv6Addr,
    requester_mac: MacAddr,
) -> Vec<u8> {
    let (dst, eth_dst, flags) = if requester_ip.is_unspecified() {
        (
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            MacAddr::IPV6_ALL_NODES,
            NeighborFlags::OVERRIDE,
        )
    } else {
        (
            requester_ip,
            requester_mac,
            NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
        )
    };
    ndisc_frame(
        eth_dst,
        local_mac,
        target,
        dst,
        NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            target_lladdr: Some(local_mac),
        },
    )
}

/// The unsolicited neighbour advertisement announcing that `target` is now at `mac`: to ff02::1,
/// Override set so caches replace the old owner's MAC (RFC 4861 §7.2.6). Byte for byte what
/// Linux sends with `ndisc_notify`.
pub fn unsolicited_na(mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    ndisc_frame(
        MacAddr::IPV6_ALL_NODES,
        mac,
        target,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::OVERRIDE,
            target_addr: target,
            target_lladdr: Some(mac),
        },
    )
}

/// The duplicate address detection solicitation for `target` (RFC 4862 §5.4.2): from ::, to the
/// solicited-node group of `target` and its MAC, without a source link-layer option. Any
/// advertisement for `target`, or another DAD solicitation for it, means someone else has it.
pub fn dad_solicit(mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    ndisc_frame(
        MacAddr::ipv6_multicast(group),
        mac,
        Ipv6Addr::UNSPECIFIED,
        group,
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            source_lladdr: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01]);
    const PEER: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x02]);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);

    fn vip6() -> Ipv6Addr {
        "fd00:250::64".parse().unwrap()
    }

    // The kernel's gratuitous ARP in the lab (kernel-arp-gratuitous.hex, arp_notify).
    static KERNEL_GRATUITOUS: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x0a, 0xfa,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xfa, 0x00, 0x01,
    ];

    fn arp(bytes: &[u8]) -> (EthernetRepr, ArpRepr) {
        match parse_frame(bytes).unwrap() {
            Frame::Arp { ethernet, arp } => (ethernet, arp),
            other => panic!("not ARP: {other:?}"),
        }
    }

    fn ndisc(bytes: &[u8]) -> (EthernetRepr, Ipv6Repr, NdiscRepr) {
        match parse_frame(bytes).unwrap() {
            Frame::Ndisc {
                ethernet,
                ipv6,
                ndisc,
            } => (ethernet, ipv6, ndisc),
            other => panic!("not NDP: {other:?}"),
        }
    }

    #[test]
    fn gratuitous_request_matches_the_kernel() {
        let ip = Ipv4Addr::new(10, 250, 0, 1);
        assert_eq!(gratuitous_arp_request(MAC, ip), KERNEL_GRATUITOUS);
        assert_eq!(arp_announcement(MAC, ip), KERNEL_GRATUITOUS);
        let (_, arp) = arp(&KERNEL_GRATUITOUS);
        assert!(arp.is_gratuitous());
    }

    #[test]
    fn arp_constructors() {
        let (eth, reply) = arp(&arp_reply(MAC, VIP, PEER, Ipv4Addr::new(10, 250, 0, 2)));
        assert_eq!((eth.src_addr, eth.dst_addr), (MAC, PEER));
        assert_eq!(reply.operation, ArpOperation::Reply);
        assert_eq!(reply.source_protocol_addr, VIP);
        assert_eq!(reply.target_hardware_addr, PEER);

        let (eth, garp) = arp(&gratuitous_arp_reply(MAC, VIP));
        assert_eq!(eth.dst_addr, MacAddr::BROADCAST);
        assert_eq!(garp.operation, ArpOperation::Reply);
        assert_eq!(garp.target_hardware_addr, MAC);
        assert!(garp.is_gratuitous());

        let bytes = arp_probe(MAC, VIP);
        assert_eq!(bytes.len(), 42);
        let (eth, probe) = arp(&bytes);
        assert_eq!(eth.dst_addr, MacAddr::BROADCAST);
        assert!(probe.is_probe() && !probe.is_gratuitous());
        assert_eq!(probe.target_protocol_addr, VIP);
        assert_eq!(probe.target_hardware_addr, MacAddr::UNSPECIFIED);
    }

    #[test]
    fn neighbor_advertisements() {
        let requester: Ipv6Addr = "fd00:250::2".parse().unwrap();
        let (eth, ipv6, na) = ndisc(&solicited_na(MAC, vip6(), requester, PEER));
        assert_eq!((eth.src_addr, eth.dst_addr), (MAC, PEER));
        assert_eq!(
            (ipv6.src_addr, ipv6.dst_addr, ipv6.hop_limit),
            (vip6(), requester, 255)
        );
        assert_eq!(
            na,
            NdiscRepr::NeighborAdvert {
                flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
                target_addr: vip6(),
                target_lladdr: Some(MAC)
            }
        );

        // Answering someone's DAD: to all nodes, not "solicited".
        let (eth, ipv6, na) = ndisc(&solicited_na(MAC, vip6(), Ipv6Addr::UNSPECIFIED, PEER));
        assert_eq!(eth.dst_addr, MacAddr::IPV6_ALL_NODES);
        assert_eq!(ipv6.dst_addr, "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert!(
            matches!(na, NdiscRepr::NeighborAdvert { flags, .. } if flags == NeighborFlags::OVERRIDE)
        );

        let (eth, ipv6, na) = ndisc(&unsolicited_na(MAC, vip6()));
        assert_eq!(eth.dst_addr, MacAddr([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(ipv6.dst_addr, "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            na,
            NdiscRepr::NeighborAdvert {
                flags: NeighborFlags::OVERRIDE,
                target_addr: vip6(),
                target_lladdr: Some(MAC)
            }
        );
    }

    #[test]
    fn dad() {
        let (eth, ipv6, ns) = ndisc(&dad_solicit(MAC, vip6()));
        assert_eq!(eth.dst_addr, MacAddr([0x33, 0x33, 0xff, 0x00, 0x00, 0x64]));
        assert_eq!(ipv6.src_addr, Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            ipv6.dst_addr,
            "ff02::1:ff00:64".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(ipv6.hop_limit, 255);
        assert_eq!(
            ns,
            NdiscRepr::NeighborSolicit {
                target_addr: vip6(),
                source_lladdr: None
            }
        );
    }

    /// Rebuilds a DAD-shaped frame with one thing changed, checksum kept right.
    fn solicit_frame(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        lladdr: Option<MacAddr>,
    ) -> Vec<u8> {
        let ndisc = NdiscRepr::NeighborSolicit {
            target_addr: vip6(),
            source_lladdr: lladdr,
        };
        Frame::Ndisc {
            ethernet: EthernetRepr {
                src_addr: MAC,
                dst_addr: MacAddr::ipv6_multicast(dst),
                ethertype: EtherType::IPV6,
                vlan: None,
            },
            ipv6: Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IPPROTO_ICMPV6,
                payload_len: ndisc.buffer_len(),
                hop_limit,
            },
            ndisc,
        }
        .to_bytes()
    }

    #[test]
    fn ndisc_validity_rules() {
        let group = solicited_node(vip6());
        let any = Ipv6Addr::UNSPECIFIED;
        assert!(parse_frame(&solicit_frame(any, group, 255, None)).is_ok());
        assert_eq!(
            parse_frame(&solicit_frame(any, group, 64, None)),
            Err(Error::NdiscHopLimit(64))
        );
        assert_eq!(
            parse_frame(&solicit_frame(any, group, 255, Some(MAC))),
            Err(Error::NdiscDadWithSourceLinkLayer)
        );
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(
            parse_frame(&solicit_frame(any, all_nodes, 255, None)),
            Err(Error::NdiscDadDestination(all_nodes))
        );
        let mut na = solicited_na(MAC, vip6(), "fd00:250::2".parse().unwrap(), PEER);
        // Point it at ff02::1 while keeping it solicited; fix the checksum so that rule is what fails.
        na[14 + 24..14 + 40].copy_from_slice(&all_nodes.octets());
        let mut packet = Ipv6Packet::new_unchecked(&mut na[14..]);
        Icmpv6Packet::new_unchecked(packet.payload_mut()).fill_checksum(vip6(), all_nodes);
        assert_eq!(
            parse_frame(&na),
            Err(Error::NdiscSolicitedToMulticast(all_nodes))
        );
    }

    #[test]
    fn other_frames() {
        // An ICMPv6 echo request is not neighbour discovery.
        let mut bytes = unsolicited_na(MAC, vip6());
        bytes[14 + 40] = 128;
        assert!(matches!(parse_frame(&bytes), Ok(Frame::Other { .. })));
        // Nor is UDP.
        let mut bytes = unsolicited_na(MAC, vip6());
        bytes[14 + 6] = 17;
        assert!(matches!(parse_frame(&bytes), Ok(Frame::Other { .. })));
        // Nor IPv4.
        let mut bytes = KERNEL_GRATUITOUS;
        bytes[12..14].copy_from_slice(&[0x08, 0x00]);
        let frame = parse_frame(&bytes).unwrap();
        assert_eq!(frame.ethernet().ethertype, EtherType::IPV4);
        assert_eq!(frame.to_bytes(), bytes[..14]);
        assert!(parse_frame(&bytes[..10]).is_err());
    }

    #[test]
    fn emit_into_a_buffer() {
        let frame = parse_frame(&KERNEL_GRATUITOUS).unwrap();
        let mut buf = [0u8; 60];
        assert_eq!(frame.emit(&mut buf), Ok(42));
        assert_eq!(buf[..42], KERNEL_GRATUITOUS);
        assert_eq!(
            frame.emit(&mut buf[..41]),
            Err(Error::BufferTooSmall {
                what: "frame",
                len: 41,
                need: 42
            })
        );
    }
}
