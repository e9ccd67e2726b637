//! Real frames captured in the lab (Linux kernel, arping, ndisc6) parsed back, field by field, and
//! re-emitted byte for byte where the format allows. `scripts/capture-wire-fixtures` regenerates them.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::net::{Ipv4Addr, Ipv6Addr};

use ferrolb_proto::wire::{
    ArpOperation, ArpRepr, Error, EtherType, EthernetRepr, Frame, Icmpv6Packet, Ipv6Packet,
    Ipv6Repr, MacAddr, NdiscRepr, NeighborFlags, VlanTag, arp_announcement, arp_probe, arp_reply,
    dad_solicit, gratuitous_arp_request, parse_frame, solicited_na, solicited_node, unsolicited_na,
};

/// The frame in a fixture: `#` lines are comments, whitespace is ignored, the rest is hex.
fn decode(text: &str) -> Vec<u8> {
    let hex: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(hex.len().is_multiple_of(2), "odd number of hex digits");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

macro_rules! fixture {
    ($name:literal) => {
        decode(include_str!(concat!("fixtures/wire/", $name, ".hex")))
    };
}

fn all_fixtures() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("kernel-arp-request", fixture!("kernel-arp-request")),
        ("kernel-arp-reply", fixture!("kernel-arp-reply")),
        ("kernel-arp-probe-reply", fixture!("kernel-arp-probe-reply")),
        ("kernel-arp-gratuitous", fixture!("kernel-arp-gratuitous")),
        ("arping-request", fixture!("arping-request")),
        ("arping-vlan-request", fixture!("arping-vlan-request")),
        (
            "arping-gratuitous-request",
            fixture!("arping-gratuitous-request"),
        ),
        (
            "arping-gratuitous-reply",
            fixture!("arping-gratuitous-reply"),
        ),
        ("arping-probe", fixture!("arping-probe")),
        ("ndisc6-solicit", fixture!("ndisc6-solicit")),
        ("kernel-na-solicited", fixture!("kernel-na-solicited")),
        ("kernel-ns-multicast", fixture!("kernel-ns-multicast")),
        ("kernel-ns-unicast", fixture!("kernel-ns-unicast")),
        ("kernel-na-unicast", fixture!("kernel-na-unicast")),
        ("kernel-ns-dad", fixture!("kernel-ns-dad")),
        ("kernel-na-unsolicited", fixture!("kernel-na-unsolicited")),
    ]
}

const MAC_A: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01]);
const MAC_B: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x02]);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn eth(src: MacAddr, dst: MacAddr, ethertype: EtherType) -> EthernetRepr {
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
        vlan: None,
    }
}

fn parse_arp(bytes: &[u8]) -> (EthernetRepr, ArpRepr) {
    match parse_frame(bytes).unwrap() {
        Frame::Arp { ethernet, arp } => (ethernet, arp),
        other => panic!("not ARP: {other:?}"),
    }
}

fn parse_ndisc(bytes: &[u8]) -> (EthernetRepr, Ipv6Repr, NdiscRepr) {
    match parse_frame(bytes).unwrap() {
        Frame::Ndisc {
            ethernet,
            ipv6,
            ndisc,
        } => (ethernet, ipv6, ndisc),
        other => panic!("not neighbour discovery: {other:?}"),
    }
}

/// Re-emitting the parsed frame gives the captured bytes, followed by exactly `padding` zero
/// bytes of Ethernet padding that are not part of the packet.
fn assert_reemits(bytes: &[u8], padding: usize) {
    let emitted = parse_frame(bytes).unwrap().to_bytes();
    assert_eq!(emitted.len() + padding, bytes.len(), "padding");
    assert_eq!(emitted, bytes[..emitted.len()]);
    assert!(
        bytes[emitted.len()..].iter().all(|&b| b == 0),
        "padding is zeros"
    );
}

// --- ARP --------------------------------------------------------------------------------------

#[test]
fn kernel_arp_request() {
    let bytes = fixture!("kernel-arp-request");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: MAC_A,
            source_protocol_addr: IP_A,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: IP_B,
        }
    );
    assert!(!arp.is_gratuitous() && !arp.is_probe());
    // veth does not pad: the kernel's 42 bytes arrive as they are.
    assert_reemits(&bytes, 0);
}

#[test]
fn kernel_arp_reply() {
    let bytes = fixture!("kernel-arp-reply");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_B, MAC_A, EtherType::ARP));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: MAC_B,
            source_protocol_addr: IP_B,
            target_hardware_addr: MAC_A,
            target_protocol_addr: IP_A,
        }
    );
    assert_reemits(&bytes, 0);
    // Our reply is the kernel's, byte for byte.
    assert_eq!(arp_reply(MAC_B, IP_B, MAC_A, IP_A), bytes);
}

#[test]
fn kernel_arp_probe_reply() {
    let bytes = fixture!("kernel-arp-probe-reply");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_B, MAC_A, EtherType::ARP));
    assert_eq!(arp.operation, ArpOperation::Reply);
    assert_eq!(arp.source_protocol_addr, IP_B);
    assert_eq!(arp.target_hardware_addr, MAC_A);
    assert_eq!(arp.target_protocol_addr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(arp_reply(MAC_B, IP_B, MAC_A, Ipv4Addr::UNSPECIFIED), bytes);
}

#[test]
fn kernel_gratuitous_arp() {
    let bytes = fixture!("kernel-arp-gratuitous");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(arp.operation, ArpOperation::Request);
    assert_eq!(arp.source_protocol_addr, IP_A);
    assert_eq!(arp.target_protocol_addr, IP_A);
    assert_eq!(arp.target_hardware_addr, MacAddr::UNSPECIFIED);
    assert!(arp.is_gratuitous());
    assert_eq!(gratuitous_arp_request(MAC_A, IP_A), bytes);
    assert_eq!(arp_announcement(MAC_A, IP_A), bytes);
}

#[test]
fn arping_request() {
    let bytes = fixture!("arping-request");
    // arping appends 16 zero bytes to the 42-byte frame (58 bytes; the NIC would pad to 60).
    assert_eq!(bytes.len(), 58);
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: MAC_A,
            source_protocol_addr: IP_A,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: IP_B,
        }
    );
    assert_reemits(&bytes, 16);
}

#[test]
fn arping_vlan_request() {
    let bytes = fixture!("arping-vlan-request");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(
        ethernet,
        EthernetRepr {
            vlan: Some(VlanTag::new(250)),
            ..eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP)
        }
    );
    assert_eq!(arp.operation, ArpOperation::Request);
    assert_eq!(arp.target_protocol_addr, IP_B);
    assert_eq!(bytes.len(), 62);
    assert_reemits(&bytes, 16);
}

#[test]
fn arping_gratuitous_request() {
    let bytes = fixture!("arping-gratuitous-request");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: MAC_A,
            source_protocol_addr: IP_A,
            // arping puts broadcast here; the kernel and we put zeros. Receivers ignore it.
            target_hardware_addr: MacAddr::BROADCAST,
            target_protocol_addr: IP_A,
        }
    );
    assert!(arp.is_gratuitous());
    assert_reemits(&bytes, 16);
}

#[test]
fn arping_gratuitous_reply() {
    let bytes = fixture!("arping-gratuitous-reply");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(arp.operation, ArpOperation::Reply);
    assert_eq!(arp.source_hardware_addr, MAC_A);
    assert_eq!(
        (arp.source_protocol_addr, arp.target_protocol_addr),
        (IP_A, IP_A)
    );
    assert!(arp.is_gratuitous());
    assert_reemits(&bytes, 16);
}

#[test]
fn arping_probe() {
    let bytes = fixture!("arping-probe");
    let (ethernet, arp) = parse_arp(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MacAddr::BROADCAST, EtherType::ARP));
    assert_eq!(
        arp,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: MAC_A,
            source_protocol_addr: Ipv4Addr::UNSPECIFIED,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: IP_B,
        }
    );
    assert!(arp.is_probe());
    assert_reemits(&bytes, 16);
    // Our probe is arping's, less the padding.
    assert_eq!(arp_probe(MAC_A, IP_B), bytes[..42]);
}

// --- neighbour discovery ----------------------------------------------------------------------

#[test]
fn ndisc6_solicit() {
    let bytes = fixture!("ndisc6-solicit");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    let target = ip6("fd00:250::2");
    assert_eq!(
        ethernet,
        eth(
            MAC_A,
            MacAddr::ipv6_multicast(solicited_node(target)),
            EtherType::IPV6
        )
    );
    assert_eq!(ethernet.dst_addr, MacAddr([0x33, 0x33, 0xff, 0, 0, 2]));
    assert_eq!(ipv6.src_addr, ip6("fe80::aff:fefa:1"));
    assert_eq!(ipv6.dst_addr, ip6("ff02::1:ff00:2"));
    assert_eq!(ipv6.dst_addr, solicited_node(target));
    assert_eq!(
        (ipv6.hop_limit, ipv6.next_header, ipv6.payload_len),
        (255, 58, 32)
    );
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            source_lladdr: Some(MAC_A),
        }
    );
    // The kernel gives ndisc6's raw socket a random flow label, which Ipv6Repr does not keep:
    // with it copied over, the frame re-emits exactly.
    let flow_label = Ipv6Packet::new_checked(&bytes[14..]).unwrap().flow_label();
    let mut emitted = parse_frame(&bytes).unwrap().to_bytes();
    let mut header = Ipv6Packet::new_unchecked(&mut emitted[14..]);
    assert_eq!(header.flow_label(), 0);
    header.set_version_class_flow(0, flow_label);
    assert_eq!(emitted, bytes);
}

#[test]
fn kernel_na_solicited() {
    let bytes = fixture!("kernel-na-solicited");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    assert_eq!(ethernet, eth(MAC_B, MAC_A, EtherType::IPV6));
    assert_eq!(ipv6.src_addr, ip6("fd00:250::2"));
    assert_eq!(ipv6.dst_addr, ip6("fe80::aff:fefa:1"));
    assert_eq!(ipv6.hop_limit, 255);
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
            target_addr: ip6("fd00:250::2"),
            target_lladdr: Some(MAC_B),
        }
    );
    assert_reemits(&bytes, 0);
    // Our answer to ndisc6 is the kernel's, byte for byte.
    assert_eq!(
        solicited_na(MAC_B, ip6("fd00:250::2"), ip6("fe80::aff:fefa:1"), MAC_A),
        bytes
    );
}

#[test]
fn kernel_ns_multicast() {
    let bytes = fixture!("kernel-ns-multicast");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    assert_eq!(
        ethernet,
        eth(MAC_A, MacAddr([0x33, 0x33, 0xff, 0, 0, 2]), EtherType::IPV6)
    );
    assert_eq!(ipv6.src_addr, ip6("fd00:250::1"));
    assert_eq!(ipv6.dst_addr, ip6("ff02::1:ff00:2"));
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborSolicit {
            target_addr: ip6("fd00:250::2"),
            source_lladdr: Some(MAC_A),
        }
    );
    assert_reemits(&bytes, 0);
}

#[test]
fn kernel_ns_unicast_nud() {
    let bytes = fixture!("kernel-ns-unicast");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    // Unicast all the way down: to A's MAC and A's address.
    assert_eq!(ethernet, eth(MAC_B, MAC_A, EtherType::IPV6));
    assert_eq!(ipv6.src_addr, ip6("fe80::aff:fefa:2"));
    assert_eq!(ipv6.dst_addr, ip6("fd00:250::1"));
    assert!(!ipv6.dst_addr.is_multicast());
    // Linux does include its source link-layer address in NUD probes.
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborSolicit {
            target_addr: ip6("fd00:250::1"),
            source_lladdr: Some(MAC_B),
        }
    );
    assert_reemits(&bytes, 0);
}

#[test]
fn kernel_na_unicast_without_option() {
    let bytes = fixture!("kernel-na-unicast");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    assert_eq!(ethernet, eth(MAC_A, MAC_B, EtherType::IPV6));
    assert_eq!(ipv6.src_addr, ip6("fd00:250::1"));
    assert_eq!(ipv6.dst_addr, ip6("fe80::aff:fefa:2"));
    assert_eq!(ipv6.payload_len, 24);
    // Answering a unicast solicitation, Linux sets neither Override nor the option: the
    // advertised MAC is the Ethernet source.
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::SOLICITED,
            target_addr: ip6("fd00:250::1"),
            target_lladdr: None,
        }
    );
    assert_reemits(&bytes, 0);
}

#[test]
fn kernel_ns_dad() {
    let bytes = fixture!("kernel-ns-dad");
    let target = ip6("fd00:250::3");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    assert_eq!(
        ethernet,
        eth(MAC_A, MacAddr([0x33, 0x33, 0xff, 0, 0, 3]), EtherType::IPV6)
    );
    assert_eq!(ipv6.src_addr, Ipv6Addr::UNSPECIFIED);
    assert_eq!(ipv6.dst_addr, ip6("ff02::1:ff00:3"));
    assert_eq!(ipv6.hop_limit, 255);
    // The kernel adds an RFC 7527 nonce option (type 14): skipped as unknown.
    assert_eq!(ipv6.payload_len, 32);
    assert_eq!(bytes[14 + 40 + 24], 14);
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            source_lladdr: None,
        }
    );
    // Our DAD solicitation is the kernel's without the nonce.
    let ours = dad_solicit(MAC_A, target);
    let (our_eth, our_ipv6, our_ndisc) = parse_ndisc(&ours);
    assert_eq!(our_eth, ethernet);
    assert_eq!(
        our_ipv6,
        Ipv6Repr {
            payload_len: 24,
            ..ipv6
        }
    );
    assert_eq!(our_ndisc, ndisc);
    assert_eq!(ours.len(), bytes.len() - 8);
}

#[test]
fn kernel_na_unsolicited() {
    let bytes = fixture!("kernel-na-unsolicited");
    let target = ip6("fd00:250::3");
    let (ethernet, ipv6, ndisc) = parse_ndisc(&bytes);
    assert_eq!(
        ethernet,
        eth(MAC_A, MacAddr::IPV6_ALL_NODES, EtherType::IPV6)
    );
    assert_eq!(ipv6.src_addr, target);
    assert_eq!(ipv6.dst_addr, ip6("ff02::1"));
    assert_eq!(
        ndisc,
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::OVERRIDE,
            target_addr: target,
            target_lladdr: Some(MAC_A),
        }
    );
    assert_eq!(unsolicited_na(MAC_A, target), bytes);
}

// --- every fixture ----------------------------------------------------------------------------

#[test]
fn every_ndisc_checksum_verifies_and_any_flipped_bit_is_caught() {
    for (name, bytes) in all_fixtures() {
        let Ok(Frame::Ndisc { ipv6, .. }) = parse_frame(&bytes) else {
            continue;
        };
        let packet = Ipv6Packet::new_checked(&bytes[14..]).unwrap();
        let icmp = Icmpv6Packet::new_checked(packet.payload()).unwrap();
        assert!(icmp.verify_checksum(ipv6.src_addr, ipv6.dst_addr), "{name}");
        assert_eq!(
            icmp.compute_checksum(ipv6.src_addr, ipv6.dst_addr),
            icmp.checksum(),
            "{name}"
        );
        // Any single bit flipped in the ICMPv6 message after its type fails the checksum.
        let start = 14 + 40 + 1;
        for i in start..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(parse_frame(&bad), Err(Error::Icmpv6Checksum { .. })),
                "{name}: byte {i}"
            );
        }
    }
}

/// The captured frame's length without Ethernet padding: options we skip still count.
fn unpadded_len(frame: &Frame) -> usize {
    match frame {
        Frame::Ndisc { ethernet, ipv6, .. } => ethernet.buffer_len() + 40 + ipv6.payload_len,
        other => other.buffer_len(),
    }
}

#[test]
fn every_truncation_is_an_error_or_only_cut_padding() {
    for (name, bytes) in all_fixtures() {
        let whole = parse_frame(&bytes).unwrap();
        let len = unpadded_len(&whole);
        for cut in 0..bytes.len() {
            match parse_frame(&bytes[..cut]) {
                Err(_) => assert!(cut < len, "{name}: cut at {cut}"),
                Ok(frame) => {
                    assert!(cut >= len, "{name}: cut at {cut} parsed");
                    assert_eq!(frame, whole, "{name}");
                }
            }
        }
    }
}

#[test]
fn fixture_sizes() {
    for (name, bytes) in all_fixtures() {
        let frame = parse_frame(&bytes).unwrap();
        assert!(!matches!(frame, Frame::Other { .. }), "{name}");
        assert!(bytes.len() >= frame.buffer_len(), "{name}");
    }
}
