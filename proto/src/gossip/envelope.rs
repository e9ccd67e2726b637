//! The sealed envelope around every membership datagram, and the cluster key ring that seals and
//! opens it (a primary key to send, older or newer keys still accepted during a rotation).
//!
//! ```text
//!  0      2        3        4          8                32               len-16    len
//!  +------+--------+--------+----------+-----------------+-----------------+---------+
//!  | "FG" | version| flags=0| key id   | nonce (24)      | ciphertext      | tag (16)|
//!  +------+--------+--------+----------+-----------------+-----------------+---------+
//!  '------- associated data (8) -------'
//! ```
//!
//! The magic, version and flags are fixed at these offsets for every future version, so a
//! speaker always recognises a datagram of another version and says so. The key id (the first
//! four bytes of SHA-256 over a label and the key) picks the key to try without trial decryption
//! and names a mismatched key in logs without revealing it. The clear header is authenticated as
//! associated data: flipping the version or key id fails authentication like any other byte.
//!
//! Key file format: one key per line, 32 random bytes written as 64 hexadecimal digits or as
//! standard base64 (44 characters with `=` padding, or 43 without). The first key is the primary
//! (used to send); the others are accepted on receive. Blank lines and lines starting with `#`
//! are ignored. Generate one with `openssl rand -hex 32` (or `openssl rand -base64 32`).
//! Rotation: add the new key as a second line everywhere, then swap the lines everywhere, then
//! remove the old one.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::GossipError;

/// The first bytes of every membership datagram.
pub const MAGIC: [u8; 2] = *b"FG";
/// The membership protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// The clear header: magic, version, flags, key id, nonce.
pub const ENVELOPE_HEADER_LEN: usize = AAD_LEN + NONCE_LEN;
/// Bytes the envelope adds to a packet's plaintext.
pub const ENVELOPE_OVERHEAD: usize = ENVELOPE_HEADER_LEN + TAG_LEN;

const AAD_LEN: usize = 2 + 1 + 1 + 4;
const KEY_LEN: usize = 32;

/// A short public fingerprint of a key, sent in the clear.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 32-byte cluster key. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", self.id)
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"ferrolb membership key id\0");
        hash.update(bytes);
        let digest = hash.finalize();
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest[..4]);
        Key {
            bytes,
            id: KeyId(id),
        }
    }

    /// Parses one key written as 64 hex digits or base64 of 32 bytes (surrounding whitespace
    /// ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            decode_hex(text)
        } else if text.len() == 43 || text.len() == 44 {
            decode_base64(text).ok_or(KeyError::Encoding { len: text.len() })?
        } else {
            return Err(KeyError::Encoding { len: text.len() });
        };
        if bytes == [0u8; KEY_LEN] {
            return Err(KeyError::AllZero);
        }
        Ok(Key::from_bytes(bytes))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// A key for another use of the same secret (HMAC-SHA256 of `purpose` under this key), so
    /// that no two uses ever share key material.
    pub fn derive(&self, purpose: &str) -> [u8; KEY_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Why a key or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "expected a 32-byte key as 64 hex digits or 44 base64 characters, found {len} characters (generate one with `openssl rand -hex 32`)"
    )]
    Encoding { len: usize },
    #[error("the key is all zero bytes: generate a random one with `openssl rand -hex 32`")]
    AllZero,
    #[error("line {line}: {error}")]
    Line { line: usize, error: Box<KeyError> },
    #[error("no key found (only blank or # comment lines): write one key per line, primary first")]
    Empty,
    #[error("lines {first} and {second} hold the same key")]
    Duplicate { first: usize, second: usize },
}

fn decode_hex(text: &str) -> [u8; KEY_LEN] {
    let digit = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0, // checked by the caller
    };
    let mut out = [0u8; KEY_LEN];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        if let [hi, lo] = pair {
            *byte = (digit(*hi) << 4) | digit(*lo);
        }
    }
    out
}

/// Standard-alphabet base64 of exactly 32 bytes, padded (44) or not (43).
fn decode_base64(text: &str) -> Option<[u8; KEY_LEN]> {
    let sextet = |b: u8| -> Option<u32> {
        Some(u32::from(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let body = text.strip_suffix('=').unwrap_or(text).as_bytes();
    if body.len() != 43 || body.contains(&b'=') {
        return None;
    }
    let mut out = Vec::with_capacity(KEY_LEN + 1);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &b in chunk {
            acc = (acc << 6) | sextet(b)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&acc.to_be_bytes()[1..]),
            // 43 = 10 * 4 + 3: the last 3 characters carry 2 bytes and 2 zero bits.
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&(acc >> 2).to_be_bytes()[2..]);
            }
            _ => return None,
        }
    }
    out.try_into().ok()
}

/// One key ready to seal and open.
struct Cipher {
    key: Key,
    aead: XChaCha20Poly1305,
}

impl Cipher {
    fn new(key: Key) -> Self {
        let aead = XChaCha20Poly1305::new(&key.bytes.into());
        Cipher { key, aead }
    }
}

/// The keys a speaker holds: the primary seals, every key opens.
pub struct KeyRing {
    primary: Cipher,
    secondary: Vec<Cipher>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary.key.id)
            .field(
                "secondary",
                &self.secondary.iter().map(|c| c.key.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// A ring sealing with `primary` and also accepting `secondary` keys.
    pub fn new(primary: Key, secondary: impl IntoIterator<Item = Key>) -> Self {
        let primary = Cipher::new(primary);
        let secondary = secondary
            .into_iter()
            .filter(|k| k.id != primary.key.id)
            .map(Cipher::new)
            .collect();
        KeyRing { primary, secondary }
    }

    /// Parses a key file's text (format in the module documentation).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = Key::parse(line).map_err(|error| KeyError::Line {
                line: line_no,
                error: Box::new(error),
            })?;
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.bytes == key.bytes) {
                return Err(KeyError::Duplicate {
                    first: *first,
                    second: line_no,
                });
            }
            keys.push((line_no, key));
        }
        let mut keys = keys.into_iter().map(|(_, k)| k);
        let primary = keys.next().ok_or(KeyError::Empty)?;
        Ok(KeyRing::new(primary, keys))
    }

    /// Every key of the ring, the primary first.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.primary.key).chain(self.secondary.iter().map(|c| &c.key))
    }

    /// The id of the key datagrams are sealed with.
    pub fn primary_id(&self) -> KeyId {
        self.primary.key.id
    }

    /// Ids of every key accepted on receive, primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.primary)
            .chain(&self.secondary)
            .map(|c| c.key.id)
            .collect()
    }

    /// Seals `plaintext` with the primary key. `nonce` must be fresh random bytes for every
    /// datagram (the caller owns randomness).
    pub fn seal(&self, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let aad = header(self.primary.key.id);
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
        out.extend_from_slice(&aad);
        out.extend_from_slice(&nonce);
        // XChaCha20-Poly1305 only fails for inputs beyond 2^38 bytes, impossible in a datagram;
        // an empty body would still fail to open, never be misread.
        let sealed = self
            .primary
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }

    /// Checks the header, picks the key by id and authenticates and decrypts the datagram.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, GossipError> {
        let version = peek_version(datagram)?;
        if version != PROTOCOL_VERSION {
            return Err(GossipError::UnknownVersion { version });
        }
        let truncated = GossipError::Truncated {
            what: "sealed datagram",
            len: datagram.len(),
            need: ENVELOPE_OVERHEAD,
        };
        let (aad, rest) = datagram
            .split_first_chunk::<AAD_LEN>()
            .ok_or(truncated.clone())?;
        let (nonce, body) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(truncated.clone())?;
        if body.len() < TAG_LEN {
            return Err(truncated);
        }
        let [_, _, _, flags, id @ ..] = *aad;
        let key_id = KeyId(id);
        if flags != 0 {
            // v1 defines no flags: a set flag means another dialect, refuse rather than guess.
            return Err(GossipError::Malformed(format!(
                "envelope flags {flags:#04x}, v1 defines none"
            )));
        }
        let cipher = std::iter::once(&self.primary)
            .chain(&self.secondary)
            .find(|c| c.key.id == key_id)
            .ok_or(GossipError::UnknownKey { key_id })?;
        cipher
            .aead
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: body,
                    aad: aad.as_slice(),
                },
            )
            .map_err(|_| GossipError::AuthenticationFailed { key_id })
    }
}

fn header(key_id: KeyId) -> [u8; AAD_LEN] {
    let [m0, m1] = MAGIC;
    let [k0, k1, k2, k3] = key_id.0;
    [m0, m1, PROTOCOL_VERSION, 0, k0, k1, k2, k3]
}

/// The protocol version of a datagram, read from its clear header before anything else, so a
/// datagram of another version is named as such and never parsed as this one.
pub fn peek_version(datagram: &[u8]) -> Result<u8, GossipError> {
    match datagram {
        [m0, m1, version, ..] if [*m0, *m1] == MAGIC => Ok(*version),
        [m0, m1, ..] if [*m0, *m1] != MAGIC => {
            Err(GossipError::NotMembership { found: [*m0, *m1] })
        }
        _ => Err(GossipError::Truncated {
            what: "datagram header",
            len: datagram.len(),
            need: 3,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // base64 of the same 32 bytes.
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn hex_and_base64_keys_decode_alike() {
        let a = Key::parse(HEX).unwrap();
        let b = Key::parse(B64).unwrap();
        let c = Key::parse(B64.trim_end_matches('=')).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.bytes, c.bytes);
        assert_eq!(a.bytes[31], 0x1f);
        assert_eq!(a.id(), b.id());
        assert_eq!(Key::parse(&HEX.to_uppercase()).unwrap().bytes, a.bytes);
    }

    #[test]
    fn bad_keys_say_what_is_expected() {
        let err = Key::parse("abc").unwrap_err();
        assert_eq!(err, KeyError::Encoding { len: 3 });
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        assert!(Key::parse(&"g".repeat(64)).is_err());
        assert!(Key::parse(&"!".repeat(44)).is_err());
        assert_eq!(Key::parse(&"0".repeat(64)).unwrap_err(), KeyError::AllZero);
        // A base64 string whose last character carries non-zero padding bits is not canonical.
        assert!(Key::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=").is_err());
    }

    #[test]
    fn key_files_take_primary_first_and_name_bad_lines() {
        let other = "ff".repeat(32);
        let ring = KeyRing::parse(&format!("# cluster key\n\n{other}\n  {HEX}  \n")).unwrap();
        assert_eq!(ring.primary_id(), Key::parse(&other).unwrap().id());
        assert_eq!(ring.key_ids().len(), 2);
        let err = KeyRing::parse(&format!("{HEX}\nnot-a-key\n")).unwrap_err();
        assert!(err.to_string().starts_with("line 2: expected"), "{err}");
        assert_eq!(KeyRing::parse("# nothing\n").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::parse(&format!("{HEX}\n{B64}\n")).unwrap_err(),
            KeyError::Duplicate {
                first: 1,
                second: 2
            }
        );
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let ring = KeyRing::parse(HEX).unwrap();
        let shown = format!("{ring:?} {:?}", Key::parse(HEX).unwrap());
        assert!(!shown.contains("0102030405"), "{shown}");
    }

    #[test]
    fn seal_then_open() {
        let ring = KeyRing::parse(HEX).unwrap();
        let sealed = ring.seal(b"hello", [7; NONCE_LEN]);
        assert_eq!(sealed.len(), 5 + ENVELOPE_OVERHEAD);
        assert_eq!(&sealed[..3], b"FG\x01");
        assert_eq!(ring.open(&sealed).unwrap(), b"hello");
    }

    #[test]
    fn header_problems_are_named() {
        let ring = KeyRing::parse(HEX).unwrap();
        let mut sealed = ring.seal(b"hello", [7; NONCE_LEN]);
        assert!(matches!(
            ring.open(&sealed[..20]),
            Err(GossipError::Truncated { .. })
        ));
        assert!(matches!(
            ring.open(b"x"),
            Err(GossipError::Truncated { .. })
        ));
        assert!(matches!(
            ring.open(b"GET / HTTP/1.1"),
            Err(GossipError::NotMembership { .. })
        ));
        sealed[2] = 2;
        let err = ring.open(&sealed).unwrap_err();
        assert_eq!(err, GossipError::UnknownVersion { version: 2 });
        assert!(
            err.to_string()
                .contains("speaks membership protocol v2, this speaker v1"),
            "{err}"
        );
    }
}
