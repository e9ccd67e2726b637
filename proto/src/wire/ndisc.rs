//! IPv6 neighbour solicitations and advertisements (RFC 4861 §4.3, §4.4) with their link-layer
//! address options: the IPv6 counterpart of ARP.

use std::fmt;
use std::net::Ipv6Addr;
use std::ops::BitOr;

use super::icmpv6::{NDISC_MIN_LEN, TYPE_NEIGHBOR_ADVERT, TYPE_NEIGHBOR_SOLICIT};
use super::{Error, Icmpv6Packet, MacAddr, Result, write_bytes};

/// Option type of a source link-layer address (in solicitations).
const OPT_SOURCE_LLADDR: u8 = 1;
/// Option type of a target link-layer address (in advertisements).
const OPT_TARGET_LLADDR: u8 = 2;
/// A link-layer address option for Ethernet: type, length 1 (in 8-byte units), six bytes of MAC.
const LLADDR_OPT_LEN: usize = 8;

/// The Router, Solicited and Override flags of a neighbour advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeighborFlags(u8);

impl NeighborFlags {
    /// The sender is a router.
    pub const ROUTER: NeighborFlags = NeighborFlags(0x80);
    /// The advertisement answers a solicitation (never set on one sent to a multicast address).
    pub const SOLICITED: NeighborFlags = NeighborFlags(0x40);
    /// Receivers replace a cached link-layer address with the one advertised: set on takeover.
    pub const OVERRIDE: NeighborFlags = NeighborFlags(0x20);
    const ALL: u8 = 0xe0;

    pub const fn empty() -> NeighborFlags {
        NeighborFlags(0)
    }

    /// The flags in the top bits of `byte`; the reserved bits are ignored, as RFC 4861 asks.
    pub const fn from_bits_truncate(byte: u8) -> NeighborFlags {
        NeighborFlags(byte & Self::ALL)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: NeighborFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn router(self) -> bool {
        self.contains(Self::ROUTER)
    }

    pub const fn solicited(self) -> bool {
        self.contains(Self::SOLICITED)
    }

    pub const fn override_(self) -> bool {
        self.contains(Self::OVERRIDE)
    }
}

impl BitOr for NeighborFlags {
    type Output = NeighborFlags;

    fn bitor(self, rhs: NeighborFlags) -> NeighborFlags {
        NeighborFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for NeighborFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::ROUTER, "R"),
            (Self::SOLICITED, "S"),
            (Self::OVERRIDE, "O"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect();
        if set.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&set.join(","))
        }
    }
}

/// The owned meaning of a neighbour solicitation or advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NdiscRepr {
    /// "Who has `target_addr`?" A DAD probe comes from :: and carries no source link-layer option;
    /// a unicast NUD probe may carry none either: answer to the Ethernet source then.
    NeighborSolicit {
        target_addr: Ipv6Addr,
        source_lladdr: Option<MacAddr>,
    },
    /// "`target_addr` is at `target_lladdr`." Linux leaves the option out when answering a
    /// unicast solicitation: the MAC is then the Ethernet source.
    NeighborAdvert {
        flags: NeighborFlags,
        target_addr: Ipv6Addr,
        target_lladdr: Option<MacAddr>,
    },
}

impl NdiscRepr {
    /// Parses the ICMPv6 message carried between `src_addr` and `dst_addr`, checksum first.
    /// Unknown options are skipped; a zero-length or overrunning option is an error.
    pub fn parse<T: AsRef<[u8]>>(
        src_addr: Ipv6Addr,
        dst_addr: Ipv6Addr,
        packet: &Icmpv6Packet<T>,
    ) -> Result<NdiscRepr> {
        packet.check_len()?;
        let msg_type = packet.msg_type();
        if msg_type != TYPE_NEIGHBOR_SOLICIT && msg_type != TYPE_NEIGHBOR_ADVERT {
            return Err(Error::NdiscType(msg_type));
        }
        let len = packet.message_len();
        if len < NDISC_MIN_LEN {
            return Err(Error::Truncated {
                what: if msg_type == TYPE_NEIGHBOR_SOLICIT {
                    "neighbour solicitation"
                } else {
                    "neighbour advertisement"
                },
                len,
                need: NDISC_MIN_LEN,
            });
        }
        if !packet.verify_checksum(src_addr, dst_addr) {
            return Err(Error::Icmpv6Checksum {
                found: packet.checksum(),
                computed: packet.compute_checksum(src_addr, dst_addr),
            });
        }
        if packet.msg_code() != 0 {
            return Err(Error::NdiscCode(packet.msg_code()));
        }
        let target_addr = packet.ndisc_target();
        if target_addr.is_multicast() {
            return Err(Error::NdiscMulticastTarget(target_addr));
        }
        let wanted = if msg_type == TYPE_NEIGHBOR_SOLICIT {
            OPT_SOURCE_LLADDR
        } else {
            OPT_TARGET_LLADDR
        };
        let lladdr = find_lladdr(packet.ndisc_options(), wanted)?;
        Ok(if msg_type == TYPE_NEIGHBOR_SOLICIT {
            NdiscRepr::NeighborSolicit {
                target_addr,
                source_lladdr: lladdr,
            }
        } else {
            NdiscRepr::NeighborAdvert {
                flags: NeighborFlags::from_bits_truncate(packet.ndisc_flags()),
                target_addr,
                target_lladdr: lladdr,
            }
        })
    }

    pub const fn target_addr(&self) -> Ipv6Addr {
        match *self {
            NdiscRepr::NeighborSolicit { target_addr, .. }
            | NdiscRepr::NeighborAdvert { target_addr, .. } => target_addr,
        }
    }

    /// The link-layer address option, source or target, if present.
    pub const fn lladdr(&self) -> Option<MacAddr> {
        match *self {
            NdiscRepr::NeighborSolicit { source_lladdr, .. } => source_lladdr,
            NdiscRepr::NeighborAdvert { target_lladdr, .. } => target_lladdr,
        }
    }

    /// 24 bytes, plus 8 for the link-layer address option.
    pub const fn buffer_len(&self) -> usize {
        match self.lladdr() {
            Some(_) => NDISC_MIN_LEN + LLADDR_OPT_LEN,
            None => NDISC_MIN_LEN,
        }
    }

    /// Writes the message and its checksum for `src_addr` to `dst_addr`; the view must span
    /// exactly `buffer_len()` bytes, since the checksum covers the whole buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        src_addr: Ipv6Addr,
        dst_addr: Ipv6Addr,
        packet: &mut Icmpv6Packet<T>,
    ) -> Result<()> {
        let len = packet.message_len();
        if len != self.buffer_len() {
            return Err(Error::BufferTooSmall {
                what: "neighbour discovery message",
                len,
                need: self.buffer_len(),
            });
        }
        let (msg_type, flags, option) = match *self {
            NdiscRepr::NeighborSolicit { source_lladdr, .. } => (
                TYPE_NEIGHBOR_SOLICIT,
                0,
                source_lladdr.map(|m| (OPT_SOURCE_LLADDR, m)),
            ),
            NdiscRepr::NeighborAdvert {
                flags,
                target_lladdr,
                ..
            } => (
                TYPE_NEIGHBOR_ADVERT,
                flags.bits(),
                target_lladdr.map(|m| (OPT_TARGET_LLADDR, m)),
            ),
        };
        packet.set_msg_type(msg_type);
        packet.set_msg_code(0);
        packet.set_checksum(0);
        packet.set_ndisc_flags(flags);
        packet.set_ndisc_target(self.target_addr());
        if let Some((kind, mac)) = option {
            let options = packet.ndisc_options_mut();
            write_bytes(options, 0, &[kind, 1]);
            write_bytes(options, 2, mac.as_bytes());
        }
        packet.fill_checksum(src_addr, dst_addr);
        Ok(())
    }
}

/// Walks the options and returns the first Ethernet link-layer address option of type `wanted`.
fn find_lladdr(mut options: &[u8], wanted: u8) -> Result<Option<MacAddr>> {
    let mut found = None;
    while !options.is_empty() {
        let kind = options.first().copied().unwrap_or(0);
        let Some(&units) = options.get(1) else {
            return Err(Error::NdiscOptionTruncated {
                kind,
                need: 2,
                available: options.len(),
            });
        };
        if units == 0 {
            // A zero length would loop forever; RFC 4861 says drop the packet.
            return Err(Error::NdiscOptionZeroLength(kind));
        }
        let len = usize::from(units) * 8;
        let Some(option) = options.get(..len) else {
            return Err(Error::NdiscOptionTruncated {
                kind,
                need: len,
                available: options.len(),
            });
        };
        // Later duplicates are ignored, as Linux does.
        if kind == wanted && found.is_none() {
            if len != LLADDR_OPT_LEN {
                return Err(Error::NdiscLinkLayerOptionLength(len));
            }
            found = option.get(2..).and_then(MacAddr::from_bytes);
        }
        options = options.get(len..).unwrap_or_default();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ICMPv6 part of ndisc6's solicitation in the lab (ndisc6-solicit.hex):
    // fe80::aff:fefa:1 -> ff02::1:ff00:2, who has fd00:250::2, source link-layer 02:00:0a:fa:00:01.
    static SOLICIT: [u8; 32] = [
        0x87, 0x00, 0x64, 0xd3, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x02, 0x50, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x02, 0x00, 0x0a, 0xfa,
        0x00, 0x01,
    ];

    // ICMPv6 part of the kernel's answer to a unicast NUD probe (kernel-na-unicast.hex):
    // fd00:250::1 -> fe80::aff:fefa:2, S set, no option.
    static ADVERT: [u8; 24] = [
        0x88, 0x00, 0x30, 0x8c, 0x40, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x02, 0x50, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    ];

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn solicit() -> NdiscRepr {
        NdiscRepr::NeighborSolicit {
            target_addr: ip("fd00:250::2"),
            source_lladdr: Some(MacAddr([0x02, 0x00, 0x0a, 0xfa, 0x00, 0x01])),
        }
    }

    fn advert() -> NdiscRepr {
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::SOLICITED,
            target_addr: ip("fd00:250::1"),
            target_lladdr: None,
        }
    }

    #[test]
    fn parse_solicit() {
        let packet = Icmpv6Packet::new_checked(&SOLICIT[..]).unwrap();
        let repr = NdiscRepr::parse(ip("fe80::aff:fefa:1"), ip("ff02::1:ff00:2"), &packet);
        assert_eq!(repr, Ok(solicit()));
    }

    #[test]
    fn parse_advert_without_option() {
        let packet = Icmpv6Packet::new_checked(&ADVERT[..]).unwrap();
        let repr = NdiscRepr::parse(ip("fd00:250::1"), ip("fe80::aff:fefa:2"), &packet).unwrap();
        assert_eq!(repr, advert());
        assert_eq!(repr.lladdr(), None);
    }

    #[test]
    fn emit() {
        let mut bytes = [0xa5u8; 32];
        solicit()
            .emit(
                ip("fe80::aff:fefa:1"),
                ip("ff02::1:ff00:2"),
                &mut Icmpv6Packet::new_unchecked(&mut bytes[..]),
            )
            .unwrap();
        assert_eq!(bytes, SOLICIT);
        let mut bytes = [0xa5u8; 24];
        advert()
            .emit(
                ip("fd00:250::1"),
                ip("fe80::aff:fefa:2"),
                &mut Icmpv6Packet::new_unchecked(&mut bytes[..]),
            )
            .unwrap();
        assert_eq!(bytes, ADVERT);
        let mut short = [0u8; 24];
        assert!(
            solicit()
                .emit(
                    ip("::"),
                    ip("ff02::1"),
                    &mut Icmpv6Packet::new_unchecked(&mut short[..])
                )
                .is_err()
        );
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut bytes = SOLICIT;
        bytes[31] ^= 1;
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        let err = NdiscRepr::parse(ip("fe80::aff:fefa:1"), ip("ff02::1:ff00:2"), &packet);
        assert!(matches!(
            err,
            Err(Error::Icmpv6Checksum { found: 0x64d3, .. })
        ));
        assert!(
            err.unwrap_err()
                .to_string()
                .starts_with("ICMPv6 checksum mismatch")
        );
    }

    /// Re-checksums `bytes` so a test reaches the check after the checksum.
    fn fixed(mut bytes: Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        Icmpv6Packet::new_unchecked(&mut bytes[..]).fill_checksum(src, dst);
        bytes
    }

    #[test]
    fn options() {
        let (src, dst) = (ip("fe80::aff:fefa:1"), ip("ff02::1:ff00:2"));
        let parse = |bytes: Vec<u8>| {
            let bytes = fixed(bytes, src, dst);
            NdiscRepr::parse(src, dst, &Icmpv6Packet::new_unchecked(&bytes[..]))
        };
        // An unknown option (nonce, type 14) before the one we want is skipped.
        let mut bytes = SOLICIT[..24].to_vec();
        bytes.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        bytes.extend_from_slice(&SOLICIT[24..]);
        assert_eq!(parse(bytes), Ok(solicit()));
        // A target link-layer option in a solicitation is not its source address.
        let mut bytes = SOLICIT.to_vec();
        bytes[24] = OPT_TARGET_LLADDR;
        assert_eq!(parse(bytes).unwrap().lladdr(), None,);
        let mut bytes = SOLICIT.to_vec();
        bytes[25] = 0;
        assert_eq!(parse(bytes), Err(Error::NdiscOptionZeroLength(1)));
        let mut bytes = SOLICIT.to_vec();
        bytes[25] = 2;
        assert_eq!(
            parse(bytes),
            Err(Error::NdiscOptionTruncated {
                kind: 1,
                need: 16,
                available: 8
            })
        );
        let mut bytes = SOLICIT.to_vec();
        bytes.push(9);
        assert!(matches!(
            parse(bytes),
            Err(Error::NdiscOptionTruncated { kind: 9, .. })
        ));
        let mut bytes = SOLICIT.to_vec();
        bytes[25] = 2;
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(parse(bytes), Err(Error::NdiscLinkLayerOptionLength(16)));
    }

    #[test]
    fn rejects_what_ndp_forbids() {
        let (src, dst) = (ip("fe80::aff:fefa:1"), ip("ff02::1:ff00:2"));
        let parse = |bytes: Vec<u8>| {
            let bytes = fixed(bytes, src, dst);
            NdiscRepr::parse(src, dst, &Icmpv6Packet::new_unchecked(&bytes[..]))
        };
        let mut bytes = SOLICIT.to_vec();
        bytes[1] = 1;
        assert_eq!(parse(bytes), Err(Error::NdiscCode(1)));
        let mut bytes = SOLICIT.to_vec();
        bytes[8] = 0xff;
        assert!(matches!(parse(bytes), Err(Error::NdiscMulticastTarget(_))));
        let mut bytes = SOLICIT.to_vec();
        bytes[0] = 128;
        assert_eq!(parse(bytes), Err(Error::NdiscType(128)));
        assert_eq!(
            parse(SOLICIT[..20].to_vec()).unwrap_err().to_string(),
            "neighbour solicitation truncated: 20 bytes, need 24"
        );
    }

    #[test]
    fn flags() {
        let flags = NeighborFlags::from_bits_truncate(0x7f);
        assert!(flags.solicited() && flags.override_() && !flags.router());
        assert_eq!(flags, NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE);
        assert_eq!(flags.to_string(), "S,O");
        assert_eq!(NeighborFlags::empty().to_string(), "none");
    }
}
