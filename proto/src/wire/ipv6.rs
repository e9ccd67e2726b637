//! The fixed IPv6 header (RFC 8200), enough to carry neighbour discovery.

use std::net::Ipv6Addr;

use super::{Error, Result, read_ipv6, read_u16, write_bytes, write_u8, write_u16};

/// The next-header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX with its
/// low 24 bits. Solicitations for `addr` arrive there, so the speaker joins it for every VIP.
pub const fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        (o[14] as u16) << 8 | o[15] as u16,
    )
}

/// Whether `addr` is a solicited-node multicast address (ff02::1:ff00:0/104).
pub(crate) fn is_solicited_node(addr: Ipv6Addr) -> bool {
    let o = addr.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
}

mod field {
    use std::ops::Range;

    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: usize = 8;
    pub const DST_ADDR: usize = 24;
    pub const HEADER_LEN: usize = 40;
}

/// A read/write view of an IPv6 packet: the fixed header and the payload its length field gives.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// A view without length checks: getters on a short buffer return zeros or empty slices.
    pub const fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    /// A view over a buffer holding the header and the whole payload it announces.
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated {
                what: "IPv6 header",
                len,
                need: field::HEADER_LEN,
            });
        }
        let payload_len = usize::from(self.payload_len());
        let available = len - field::HEADER_LEN;
        if payload_len > available {
            return Err(Error::Ipv6PayloadLength {
                payload_len,
                available,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn first_word(&self) -> u32 {
        self.buffer
            .as_ref()
            .get(field::VER_TC_FLOW)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    }

    pub fn version(&self) -> u8 {
        (self.first_word() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN).unwrap_or(0)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::NEXT_HEADER)
            .copied()
            .unwrap_or(0)
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::HOP_LIMIT)
            .copied()
            .unwrap_or(0)
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::SRC_ADDR)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::DST_ADDR)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv6Packet<&'a T> {
    /// The payload as long as the header says: Ethernet padding after it is left out.
    pub fn payload(&self) -> &'a [u8] {
        let buf: &'a [u8] = self.buffer.as_ref();
        let end = field::HEADER_LEN + usize::from(self.payload_len());
        buf.get(field::HEADER_LEN..end)
            .or_else(|| buf.get(field::HEADER_LEN..))
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, the traffic class and the flow label in one go: they share a word.
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_bytes(
            self.buffer.as_mut(),
            field::VER_TC_FLOW.start,
            &word.to_be_bytes(),
        );
    }

    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, value);
    }

    pub fn set_next_header(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::NEXT_HEADER, value);
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::HOP_LIMIT, value);
    }

    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        write_bytes(self.buffer.as_mut(), field::SRC_ADDR, &value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        write_bytes(self.buffer.as_mut(), field::DST_ADDR, &value.octets());
    }

    /// The payload, writable, as long as the header says (or what the buffer holds of it).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = field::HEADER_LEN + usize::from(self.payload_len());
        let buf = self.buffer.as_mut();
        let end = end.min(buf.len());
        buf.get_mut(field::HEADER_LEN..end).unwrap_or_default()
    }
}

/// The owned meaning of an IPv6 header. Traffic class and flow label are not kept: neighbour
/// discovery does not use them, and emit writes zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Ipv6Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(Error::Ipv6Version(packet.version()));
        }
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        })
    }

    /// The header's length, 40; the payload is counted by whoever emits it.
    pub const fn buffer_len(&self) -> usize {
        field::HEADER_LEN
    }

    /// Writes the header; fails if `payload_len` does not fit the 16-bit field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) -> Result<()> {
        let payload_len = u16::try_from(self.payload_len)
            .map_err(|_| Error::Ipv6PayloadTooLong(self.payload_len))?;
        packet.set_version_class_flow(0, 0);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The IPv6 header of the kernel's solicited advertisement in the lab (kernel-na-solicited.hex):
    // fd00:250::2 -> fe80::aff:fefa:1, ICMPv6, hop limit 255, 32 bytes of payload.
    static HEADER: [u8; 40] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0xfd, 0x00, 0x02, 0x50, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x0a, 0xff, 0xfe, 0xfa, 0x00, 0x01,
    ];

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src_addr: "fd00:250::2".parse().unwrap(),
            dst_addr: "fe80::aff:fefa:1".parse().unwrap(),
            next_header: IPPROTO_ICMPV6,
            payload_len: 32,
            hop_limit: 255,
        }
    }

    fn packet_bytes() -> Vec<u8> {
        let mut bytes = HEADER.to_vec();
        bytes.extend((0..32).map(|i| i as u8));
        bytes
    }

    #[test]
    fn deconstruct() {
        let bytes = packet_bytes();
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0);
        assert_eq!(packet.flow_label(), 0);
        assert_eq!(packet.payload_len(), 32);
        assert_eq!(packet.next_header(), IPPROTO_ICMPV6);
        assert_eq!(packet.hop_limit(), 255);
        assert_eq!(packet.src_addr(), repr().src_addr);
        assert_eq!(packet.dst_addr(), repr().dst_addr);
        assert_eq!(packet.payload(), &bytes[40..]);
    }

    #[test]
    fn construct() {
        let mut bytes = vec![0xa5u8; 72];
        let mut packet = Ipv6Packet::new_unchecked(&mut bytes[..]);
        packet.set_version_class_flow(0, 0);
        packet.set_payload_len(32);
        packet.set_next_header(IPPROTO_ICMPV6);
        packet.set_hop_limit(255);
        packet.set_src_addr(repr().src_addr);
        packet.set_dst_addr(repr().dst_addr);
        for (i, b) in packet.payload_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(bytes, packet_bytes());
    }

    #[test]
    fn parse_and_emit() {
        let bytes = packet_bytes();
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&packet).unwrap(), repr());
        let mut out = [0u8; 40];
        repr()
            .emit(&mut Ipv6Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(out, HEADER);
        let too_long = Ipv6Repr {
            payload_len: 70_000,
            ..repr()
        };
        assert_eq!(
            too_long.emit(&mut Ipv6Packet::new_unchecked(&mut out[..])),
            Err(Error::Ipv6PayloadTooLong(70_000))
        );
    }

    #[test]
    fn padding_is_not_payload() {
        let mut bytes = packet_bytes();
        bytes.extend_from_slice(&[0; 6]);
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 32);
    }

    #[test]
    fn rejects_short_and_foreign() {
        let bytes = packet_bytes();
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..39])
                .unwrap_err()
                .to_string(),
            "IPv6 header truncated: 39 bytes, need 40"
        );
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..71])
                .unwrap_err()
                .to_string(),
            "IPv6 payload length 32 exceeds the 31 bytes after the header"
        );
        let mut v4 = bytes.clone();
        v4[0] = 0x45;
        let packet = Ipv6Packet::new_checked(&v4[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&packet), Err(Error::Ipv6Version(4)));
    }

    #[test]
    fn solicited_node_addresses() {
        let vip: Ipv6Addr = "fd00:250::1234:5678".parse().unwrap();
        let group = solicited_node(vip);
        assert_eq!(group, "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap());
        assert!(is_solicited_node(group));
        assert!(!is_solicited_node(vip));
        assert!(!is_solicited_node("ff02::1".parse().unwrap()));
    }
}
