//! Properties of `proto::wire`: no input makes parsing panic, and every valid representation
//! survives emit then parse unchanged.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::net::{Ipv4Addr, Ipv6Addr};

use ferrolb_proto::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Frame, Icmpv6Packet,
    Ipv6Packet, Ipv6Repr, MacAddr, NdiscRepr, NeighborFlags, VlanTag, arp_probe, dad_solicit,
    gratuitous_arp_reply, parse_frame, solicited_na, solicited_node, unsolicited_na,
};
use proptest::prelude::*;

/// Runs every parser in the module over `bytes`, checked and unchecked; only panics matter.
fn parse_everything(bytes: &[u8]) {
    let _ = parse_frame(bytes);

    let frame = EthernetFrame::new_unchecked(bytes);
    let _ = (
        frame.dst_addr(),
        frame.src_addr(),
        frame.ethertype(),
        frame.vlan_id(),
    );
    let _ = frame.payload();
    if let Ok(frame) = EthernetFrame::new_checked(bytes) {
        let _ = EthernetRepr::parse(&frame);
    }

    let arp = ArpPacket::new_unchecked(bytes);
    let _ = (
        arp.source_hardware_addr(),
        arp.target_protocol_addr(),
        arp.operation(),
    );
    if let Ok(arp) = ArpPacket::new_checked(bytes) {
        let _ = ArpRepr::parse(&arp);
    }

    let ipv6 = Ipv6Packet::new_unchecked(bytes);
    let _ = (
        ipv6.src_addr(),
        ipv6.dst_addr(),
        ipv6.flow_label(),
        ipv6.payload(),
    );
    if let Ok(ipv6) = Ipv6Packet::new_checked(bytes) {
        let _ = Ipv6Repr::parse(&ipv6);
    }

    let icmp = Icmpv6Packet::new_unchecked(bytes);
    let _ = (icmp.ndisc_target(), icmp.ndisc_options(), icmp.checksum());
    if let Ok(icmp) = Icmpv6Packet::new_checked(bytes) {
        let (src, dst) = (Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST);
        let _ = icmp.verify_checksum(src, dst);
        let _ = NdiscRepr::parse(src, dst, &icmp);
    }
}

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

/// An address a neighbour discovery target or source may be: not multicast, not ::.
fn unicast_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(|mut o| {
        if o[0] == 0xff {
            o[0] = 0xfd;
        }
        if o == [0; 16] {
            o[15] = 1;
        }
        Ipv6Addr::from(o)
    })
}

fn vlan() -> impl Strategy<Value = Option<VlanTag>> {
    prop::option::of((0u8..8, any::<bool>(), 0u16..4096).prop_map(
        |(priority, drop_eligible, id)| VlanTag {
            priority,
            drop_eligible,
            id,
        },
    ))
}

fn ethernet(ethertype: EtherType) -> impl Strategy<Value = EthernetRepr> {
    (mac(), mac(), vlan()).prop_map(move |(src_addr, dst_addr, vlan)| EthernetRepr {
        src_addr,
        dst_addr,
        ethertype,
        vlan,
    })
}

fn arp_repr() -> impl Strategy<Value = ArpRepr> {
    (
        prop_oneof![Just(ArpOperation::Request), Just(ArpOperation::Reply)],
        mac(),
        ipv4(),
        mac(),
        ipv4(),
    )
        .prop_map(|(operation, sha, spa, tha, tpa)| ArpRepr {
            operation,
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        })
}

/// A valid (IPv6, neighbour discovery) pair: RFC 4861's rules hold by construction.
fn ndisc_pair() -> impl Strategy<Value = (Ipv6Repr, NdiscRepr)> {
    let solicit = (
        unicast_ipv6(),
        prop::option::of(unicast_ipv6()),
        ipv6(),
        prop::option::of(mac()),
    )
        .prop_map(|(target, src, dst, lladdr)| match src {
            Some(src) => (src, dst, target, lladdr),
            // DAD: from ::, to the target's solicited-node group, no source option.
            None => (Ipv6Addr::UNSPECIFIED, solicited_node(target), target, None),
        })
        .prop_map(|(src, dst, target, lladdr)| {
            (
                src,
                dst,
                NdiscRepr::NeighborSolicit {
                    target_addr: target,
                    source_lladdr: lladdr,
                },
            )
        });
    let advert = (
        unicast_ipv6(),
        unicast_ipv6(),
        ipv6(),
        0u8..8,
        prop::option::of(mac()),
    )
        .prop_map(|(target, src, dst, bits, lladdr)| {
            let mut flags = NeighborFlags::from_bits_truncate(bits << 5);
            if dst.is_multicast() && flags.solicited() {
                flags = NeighborFlags::from_bits_truncate(
                    flags.bits() & !NeighborFlags::SOLICITED.bits(),
                );
            }
            (
                src,
                dst,
                NdiscRepr::NeighborAdvert {
                    flags,
                    target_addr: target,
                    target_lladdr: lladdr,
                },
            )
        });
    prop_oneof![solicit, advert].prop_map(|(src, dst, ndisc)| {
        (
            Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: 58,
                payload_len: ndisc.buffer_len(),
                hop_limit: 255,
            },
            ndisc,
        )
    })
}

/// A valid frame of any kind the module builds.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (ethernet(EtherType::ARP), arp_repr()).prop_map(|(ethernet, arp)| Frame::Arp {
            ethernet,
            arp
        }
        .to_bytes()),
        (ethernet(EtherType::IPV6), ndisc_pair()).prop_map(|(ethernet, (ipv6, ndisc))| {
            Frame::Ndisc {
                ethernet,
                ipv6,
                ndisc,
            }
            .to_bytes()
        }),
        (mac(), ipv4()).prop_map(|(m, ip)| arp_probe(m, ip)),
        (mac(), ipv4()).prop_map(|(m, ip)| gratuitous_arp_reply(m, ip)),
        (mac(), unicast_ipv6()).prop_map(|(m, ip)| dad_solicit(m, ip)),
        (mac(), unicast_ipv6()).prop_map(|(m, ip)| unsolicited_na(m, ip)),
        (mac(), unicast_ipv6(), ipv6(), mac()).prop_map(|(m, t, r, rm)| solicited_na(m, t, r, rm)),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..=2048)) {
        parse_everything(&bytes);
        // And again behind each header a parser would look past, so random bytes reach deep.
        for ethertype in [[0x08, 0x06], [0x86, 0xdd], [0x81, 0x00]] {
            let mut framed = vec![0u8; 12];
            framed.extend_from_slice(&ethertype);
            framed.extend_from_slice(&bytes);
            parse_everything(&framed);
        }
    }

    #[test]
    fn random_ipv6_icmp_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..=200),
        msg_type in prop_oneof![Just(135u8), Just(136u8), any::<u8>()],
        payload_len in prop_oneof![Just(None), any::<u16>().prop_map(Some)],
        src in ipv6(),
        dst in ipv6(),
    ) {
        let mut frame = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let len = payload_len.unwrap_or(body.len() as u16 + 1);
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[58, 255]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.push(msg_type);
        frame.extend_from_slice(&body);
        parse_everything(&frame);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frame in valid_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = frame;
        for (at, value) in flips {
            let i = at.index(frame.len());
            frame[i] = value;
        }
        parse_everything(&frame);
        parse_everything(&frame[..cut.index(frame.len() + 1)]);
    }

    #[test]
    fn ethernet_round_trips(
        repr in (mac(), mac(), vlan(), any::<u16>().prop_filter("not a tag", |t| *t != 0x8100)).prop_map(
            |(src_addr, dst_addr, vlan, ethertype)| EthernetRepr { src_addr, dst_addr, ethertype: EtherType(ethertype), vlan },
        ),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![0u8; repr.buffer_len() + payload.len()];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&payload);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(EthernetRepr::parse(&frame).unwrap(), repr);
        prop_assert_eq!(frame.payload(), &payload[..]);
        prop_assert_eq!(frame.vlan_id(), repr.vlan.map(|t| t.id));
    }

    #[test]
    fn arp_round_trips(ethernet in ethernet(EtherType::ARP), arp in arp_repr()) {
        let mut bytes = [0u8; 28];
        arp.emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap(), arp);

        let frame = Frame::Arp { ethernet, arp };
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), frame.buffer_len());
        prop_assert_eq!(parse_frame(&bytes).unwrap(), frame);
    }

    #[test]
    fn ndisc_round_trips(ethernet in ethernet(EtherType::IPV6), (ipv6, ndisc) in ndisc_pair()) {
        let mut bytes = vec![0u8; ndisc.buffer_len()];
        ndisc.emit(ipv6.src_addr, ipv6.dst_addr, &mut Icmpv6Packet::new_unchecked(&mut bytes[..])).unwrap();
        let icmp = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        prop_assert!(icmp.verify_checksum(ipv6.src_addr, ipv6.dst_addr));
        prop_assert_eq!(NdiscRepr::parse(ipv6.src_addr, ipv6.dst_addr, &icmp).unwrap(), ndisc);

        let frame = Frame::Ndisc { ethernet, ipv6, ndisc };
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), frame.buffer_len());
        prop_assert_eq!(parse_frame(&bytes).unwrap(), frame);
        // Ethernet padding does not change the meaning.
        let mut padded = bytes.clone();
        padded.resize(bytes.len().max(60) + 4, 0);
        prop_assert_eq!(parse_frame(&padded).unwrap(), frame);
    }
}
