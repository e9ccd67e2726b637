//! The `spec.addresses` entries of an IPAddressPool: a CIDR or an inclusive `first-last` range.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;

/// The two IP families, in the order MetalLB lists them (IPv4 first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// What an address entry may look like; appended to every parse error so users see the fix.
pub const ALLOWED_FORMS: &str =
    "a CIDR like 192.168.10.0/24 or fd00:10::/120, or a range like 192.168.10.10-192.168.10.20";

/// Why one address entry could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the entry is empty")]
    Empty,
    #[error(
        "{0:?} is a single address without a prefix length; write it as a CIDR such as {0}/{1}"
    )]
    BareAddress(String, u8),
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("prefix length {prefix:?} is not a number from 0 to {max}")]
    BadPrefix { prefix: String, max: u8 },
    #[error("range start {first} is after its end {last}; write the lower address first")]
    Reversed { first: IpAddr, last: IpAddr },
    #[error(
        "range mixes {first} ({first_family}) and {last} ({last_family}); a range holds one family"
    )]
    MixedFamilies {
        first: IpAddr,
        first_family: IpFamily,
        last: IpAddr,
        last_family: IpFamily,
    },
}

/// An inclusive range of addresses of one family, first <= last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressRange {
    first: IpAddr,
    last: IpAddr,
}

impl AddressRange {
    /// A range from two addresses of one family, the lower first.
    pub fn new(first: IpAddr, last: IpAddr) -> Result<Self, AddressError> {
        if IpFamily::of(first) != IpFamily::of(last) {
            return Err(AddressError::MixedFamilies {
                first,
                first_family: IpFamily::of(first),
                last,
                last_family: IpFamily::of(last),
            });
        }
        if first > last {
            return Err(AddressError::Reversed { first, last });
        }
        Ok(AddressRange { first, last })
    }

    /// Reads one `spec.addresses` entry the way MetalLB does: `first-last` (spaces allowed around
    /// the dash) or a CIDR. Host bits in a CIDR are ignored (`10.0.0.5/24` is `10.0.0.0/24`), as in
    /// MetalLB, so manifests that work there work here.
    pub fn parse(entry: &str) -> Result<Self, AddressError> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some((first, last)) = entry.split_once('-') {
            return AddressRange::new(parse_ip(first.trim())?, parse_ip(last.trim())?);
        }
        let Some((ip, prefix)) = entry.split_once('/') else {
            let ip = parse_ip(entry)?;
            return Err(AddressError::BareAddress(entry.to_owned(), max_prefix(ip)));
        };
        let ip = parse_ip(ip.trim())?;
        let max = max_prefix(ip);
        let bad_prefix = || AddressError::BadPrefix {
            prefix: prefix.to_owned(),
            max,
        };
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad_prefix())?;
        let net = IpNetwork::new(ip, prefix).map_err(|_| bad_prefix())?;
        Ok(AddressRange {
            first: net.network(),
            last: net.broadcast(),
        })
    }

    pub fn first(&self) -> IpAddr {
        self.first
    }

    pub fn last(&self) -> IpAddr {
        self.last
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.first)
    }

    /// The number of addresses, saturating at `u128::MAX` for `::/0`, the one range whose count
    /// does not fit.
    pub fn size(&self) -> u128 {
        (ordinal(self.last) - ordinal(self.first)).saturating_add(1)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family() && self.first <= ip && ip <= self.last
    }

    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.family() == other.family() && self.first <= other.last && other.first <= self.last
    }
}

impl FromStr for AddressRange {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AddressRange::parse(s)
    }
}

impl fmt::Display for AddressRange {
    /// Prints the shortest form that parses back: a CIDR when the range is exactly one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = ordinal(self.last) - ordinal(self.first);
        // A CIDR spans 2^k addresses starting on a multiple of 2^k (`::/0` spans all of them).
        let aligned = span.checked_add(1).is_none_or(u128::is_power_of_two)
            && ordinal(self.first) & span == 0;
        if aligned {
            let bits = max_prefix(self.first) as u32 - span.count_ones();
            write!(f, "{}/{}", self.first, bits)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The position of an address within its family, for arithmetic.
pub fn ordinal(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, AddressError> {
    s.parse()
        .map_err(|_| AddressError::BadAddress(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> AddressRange {
        AddressRange::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_cover_network_and_broadcast() {
        let r = range("10.0.0.0/30");
        assert_eq!(
            (r.first(), r.last(), r.size()),
            (ip("10.0.0.0"), ip("10.0.0.3"), 4)
        );
        assert_eq!(range("10.0.0.5/32").size(), 1);
        assert_eq!(range("fd00::/120").size(), 256);
        assert_eq!(range("fd00::/64").size(), 1 << 64);
        assert_eq!(range("::/0").size(), u128::MAX);
        assert_eq!(range("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn host_bits_are_masked_like_metallb() {
        assert_eq!(range("10.0.0.5/24"), range("10.0.0.0/24"));
    }

    #[test]
    fn ranges_allow_spaces_around_the_dash() {
        let r = range("192.168.1.10 - 192.168.1.20");
        assert_eq!(
            (r.first(), r.last(), r.size()),
            (ip("192.168.1.10"), ip("192.168.1.20"), 11)
        );
        assert_eq!(range("fd00::1-fd00::ff").size(), 255);
        assert_eq!(range(" 10.0.0.1-10.0.0.1 ").size(), 1);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |s: &str| AddressRange::parse(s).unwrap_err().to_string();
        assert_eq!(err(""), "the entry is empty");
        assert_eq!(
            err("10.0.0.5"),
            "\"10.0.0.5\" is a single address without a prefix length; write it as a CIDR such as 10.0.0.5/32"
        );
        assert_eq!(
            err("10.0.0.0/33"),
            "prefix length \"33\" is not a number from 0 to 32"
        );
        assert_eq!(
            err("fd00::/abc"),
            "prefix length \"abc\" is not a number from 0 to 128"
        );
        assert_eq!(err("10.0.0.256/24"), "\"10.0.0.256\" is not an IP address");
        assert_eq!(
            err("10.0.0.9-10.0.0.1"),
            "range start 10.0.0.9 is after its end 10.0.0.1; write the lower address first"
        );
        assert_eq!(
            err("10.0.0.1-fd00::1"),
            "range mixes 10.0.0.1 (IPv4) and fd00::1 (IPv6); a range holds one family"
        );
        assert_eq!(err("10.0.0.1-"), "\"\" is not an IP address");
    }

    #[test]
    fn overlap_and_containment_respect_families() {
        assert!(range("10.0.0.0/24").overlaps(&range("10.0.0.255-10.0.1.5")));
        assert!(!range("10.0.0.0/24").overlaps(&range("10.0.1.0/24")));
        assert!(!range("0.0.0.0/0").overlaps(&range("::/0")));
        assert!(range("10.0.0.0/24").contains(ip("10.0.0.77")));
        assert!(!range("10.0.0.0/24").contains(ip("::a00:4d")));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.0/24",
            "10.0.0.1-10.0.0.9",
            "fd00::/120",
            "10.0.0.5/32",
            "::/0",
            "fd00::3-fd00::4",
        ] {
            assert_eq!(range(s).to_string(), s);
            assert_eq!(range(&range(s).to_string()), range(s));
        }
        assert_eq!(range("10.0.0.4-10.0.0.7").to_string(), "10.0.0.4/30");
    }
}
