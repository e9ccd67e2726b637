//! Ethernet, ARP and IPv6 neighbour discovery on the wire: zero-copy views, owned representations
//! and the whole frames a speaker receives and sends.
//!
//! Each protocol follows the smoltcp pattern. A `Packet<T: AsRef<[u8]>>` is a view over a buffer:
//! `new_checked` refuses a buffer too short for the fields it promises, getters read them in place,
//! setters (on `AsMut<[u8]>` buffers) write them. A `Repr` is the owned, `Copy` meaning of a packet
//! with `parse`, `buffer_len` and `emit`. Nothing here panics on any input, and nothing does I/O.
//!
//! A speaker needs only two things from this module:
//!
//! - [`parse_frame`]: one entry point classifying a received frame as [`Frame::Arp`],
//!   [`Frame::Ndisc`] or [`Frame::Other`], with the Ethernet header kept (NDP answers to a unicast
//!   solicitation without a source link-layer option go to the Ethernet source).
//! - The constructors of every frame it sends: [`arp_reply`], [`gratuitous_arp_request`],
//!   [`gratuitous_arp_reply`], [`arp_probe`], [`arp_announcement`], [`solicited_na`],
//!   [`unsolicited_na`], [`dad_solicit`]; and [`solicited_node`] / [`MacAddr::ipv6_multicast`]
//!   to join the groups its solicitations arrive on.
//! - [`mark`]: the sealed mark it appends to its claims, by which speakers of one cluster know
//!   each other's claims from a foreign host's.

mod arp;
mod ethernet;
mod frames;
mod icmpv6;
mod ipv6;
pub mod mark;
mod ndisc;

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, VlanTag};
pub use frames::{
    Frame, arp_announcement, arp_probe, arp_reply, dad_solicit, gratuitous_arp_reply,
    gratuitous_arp_request, parse_frame, solicited_na, unsolicited_na,
};
pub use icmpv6::Icmpv6Packet;
pub use ipv6::{IPPROTO_ICMPV6, Ipv6Packet, Ipv6Repr, solicited_node};
pub use ndisc::{NdiscRepr, NeighborFlags};

/// Why bytes could not be parsed as, or a representation could not be emitted into, a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} truncated: {len} bytes, need {need}")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unsupported ARP hardware type {0} (only Ethernet, 1)")]
    ArpHardwareType(u16),
    #[error("unsupported ARP protocol type {0:#06x} (only IPv4, 0x0800)")]
    ArpProtocolType(u16),
    #[error(
        "unsupported ARP address lengths: hardware {hardware}, protocol {protocol} (need 6 and 4)"
    )]
    ArpAddressLength { hardware: u8, protocol: u8 },
    #[error("unsupported ARP operation {0} (only request 1 and reply 2)")]
    ArpOperation(u16),
    #[error("IPv6 header with version {0}, need 6")]
    Ipv6Version(u8),
    #[error("IPv6 payload length {payload_len} exceeds the {available} bytes after the header")]
    Ipv6PayloadLength {
        payload_len: usize,
        available: usize,
    },
    #[error("IPv6 payload of {0} bytes does not fit the 16-bit payload length field")]
    Ipv6PayloadTooLong(usize),
    #[error("ICMPv6 checksum mismatch: packet has {found:#06x}, computed {computed:#06x}")]
    Icmpv6Checksum { found: u16, computed: u16 },
    #[error("ICMPv6 type {0} is not a neighbour solicitation (135) or advertisement (136)")]
    NdiscType(u8),
    #[error("neighbour discovery message with ICMPv6 code {0}, need 0")]
    NdiscCode(u8),
    #[error("neighbour discovery message with hop limit {0}, need 255 (it may come from off-link)")]
    NdiscHopLimit(u8),
    #[error("neighbour discovery message for multicast target {0}")]
    NdiscMulticastTarget(Ipv6Addr),
    #[error("neighbour discovery option of type {0} has length 0")]
    NdiscOptionZeroLength(u8),
    #[error("neighbour discovery option of type {kind} needs {need} bytes, {available} left")]
    NdiscOptionTruncated {
        kind: u8,
        need: usize,
        available: usize,
    },
    #[error("link-layer address option of {0} bytes, need 8 for Ethernet")]
    NdiscLinkLayerOptionLength(usize),
    #[error("DAD solicitation (from ::) carries a source link-layer option")]
    NdiscDadWithSourceLinkLayer,
    #[error("DAD solicitation (from ::) sent to {0}, need a solicited-node multicast address")]
    NdiscDadDestination(Ipv6Addr),
    #[error("neighbour advertisement to multicast {0} has the Solicited flag set")]
    NdiscSolicitedToMulticast(Ipv6Addr),
    #[error("{what} does not fit: {len} bytes of buffer, need {need}")]
    BufferTooSmall {
        what: &'static str,
        len: usize,
        need: usize,
    },
}

/// The result of parsing or emitting anything in [`wire`](self).
pub type Result<T> = std::result::Result<T, Error>;

/// An Ethernet (IEEE 802 MAC-48) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff, where gratuitous ARP and probes go.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00, the "unknown" target hardware address of an ARP request.
    pub const UNSPECIFIED: MacAddr = MacAddr([0; 6]);
    /// 33:33:00:00:00:01, the MAC of ff02::1 (all nodes), where unsolicited NAs go.
    pub const IPV6_ALL_NODES: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);

    /// The address in the first six bytes of `bytes`, if there are six.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        bytes
            .get(..6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(MacAddr)
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Group bit set: multicast, including broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// An address a station may use as its own: neither group nor all-zero.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::UNSPECIFIED
    }

    /// The MAC an IPv6 multicast address maps to (RFC 2464 §7): 33:33 and its low 32 bits.
    pub const fn ipv6_multicast(addr: Ipv6Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {0:?}: expected six hex octets separated by ':', like 02:00:0a:fa:00:01"
)]
pub struct ParseMacAddrError(String);

impl FromStr for MacAddr {
    type Err = ParseMacAddrError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || ParseMacAddrError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// Reads a big-endian u16 at `offset`, if the buffer holds it.
fn read_u16(buf: &[u8], offset: usize) -> Option<u16> {
    let b = buf.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Writes a big-endian u16 at `offset`; a buffer too short is left alone (views are length-checked).
fn write_u16(buf: &mut [u8], offset: usize, value: u16) {
    write_bytes(buf, offset, &value.to_be_bytes());
}

/// Copies `bytes` to `offset`; a buffer too short is left alone (views are length-checked).
fn write_bytes(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    let Some(end) = offset.checked_add(bytes.len()) else {
        return;
    };
    if let Some(dst) = buf.get_mut(offset..end) {
        dst.copy_from_slice(bytes);
    }
}

fn write_u8(buf: &mut [u8], offset: usize, value: u8) {
    if let Some(b) = buf.get_mut(offset) {
        *b = value;
    }
}

/// The IPv6 address in the sixteen bytes at `offset`, or :: if the buffer is too short.
fn read_ipv6(buf: &[u8], offset: usize) -> Ipv6Addr {
    offset
        .checked_add(16)
        .and_then(|end| buf.get(offset..end))
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(Ipv6Addr::from)
        .unwrap_or(Ipv6Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_display_and_parse() {
        let mac = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01]);
        assert_eq!(mac.to_string(), "02:00:0a:fa:00:01");
        assert_eq!("02:00:0a:fa:00:01".parse::<MacAddr>(), Ok(mac));
        assert_eq!("2:0:A:fa:0:1".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:00:0a:fa:00",
            "02:00:0a:fa:00:01:02",
            "02:00:0a:fa:00:g1",
            "020:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_kinds() {
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::IPV6_ALL_NODES.is_multicast());
        assert!(!MacAddr::UNSPECIFIED.is_unicast());
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_unicast());
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3, 4, 5]), None);
        assert_eq!(
            MacAddr::from_bytes(&[1, 2, 3, 4, 5, 6, 7]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
    }

    #[test]
    fn ipv6_multicast_mac() {
        let group: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
        assert_eq!(
            MacAddr::ipv6_multicast(group),
            MacAddr([0x33, 0x33, 0xff, 0, 0, 2])
        );
        assert_eq!(
            MacAddr::ipv6_multicast(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
            MacAddr::IPV6_ALL_NODES
        );
    }

    #[test]
    fn byte_helpers_never_panic() {
        let mut buf = [0u8; 3];
        assert_eq!(read_u16(&buf, 2), None);
        assert_eq!(read_u16(&buf, usize::MAX), None);
        write_u16(&mut buf, 2, 0xffff);
        write_bytes(&mut buf, usize::MAX, &[1]);
        write_u8(&mut buf, 9, 1);
        assert_eq!(buf, [0, 0, 0]);
        assert_eq!(read_ipv6(&buf, 0), Ipv6Addr::UNSPECIFIED);
    }
}
