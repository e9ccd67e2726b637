//! The membership protocol between speakers: messages, their binary encoding, the sealed
//! envelope every datagram travels in, the key ring and replay protection. Pure: no sockets, no
//! clock, no randomness of its own (nonces and times are passed in).
//!
//! A datagram on the wire is an [`envelope`]: a clear header (magic, protocol version, key id and
//! nonce) followed by the AEAD-sealed [`Packet`]. A packet names its sender, the sender's boot
//! epoch and datagram sequence number (for [`ReplayGuard`]), the node it is addressed to, one
//! [`Message`] and a bounded list of piggybacked [`Update`]s.
//!
//! Encoding choices, and why:
//!
//! - **A hand-written, length-checked binary encoding** ([`codec`]) rather than serde + postcard:
//!   the wire format is then fixed here, in one file, independent of a serialisation crate's
//!   version, every length is known before sending (the sender packs piggybacked updates up to a
//!   byte budget), and decoding is a straight walk over a slice that refuses short or trailing
//!   bytes without ever panicking. Integers are big-endian; strings are a one-byte length then
//!   UTF-8 (node names are at most 253 bytes, the Kubernetes limit).
//! - **XChaCha20-Poly1305** (RustCrypto `chacha20poly1305`) with a random 24-byte nonce per
//!   datagram: random nonces of that size never realistically collide, whereas AES-GCM's 12-byte
//!   random nonces reach their birthday bound (2^32 datagrams per key) within weeks in a large,
//!   chatty cluster. It is also constant-time in software on nodes without AES instructions.
//!
//! The version byte sits at a fixed offset that no future version may move: a speaker receiving a
//! datagram of another version refuses it with [`GossipError::UnknownVersion`], never misparses it.

pub mod codec;
mod envelope;
mod inbox;
mod message;
mod replay;

pub use envelope::{
    ENVELOPE_HEADER_LEN, ENVELOPE_OVERHEAD, Key, KeyError, KeyId, KeyRing, MAGIC, NONCE_LEN,
    PROTOCOL_VERSION, TAG_LEN, peek_version,
};
pub use inbox::Inbox;
pub use message::{MAX_NAME_LEN, MAX_UPDATES, MemberRecord, MemberState, Message, Packet, Update};
pub use replay::{REPLAY_WINDOW, ReplayError, ReplayGuard};

use std::fmt;

/// Why a received datagram was refused. Each variant names what was wrong, so a log line or a
/// metric label says whether it was noise, a peer of another version, a peer with another key, a
/// replay, or a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    #[error("{what} truncated: {len} bytes, need {need}")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("not a FerroLB membership datagram (magic {found:02x?}, expected {MAGIC:02x?})")]
    NotMembership { found: [u8; 2] },
    #[error(
        "speaks membership protocol v{version}, this speaker v{PROTOCOL_VERSION}: upgrade or downgrade so all speakers share a version"
    )]
    UnknownVersion { version: u8 },
    #[error(
        "sealed with key {key_id}, which this speaker does not hold: a speaker with another cluster key (check the key file / Secret on both nodes), or a forgery (the source address of an unauthenticated datagram proves nothing)"
    )]
    UnknownKey { key_id: KeyId },
    #[error(
        "authentication failed under key {key_id}: the datagram was forged, corrupted or sealed with a different key"
    )]
    AuthenticationFailed { key_id: KeyId },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("replayed datagram from {sender}: {reason}")]
    Replay { sender: String, reason: ReplayError },
    #[error("addressed to node {to:?}, this speaker is {local:?}")]
    Misdirected { to: String, local: String },
}

impl GossipError {
    /// A short, stable label for metrics and for rate-limiting log lines by reason.
    pub fn reason(&self) -> Reason {
        match self {
            GossipError::Truncated { .. } => Reason::Truncated,
            GossipError::NotMembership { .. } => Reason::NotMembership,
            GossipError::UnknownVersion { .. } => Reason::UnknownVersion,
            GossipError::UnknownKey { .. } => Reason::UnknownKey,
            GossipError::AuthenticationFailed { .. } => Reason::AuthenticationFailed,
            GossipError::Malformed(_) => Reason::Malformed,
            GossipError::Replay { .. } => Reason::Replay,
            GossipError::Misdirected { .. } => Reason::Misdirected,
        }
    }
}

/// The reason a datagram was refused, as a closed set (a metric label, a rate-limit key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Truncated,
    NotMembership,
    UnknownVersion,
    UnknownKey,
    AuthenticationFailed,
    Malformed,
    Replay,
    Misdirected,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 8] = [
        Reason::Truncated,
        Reason::NotMembership,
        Reason::UnknownVersion,
        Reason::UnknownKey,
        Reason::AuthenticationFailed,
        Reason::Malformed,
        Reason::Replay,
        Reason::Misdirected,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::NotMembership => "not_membership",
            Reason::UnknownVersion => "unknown_version",
            Reason::UnknownKey => "unknown_key",
            Reason::AuthenticationFailed => "authentication_failed",
            Reason::Malformed => "malformed",
            Reason::Replay => "replay",
            Reason::Misdirected => "misdirected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
