//! Ethernet II frames, with one optional 802.1Q tag recognised and looked through.

use std::fmt;

use super::{Error, MacAddr, Result, read_u16, write_bytes, write_u16};

/// The 16-bit type field of an Ethernet II frame; any value is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: EtherType = EtherType(0x0800);
    pub const ARP: EtherType = EtherType(0x0806);
    pub const VLAN: EtherType = EtherType(0x8100);
    pub const IPV6: EtherType = EtherType(0x86dd);
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::IPV4 => "IPv4",
            Self::ARP => "ARP",
            Self::VLAN => "802.1Q",
            Self::IPV6 => "IPv6",
            _ => return write!(f, "{:#06x}", self.0),
        };
        write!(f, "{:#06x} ({name})", self.0)
    }
}

/// An 802.1Q tag control information field: priority, drop eligibility and VLAN id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Priority code point, 0..=7.
    pub priority: u8,
    pub drop_eligible: bool,
    /// VLAN identifier, 0..=4095 (0: priority tag only).
    pub id: u16,
}

impl VlanTag {
    /// A tag for VLAN `id` with default priority; the id is masked to its 12 bits.
    pub const fn new(id: u16) -> VlanTag {
        VlanTag {
            priority: 0,
            drop_eligible: false,
            id: id & 0x0fff,
        }
    }

    pub const fn from_tci(tci: u16) -> VlanTag {
        VlanTag {
            priority: (tci >> 13) as u8,
            drop_eligible: tci & 0x1000 != 0,
            id: tci & 0x0fff,
        }
    }

    /// The tag control information; out-of-range fields are masked to their widths.
    pub const fn tci(&self) -> u16 {
        ((self.priority as u16 & 0x7) << 13)
            | ((self.drop_eligible as u16) << 12)
            | (self.id & 0x0fff)
    }
}

mod field {
    use std::ops::Range;

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const HEADER_LEN: usize = 14;
    // With an 802.1Q tag the outer type is 0x8100, then the TCI, then the inner type.
    pub const TCI: usize = 14;
    pub const INNER_ETHERTYPE: usize = 16;
    pub const TAGGED_HEADER_LEN: usize = 18;
}

/// A read/write view of an Ethernet II frame; `payload()` and `ethertype()` look through one 802.1Q tag.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view without length checks: getters on a short buffer return zeros or empty slices.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// A view over a buffer long enough for the header (and the tag, if the frame says it has one).
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        let need = self.header_len();
        if len < need {
            return Err(Error::Truncated {
                what: "Ethernet frame",
                len,
                need,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// 14, or 18 when the frame carries an 802.1Q tag.
    pub fn header_len(&self) -> usize {
        if self.outer_ethertype() == EtherType::VLAN {
            field::TAGGED_HEADER_LEN
        } else {
            field::HEADER_LEN
        }
    }

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(
            self.buffer
                .as_ref()
                .get(field::DESTINATION)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(self.buffer.as_ref().get(field::SOURCE).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The type field right after the addresses: 0x8100 for a tagged frame.
    pub fn outer_ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE).unwrap_or(0))
    }

    /// The 802.1Q tag, if the frame has one.
    pub fn vlan(&self) -> Option<VlanTag> {
        if self.outer_ethertype() != EtherType::VLAN {
            return None;
        }
        read_u16(self.buffer.as_ref(), field::TCI).map(VlanTag::from_tci)
    }

    /// The VLAN id of the 802.1Q tag, if the frame has one.
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan().map(|tag| tag.id)
    }

    /// The type of the payload: behind the tag for a tagged frame.
    pub fn ethertype(&self) -> EtherType {
        let offset = if self.outer_ethertype() == EtherType::VLAN {
            field::INNER_ETHERTYPE
        } else {
            field::ETHERTYPE
        };
        EtherType(read_u16(self.buffer.as_ref(), offset).unwrap_or(0))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// Everything after the header (and tag), including any padding up to the 60-byte minimum.
    pub fn payload(&self) -> &'a [u8] {
        let buf: &'a [u8] = self.buffer.as_ref();
        buf.get(self.header_len()..).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        write_bytes(
            self.buffer.as_mut(),
            field::DESTINATION.start,
            addr.as_bytes(),
        );
    }

    pub fn set_src_addr(&mut self, addr: MacAddr) {
        write_bytes(self.buffer.as_mut(), field::SOURCE.start, addr.as_bytes());
    }

    /// Writes the type field(s): with a tag, 0x8100, the TCI and `ethertype` behind it.
    pub fn set_ethertype(&mut self, ethertype: EtherType, vlan: Option<VlanTag>) {
        let buf = self.buffer.as_mut();
        match vlan {
            Some(tag) => {
                write_u16(buf, field::ETHERTYPE, EtherType::VLAN.0);
                write_u16(buf, field::TCI, tag.tci());
                write_u16(buf, field::INNER_ETHERTYPE, ethertype.0);
            }
            None => write_u16(buf, field::ETHERTYPE, ethertype.0),
        }
    }

    /// Everything after the header (and tag), writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        self.buffer.as_mut().get_mut(start..).unwrap_or_default()
    }
}

/// The owned meaning of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub src_addr: MacAddr,
    pub dst_addr: MacAddr,
    /// The payload's type (the inner one in a tagged frame).
    pub ethertype: EtherType,
    pub vlan: Option<VlanTag>,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
            vlan: frame.vlan(),
        })
    }

    /// The header's length: 14, or 18 with a tag.
    pub const fn buffer_len(&self) -> usize {
        if self.vlan.is_some() {
            field::TAGGED_HEADER_LEN
        } else {
            field::HEADER_LEN
        }
    }

    /// Writes the header; the payload is the caller's (through `payload_mut`).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype, self.vlan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kernel's ARP request from the lab (kernel-arp-request.hex): header + 28-byte ARP body.
    static FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x0a, 0xfa,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xfa, 0x00, 0x02,
    ];

    // arping -V 250: the same request with an 802.1Q tag (arping-vlan-request.hex, unpadded part).
    static TAGGED_HEADER: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x81, 0x00, 0x00,
        0xfa, 0x08, 0x06,
    ];

    const SRC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01]);

    #[test]
    fn deconstruct() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(frame.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(frame.src_addr(), SRC);
        assert_eq!(frame.ethertype(), EtherType::ARP);
        assert_eq!(frame.vlan(), None);
        assert_eq!(frame.payload(), &FRAME[14..]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0u8; 42];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_dst_addr(MacAddr::BROADCAST);
        frame.set_src_addr(SRC);
        frame.set_ethertype(EtherType::ARP, None);
        frame.payload_mut().copy_from_slice(&FRAME[14..]);
        assert_eq!(bytes, FRAME);
    }

    #[test]
    fn tagged() {
        let mut bytes = TAGGED_HEADER.to_vec();
        bytes.extend_from_slice(&FRAME[14..]);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.outer_ethertype(), EtherType::VLAN);
        assert_eq!(frame.ethertype(), EtherType::ARP);
        assert_eq!(frame.vlan_id(), Some(250));
        assert_eq!(frame.payload(), &FRAME[14..]);

        let repr = EthernetRepr::parse(&frame).unwrap();
        assert_eq!(repr.vlan, Some(VlanTag::new(250)));
        assert_eq!(repr.buffer_len(), 18);
        let mut out = vec![0u8; bytes.len()];
        let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&FRAME[14..]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn parse_and_emit() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        let repr = EthernetRepr::parse(&frame).unwrap();
        assert_eq!(
            repr,
            EthernetRepr {
                src_addr: SRC,
                dst_addr: MacAddr::BROADCAST,
                ethertype: EtherType::ARP,
                vlan: None
            }
        );
        let mut out = [0u8; 14];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        assert_eq!(out, FRAME[..14]);
    }

    #[test]
    fn short_buffers() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).unwrap_err(),
            Error::Truncated {
                what: "Ethernet frame",
                len: 13,
                need: 14
            }
        );
        // A tag promised but cut off.
        assert!(EthernetFrame::new_checked(&TAGGED_HEADER[..17]).is_err());
        let empty = EthernetFrame::new_unchecked(&[][..]);
        assert_eq!(empty.ethertype(), EtherType(0));
        assert_eq!(empty.payload(), &[] as &[u8]);
    }

    #[test]
    fn vlan_tci() {
        let tag = VlanTag {
            priority: 5,
            drop_eligible: true,
            id: 4094,
        };
        assert_eq!(tag.tci(), 0xbffe);
        assert_eq!(VlanTag::from_tci(0xbffe), tag);
        assert_eq!(EtherType::ARP.to_string(), "0x0806 (ARP)");
        assert_eq!(EtherType(0x88cc).to_string(), "0x88cc");
    }
}
