//! The length-checked binary primitives the membership messages are built from: big-endian
//! integers, one-byte-length strings and socket addresses, read without ever panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::GossipError;

/// Appends primitives to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A string of at most 255 bytes; the caller keeps names within [`super::MAX_NAME_LEN`], so a
    /// longer one is cut at a character boundary rather than corrupting the stream.
    pub fn str(&mut self, s: &str) {
        let end = cut(s);
        self.u8(end as u8);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }

    pub fn addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.buf.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.buf.extend_from_slice(&ip.octets());
            }
        }
        self.u16(addr.port());
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// How many bytes of `s` fit a one-byte length, cut at a character boundary.
fn cut(s: &str) -> usize {
    let mut end = s.len().min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Encoded length of a string written by [`Writer::str`].
pub fn str_len(s: &str) -> usize {
    1 + cut(s)
}

/// Encoded length of a socket address written by [`Writer::addr`].
pub fn addr_len(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Reads primitives from a slice; every read checks the remaining length first.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    total: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            total: bytes.len(),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GossipError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(GossipError::Truncated {
                what,
                len: self.total,
                need: self.total - self.rest.len() + n,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GossipError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, GossipError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, GossipError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, GossipError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, GossipError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn str(&mut self, what: &'static str) -> Result<String, GossipError> {
        let len = usize::from(self.u8(what)?);
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GossipError::Malformed(format!("{what} is not UTF-8")))
    }

    pub fn addr(&mut self, what: &'static str) -> Result<SocketAddr, GossipError> {
        let ip = match self.u8(what)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?)),
            family => {
                return Err(GossipError::Malformed(format!(
                    "{what} has address family {family}, expected 4 or 6"
                )));
            }
        };
        Ok(SocketAddr::new(ip, self.u16(what)?))
    }

    /// Refuses trailing bytes: a message that decodes with bytes left over is not what the
    /// sender encoded.
    pub fn finish(self, what: &'static str) -> Result<(), GossipError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(GossipError::Malformed(format!(
                "{} trailing bytes after the {what}",
                self.rest.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut w = Writer::default();
        w.u8(7);
        w.u16(0xabcd);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.str("node-1");
        w.addr("10.250.0.1:7946".parse().unwrap());
        w.addr("[fd00::1]:7946".parse().unwrap());
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("a").unwrap(), 0xabcd);
        assert_eq!(r.u32("a").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("a").unwrap(), u64::MAX - 1);
        assert_eq!(r.str("a").unwrap(), "node-1");
        assert_eq!(
            r.addr("a").unwrap(),
            "10.250.0.1:7946".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            r.addr("a").unwrap(),
            "[fd00::1]:7946".parse::<SocketAddr>().unwrap()
        );
        r.finish("test").unwrap();
    }

    #[test]
    fn short_reads_are_errors_with_lengths() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(
            r.u64("epoch"),
            Err(GossipError::Truncated {
                what: "epoch",
                len: 3,
                need: 8
            })
        );
        let mut r = Reader::new(&[5, b'a']);
        assert!(matches!(r.str("name"), Err(GossipError::Truncated { .. })));
        let mut r = Reader::new(&[9, 0, 0]);
        assert!(matches!(r.addr("address"), Err(GossipError::Malformed(_))));
        let mut r = Reader::new(&[2, 0xff, 0xfe]);
        assert!(matches!(r.str("name"), Err(GossipError::Malformed(_))));
    }

    #[test]
    fn long_strings_are_cut_at_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let mut w = Writer::default();
        w.str(&long);
        let bytes = w.into_bytes();
        assert_eq!(bytes.len(), str_len(&long));
        let s = Reader::new(&bytes).str("name").unwrap();
        assert_eq!(s.len(), 254);
    }
}
