//! ICMPv6 messages (RFC 4443) as far as neighbour discovery needs them: header, checksum over the
//! IPv6 pseudo-header, and the target/flags/options layout shared by solicitations and advertisements.

use std::net::Ipv6Addr;

use super::ipv6::IPPROTO_ICMPV6;
use super::{Error, Result, read_ipv6, read_u16, write_bytes, write_u8, write_u16};

/// ICMPv6 type of a neighbour solicitation.
pub(crate) const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a neighbour advertisement.
pub(crate) const TYPE_NEIGHBOR_ADVERT: u8 = 136;

pub(crate) mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const HEADER_LEN: usize = 4;
    /// In an advertisement, R/S/O flags in the top bits; reserved in a solicitation.
    pub const NDISC_FLAGS: usize = 4;
    pub const NDISC_TARGET: usize = 8;
    /// Options start after the target address.
    pub const NDISC_OPTIONS: usize = 24;
}

/// The shortest neighbour solicitation or advertisement: header, reserved/flags, target.
pub(crate) const NDISC_MIN_LEN: usize = field::NDISC_OPTIONS;

/// A read/write view of an ICMPv6 message; the buffer is the whole IPv6 payload.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// A view without length checks: getters on a short buffer return zeros or empty slices.
    pub const fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    /// A view over a buffer holding at least the 4-byte ICMPv6 header.
    pub fn new_checked(buffer: T) -> Result<Icmpv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN {
            return Err(Error::Truncated {
                what: "ICMPv6 message",
                len,
                need: field::HEADER_LEN,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The length of the whole message: the buffer's.
    pub fn message_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref().get(field::TYPE).copied().unwrap_or(0)
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref().get(field::CODE).copied().unwrap_or(0)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM).unwrap_or(0)
    }

    /// The checksum this message should carry between `src` and `dst`.
    pub fn compute_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
        let buf = self.buffer.as_ref();
        // Everything but the checksum field itself; both parts start at even offsets.
        let before = buf.get(..field::CHECKSUM).unwrap_or(buf);
        let after = buf.get(field::HEADER_LEN..).unwrap_or_default();
        !fold(pseudo_header_sum(src, dst, buf.len()) + ones_sum(before) + ones_sum(after))
    }

    /// Whether the stored checksum is right for a message between `src` and `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let buf = self.buffer.as_ref();
        fold(pseudo_header_sum(src, dst, buf.len()) + ones_sum(buf)) == 0xffff
    }

    /// Neighbour discovery: the R/S/O flags byte of an advertisement.
    pub fn ndisc_flags(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::NDISC_FLAGS)
            .copied()
            .unwrap_or(0)
    }

    /// Neighbour discovery: the target address of a solicitation or advertisement.
    pub fn ndisc_target(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::NDISC_TARGET)
    }

    /// Neighbour discovery: the option bytes after the target address.
    pub fn ndisc_options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(field::NDISC_OPTIONS..)
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn set_msg_type(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::TYPE, value);
    }

    pub fn set_msg_code(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::CODE, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Computes and stores the checksum; call it last, once every other byte is written.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let checksum = self.compute_checksum(src, dst);
        self.set_checksum(checksum);
    }

    /// Writes the flags byte and zeroes the 3 reserved bytes after it.
    pub fn set_ndisc_flags(&mut self, value: u8) {
        write_bytes(self.buffer.as_mut(), field::NDISC_FLAGS, &[value, 0, 0, 0]);
    }

    pub fn set_ndisc_target(&mut self, value: Ipv6Addr) {
        write_bytes(self.buffer.as_mut(), field::NDISC_TARGET, &value.octets());
    }

    pub fn ndisc_options_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::NDISC_OPTIONS..)
            .unwrap_or_default()
    }
}

/// Sum of the pseudo-header (RFC 8200 §8.1) for an ICMPv6 message of `len` bytes.
fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u32 {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    ones_sum(&src.octets())
        + ones_sum(&dst.octets())
        + (len >> 16)
        + (len & 0xffff)
        + u32::from(IPPROTO_ICMPV6)
}

/// The 16-bit big-endian words of `data` in ones' complement, folded to 16 bits (an odd last
/// byte is padded with zero). Folding here keeps every caller's additions far from overflow.
fn ones_sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| match w {
            [hi, lo] => u64::from(u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        })
        .sum();
    if let Some(&last) = chunks.remainder().first() {
        sum += u64::from(last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

/// Folds carries back into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    // ICMPv6 part of the kernel's advertisement in the lab (kernel-na-solicited.hex):
    // fd00:250::2 -> fe80::aff:fefa:1, S and O set, target fd00:250::2, target link-layer option.
    static MESSAGE: [u8; 32] = [
        0x88, 0x00, 0x01, 0x86, 0x60, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x02, 0x50, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x01, 0x02, 0x00, 0x0a, 0xfa,
        0x00, 0x02,
    ];

    fn addrs() -> (Ipv6Addr, Ipv6Addr) {
        (
            "fd00:250::2".parse().unwrap(),
            "fe80::aff:fefa:1".parse().unwrap(),
        )
    }

    #[test]
    fn deconstruct() {
        let packet = Icmpv6Packet::new_checked(&MESSAGE[..]).unwrap();
        assert_eq!(packet.msg_type(), TYPE_NEIGHBOR_ADVERT);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0x0186);
        assert_eq!(packet.ndisc_flags(), 0x60);
        assert_eq!(packet.ndisc_target(), addrs().0);
        assert_eq!(packet.ndisc_options(), &MESSAGE[24..]);
        let (src, dst) = addrs();
        assert!(packet.verify_checksum(src, dst));
        assert_eq!(packet.compute_checksum(src, dst), 0x0186);
        // The pseudo-header matters: the same bytes between other addresses do not verify.
        assert!(!packet.verify_checksum(dst, "fe80::1".parse().unwrap()));
    }

    #[test]
    fn construct() {
        let (src, dst) = addrs();
        let mut bytes = [0xa5u8; 32];
        let mut packet = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        packet.set_msg_type(TYPE_NEIGHBOR_ADVERT);
        packet.set_msg_code(0);
        packet.set_ndisc_flags(0x60);
        packet.set_ndisc_target(src);
        packet
            .ndisc_options_mut()
            .copy_from_slice(&[0x02, 0x01, 0x02, 0x00, 0x0a, 0xfa, 0x00, 0x02]);
        packet.fill_checksum(src, dst);
        assert_eq!(bytes, MESSAGE);
    }

    #[test]
    fn odd_lengths_and_short_buffers() {
        assert!(Icmpv6Packet::new_checked(&MESSAGE[..3]).is_err());
        let (src, dst) = addrs();
        let mut odd = [0u8; 5];
        odd[4] = 0x80;
        let mut packet = Icmpv6Packet::new_unchecked(&mut odd[..]);
        packet.fill_checksum(src, dst);
        assert!(packet.verify_checksum(src, dst));
        let empty = Icmpv6Packet::new_unchecked(&[][..]);
        assert_eq!(empty.ndisc_target(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(empty.ndisc_options(), &[] as &[u8]);
    }
}
