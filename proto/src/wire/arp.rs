//! ARP packets (RFC 826), with the Ethernet/IPv4 flavour as the only owned representation.

use std::net::Ipv4Addr;

use super::{Error, EtherType, MacAddr, Result, read_u16, write_bytes, write_u8, write_u16};

/// What an ARP packet asks or tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Request,
            2 => Self::Reply,
            other => Self::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// ARP hardware type of Ethernet.
const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use std::ops::Range;

    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    /// The addresses follow, their lengths given by HLEN and PLEN.
    pub const ADDRESSES: usize = 8;

    pub const fn sha(hlen: u8, _plen: u8) -> Range<usize> {
        ADDRESSES..ADDRESSES + hlen as usize
    }
    pub const fn spa(hlen: u8, plen: u8) -> Range<usize> {
        let start = sha(hlen, plen).end;
        start..start + plen as usize
    }
    pub const fn tha(hlen: u8, plen: u8) -> Range<usize> {
        let start = spa(hlen, plen).end;
        start..start + hlen as usize
    }
    pub const fn tpa(hlen: u8, plen: u8) -> Range<usize> {
        let start = tha(hlen, plen).end;
        start..start + plen as usize
    }
}

/// The length of an Ethernet/IPv4 ARP packet.
const ETHERNET_IPV4_LEN: usize = field::tpa(6, 4).end;

/// A read/write view of an ARP packet of any hardware and protocol address lengths.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view without length checks: getters on a short buffer return zeros or empty slices.
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// A view over a buffer holding the fixed header and all four addresses it announces.
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        let need = if len < field::ADDRESSES {
            field::ADDRESSES
        } else {
            field::tpa(self.hardware_len(), self.protocol_len()).end
        };
        if len < need {
            return Err(Error::Truncated {
                what: "ARP packet",
                len,
                need,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE).unwrap_or(0)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PTYPE).unwrap_or(0))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref().get(field::HLEN).copied().unwrap_or(0)
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref().get(field::PLEN).copied().unwrap_or(0)
    }

    pub fn operation(&self) -> ArpOperation {
        read_u16(self.buffer.as_ref(), field::OPER)
            .unwrap_or(0)
            .into()
    }

    pub fn source_hardware_addr(&self) -> &[u8] {
        self.slice(field::sha(self.hardware_len(), self.protocol_len()))
    }

    pub fn source_protocol_addr(&self) -> &[u8] {
        self.slice(field::spa(self.hardware_len(), self.protocol_len()))
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        self.slice(field::tha(self.hardware_len(), self.protocol_len()))
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        self.slice(field::tpa(self.hardware_len(), self.protocol_len()))
    }

    fn slice(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.buffer.as_ref().get(range).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::HTYPE, value);
    }

    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::PTYPE, value.0);
    }

    pub fn set_hardware_len(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::HLEN, value);
    }

    pub fn set_protocol_len(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::PLEN, value);
    }

    pub fn set_operation(&mut self, value: ArpOperation) {
        write_u16(self.buffer.as_mut(), field::OPER, value.into());
    }

    /// Address setters write at the offsets the length fields give: set those first.
    pub fn set_source_hardware_addr(&mut self, value: &[u8]) {
        let at = field::sha(self.hardware_len(), self.protocol_len()).start;
        write_bytes(self.buffer.as_mut(), at, value);
    }

    pub fn set_source_protocol_addr(&mut self, value: &[u8]) {
        let at = field::spa(self.hardware_len(), self.protocol_len()).start;
        write_bytes(self.buffer.as_mut(), at, value);
    }

    pub fn set_target_hardware_addr(&mut self, value: &[u8]) {
        let at = field::tha(self.hardware_len(), self.protocol_len()).start;
        write_bytes(self.buffer.as_mut(), at, value);
    }

    pub fn set_target_protocol_addr(&mut self, value: &[u8]) {
        let at = field::tpa(self.hardware_len(), self.protocol_len()).start;
        write_bytes(self.buffer.as_mut(), at, value);
    }
}

/// The owned meaning of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Accepts Ethernet/IPv4 requests and replies; anything else is an error naming the field.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET {
            return Err(Error::ArpHardwareType(packet.hardware_type()));
        }
        if packet.protocol_type() != EtherType::IPV4 {
            return Err(Error::ArpProtocolType(packet.protocol_type().0));
        }
        if packet.hardware_len() != 6 || packet.protocol_len() != 4 {
            return Err(Error::ArpAddressLength {
                hardware: packet.hardware_len(),
                protocol: packet.protocol_len(),
            });
        }
        let operation = packet.operation();
        if let ArpOperation::Unknown(op) = operation {
            return Err(Error::ArpOperation(op));
        }
        let ipv4 = |bytes: &[u8]| {
            <[u8; 4]>::try_from(bytes)
                .map(Ipv4Addr::from)
                .map_err(|_| Error::Truncated {
                    what: "ARP packet",
                    len: packet.buffer.as_ref().len(),
                    need: ETHERNET_IPV4_LEN,
                })
        };
        let mac = |bytes: &[u8]| {
            MacAddr::from_bytes(bytes).ok_or(Error::Truncated {
                what: "ARP packet",
                len: packet.buffer.as_ref().len(),
                need: ETHERNET_IPV4_LEN,
            })
        };
        Ok(ArpRepr {
            operation,
            source_hardware_addr: mac(packet.source_hardware_addr())?,
            source_protocol_addr: ipv4(packet.source_protocol_addr())?,
            target_hardware_addr: mac(packet.target_hardware_addr())?,
            target_protocol_addr: ipv4(packet.target_protocol_addr())?,
        })
    }

    /// 28 bytes; Ethernet padding to the 60-byte minimum is not part of the packet.
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_IPV4_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr.as_bytes());
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(self.target_hardware_addr.as_bytes());
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }

    /// A gratuitous ARP: the sender announces its own address (sender IP = target IP).
    pub fn is_gratuitous(&self) -> bool {
        self.source_protocol_addr == self.target_protocol_addr
            && !self.source_protocol_addr.is_unspecified()
    }

    /// An RFC 5227 probe: a request from 0.0.0.0 asking whether anyone holds the target IP.
    pub fn is_probe(&self) -> bool {
        self.operation == ArpOperation::Request && self.source_protocol_addr.is_unspecified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ARP body of the kernel's reply in the lab (kernel-arp-reply.hex, after the Ethernet header):
    // 10.250.0.2 is-at 02:00:0a:fa:00:02, to 10.250.0.1 at 02:00:0a:fa:00:01.
    static PACKET: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x02, 0x0a,
        0xfa, 0x00, 0x02, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01, 0x0a, 0xfa, 0x00, 0x01,
    ];

    const MAC_A: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01]);
    const MAC_B: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x02]);

    fn repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: MAC_B,
            source_protocol_addr: Ipv4Addr::new(10, 250, 0, 2),
            target_hardware_addr: MAC_A,
            target_protocol_addr: Ipv4Addr::new(10, 250, 0, 1),
        }
    }

    #[test]
    fn deconstruct() {
        let packet = ArpPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.hardware_type(), 1);
        assert_eq!(packet.protocol_type(), EtherType::IPV4);
        assert_eq!(packet.hardware_len(), 6);
        assert_eq!(packet.protocol_len(), 4);
        assert_eq!(packet.operation(), ArpOperation::Reply);
        assert_eq!(packet.source_hardware_addr(), MAC_B.as_bytes());
        assert_eq!(packet.source_protocol_addr(), &[10, 250, 0, 2]);
        assert_eq!(packet.target_hardware_addr(), MAC_A.as_bytes());
        assert_eq!(packet.target_protocol_addr(), &[10, 250, 0, 1]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5u8; 28];
        let mut packet = ArpPacket::new_unchecked(&mut bytes[..]);
        packet.set_hardware_type(1);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(ArpOperation::Reply);
        packet.set_source_hardware_addr(MAC_B.as_bytes());
        packet.set_source_protocol_addr(&[10, 250, 0, 2]);
        packet.set_target_hardware_addr(MAC_A.as_bytes());
        packet.set_target_protocol_addr(&[10, 250, 0, 1]);
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn parse() {
        let packet = ArpPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet).unwrap(), repr());
        assert!(!repr().is_gratuitous() && !repr().is_probe());
    }

    #[test]
    fn emit() {
        let mut bytes = [0u8; 28];
        repr().emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET);
        assert_eq!(repr().buffer_len(), 28);
    }

    #[test]
    fn rejects_what_it_cannot_represent() {
        assert_eq!(
            ArpPacket::new_checked(&PACKET[..20])
                .unwrap_err()
                .to_string(),
            "ARP packet truncated: 20 bytes, need 28"
        );
        assert_eq!(
            ArpPacket::new_checked(&PACKET[..5])
                .unwrap_err()
                .to_string(),
            "ARP packet truncated: 5 bytes, need 8"
        );
        let mut bytes = PACKET;
        bytes[1] = 6; // IEEE 802
        let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            ArpRepr::parse(&packet).unwrap_err().to_string(),
            "unsupported ARP hardware type 6 (only Ethernet, 1)"
        );
        let mut bytes = PACKET;
        bytes[7] = 3; // RARP request
        let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(Error::ArpOperation(3)));
        let mut bytes = PACKET;
        bytes[3] = 0xdd;
        bytes[2] = 0x86;
        let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(Error::ArpProtocolType(0x86dd)));
        // Longer protocol addresses than the buffer holds.
        let mut bytes = PACKET;
        bytes[5] = 16;
        assert!(ArpPacket::new_checked(&bytes[..]).is_err());
        let mut bytes = PACKET.to_vec();
        bytes[4] = 8;
        bytes.extend_from_slice(&[0; 4]);
        let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            ArpRepr::parse(&packet),
            Err(Error::ArpAddressLength {
                hardware: 8,
                protocol: 4
            })
        );
    }
}
