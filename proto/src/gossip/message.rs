//! Membership messages and membership updates, and the packet that carries one message plus
//! piggybacked updates, with their exact encoded lengths.

use std::net::SocketAddr;

use super::GossipError;
use super::codec::{Reader, Writer, addr_len, str_len};

/// Longest node name on the wire: a Kubernetes node name is a DNS subdomain of at most 253 bytes.
pub const MAX_NAME_LEN: usize = 253;

/// Most updates one packet carries (the count is one byte).
pub const MAX_UPDATES: usize = 255;

/// What a member is, as one node believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    Alive,
    /// Failed a probe; still counted live until the suspicion times out or is refuted.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    fn code(self) -> u8 {
        match self {
            MemberState::Alive => 1,
            MemberState::Suspect => 2,
            MemberState::Dead => 3,
            MemberState::Left => 4,
        }
    }

    fn from_code(code: u8) -> Result<Self, GossipError> {
        Ok(match code {
            1 => MemberState::Alive,
            2 => MemberState::Suspect,
            3 => MemberState::Dead,
            4 => MemberState::Left,
            other => {
                return Err(GossipError::Malformed(format!(
                    "member state {other}, expected 1-4"
                )));
            }
        })
    }
}

/// A membership change, disseminated by piggybacking on every datagram. A member's identity is
/// its node name; `incarnation` orders what is said about it (only the member itself raises it,
/// to refute a suspicion).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Update {
    /// `member` is alive at `incarnation`, reachable at `address`.
    Alive {
        member: String,
        incarnation: u64,
        address: SocketAddr,
    },
    /// `from` could not reach `member` at `incarnation`, directly or through others.
    Suspect {
        member: String,
        incarnation: u64,
        from: String,
    },
    /// `from` confirmed `member` failed at `incarnation` (its suspicion timed out).
    Dead {
        member: String,
        incarnation: u64,
        from: String,
    },
    /// `member` left gracefully at `incarnation`.
    Leave { member: String, incarnation: u64 },
}

impl Update {
    /// The member this update is about.
    pub fn member(&self) -> &str {
        match self {
            Update::Alive { member, .. }
            | Update::Suspect { member, .. }
            | Update::Dead { member, .. }
            | Update::Leave { member, .. } => member,
        }
    }

    /// The incarnation this update is about.
    pub fn incarnation(&self) -> u64 {
        match self {
            Update::Alive { incarnation, .. }
            | Update::Suspect { incarnation, .. }
            | Update::Dead { incarnation, .. }
            | Update::Leave { incarnation, .. } => *incarnation,
        }
    }

    /// Exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        1 + str_len(self.member())
            + 8
            + match self {
                Update::Alive { address, .. } => addr_len(*address),
                Update::Suspect { from, .. } | Update::Dead { from, .. } => str_len(from),
                Update::Leave { .. } => 0,
            }
    }

    fn encode(&self, w: &mut Writer) {
        let kind = match self {
            Update::Alive { .. } => 1,
            Update::Suspect { .. } => 2,
            Update::Dead { .. } => 3,
            Update::Leave { .. } => 4,
        };
        w.u8(kind);
        w.str(self.member());
        w.u64(self.incarnation());
        match self {
            Update::Alive { address, .. } => w.addr(*address),
            Update::Suspect { from, .. } | Update::Dead { from, .. } => w.str(from),
            Update::Leave { .. } => {}
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, GossipError> {
        let kind = r.u8("update kind")?;
        let member = name(r, "update member")?;
        let incarnation = r.u64("update incarnation")?;
        Ok(match kind {
            1 => Update::Alive {
                member,
                incarnation,
                address: r.addr("alive address")?,
            },
            2 => Update::Suspect {
                member,
                incarnation,
                from: name(r, "suspect accuser")?,
            },
            3 => Update::Dead {
                member,
                incarnation,
                from: name(r, "dead accuser")?,
            },
            4 => Update::Leave {
                member,
                incarnation,
            },
            other => {
                return Err(GossipError::Malformed(format!(
                    "update kind {other}, expected 1-4"
                )));
            }
        })
    }
}

/// One row of a member table, as exchanged in a push-pull state sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberRecord {
    pub name: String,
    pub address: SocketAddr,
    pub incarnation: u64,
    pub state: MemberState,
}

impl MemberRecord {
    /// Exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        str_len(&self.name) + addr_len(self.address) + 8 + 1
    }

    fn encode(&self, w: &mut Writer) {
        w.str(&self.name);
        w.addr(self.address);
        w.u64(self.incarnation);
        w.u8(self.state.code());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, GossipError> {
        Ok(MemberRecord {
            name: name(r, "record name")?,
            address: r.addr("record address")?,
            incarnation: r.u64("record incarnation")?,
            state: MemberState::from_code(r.u8("record state")?)?,
        })
    }
}

/// The message a datagram is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A direct probe: answer with `Ack { seq }`.
    Ping { seq: u32 },
    /// The answer to a ping. An intermediary relays the target's answer to an indirect probe as
    /// an `Ack` carrying the requester's `PingReq` sequence number (the "indirect ack").
    Ack { seq: u32 },
    /// An indirect probe: ping `target` at `address` on my behalf and relay its ack as
    /// `Ack { seq }`.
    PingReq {
        seq: u32,
        target: String,
        address: SocketAddr,
    },
    /// State sync: (part of) the sender's member table. `want_reply` asks the receiver to send
    /// its own table back (a joiner, or a periodic anti-entropy exchange). Large tables travel as
    /// several packets, only the first of which asks for a reply.
    PushPull {
        want_reply: bool,
        members: Vec<MemberRecord>,
    },
    /// Nothing but the piggybacked updates.
    Gossip,
}

impl Message {
    /// Exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Message::Ping { .. } | Message::Ack { .. } => 4,
            Message::PingReq {
                target, address, ..
            } => 4 + str_len(target) + addr_len(*address),
            Message::PushPull { members, .. } => {
                1 + 2 + members.iter().map(MemberRecord::encoded_len).sum::<usize>()
            }
            Message::Gossip => 0,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Message::Ping { seq } => {
                w.u8(1);
                w.u32(*seq);
            }
            Message::Ack { seq } => {
                w.u8(2);
                w.u32(*seq);
            }
            Message::PingReq {
                seq,
                target,
                address,
            } => {
                w.u8(3);
                w.u32(*seq);
                w.str(target);
                w.addr(*address);
            }
            Message::PushPull {
                want_reply,
                members,
            } => {
                w.u8(4);
                w.u8(u8::from(*want_reply));
                // Callers chunk tables to the datagram budget, far below this bound.
                let count = members.len().min(usize::from(u16::MAX));
                w.u16(count as u16);
                for member in members.iter().take(count) {
                    member.encode(w);
                }
            }
            Message::Gossip => w.u8(5),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, GossipError> {
        Ok(match r.u8("message kind")? {
            1 => Message::Ping {
                seq: r.u32("ping seq")?,
            },
            2 => Message::Ack {
                seq: r.u32("ack seq")?,
            },
            3 => Message::PingReq {
                seq: r.u32("ping-req seq")?,
                target: name(r, "ping-req target")?,
                address: r.addr("ping-req address")?,
            },
            4 => {
                let want_reply = match r.u8("push-pull flag")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(GossipError::Malformed(format!(
                            "push-pull reply flag {other}, expected 0 or 1"
                        )));
                    }
                };
                let count = r.u16("push-pull count")?;
                // No preallocation from the count: it comes from the network.
                let mut members = Vec::new();
                for _ in 0..count {
                    members.push(MemberRecord::decode(r)?);
                }
                Message::PushPull {
                    want_reply,
                    members,
                }
            }
            5 => Message::Gossip,
            other => {
                return Err(GossipError::Malformed(format!(
                    "message kind {other}, expected 1-5"
                )));
            }
        })
    }
}

/// The plaintext of one datagram: who sends it (name, boot epoch, datagram sequence), to whom,
/// one message and the piggybacked updates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    pub sender: String,
    /// The sender's boot epoch: strictly greater after every restart (unix millis at start).
    pub epoch: u64,
    /// The sender's datagram counter within its epoch, for replay protection.
    pub seq: u64,
    /// The node name this datagram is for; empty only for a join request to a seed address
    /// whose node name is not known yet.
    pub to: String,
    pub message: Message,
    pub updates: Vec<Update>,
}

impl Packet {
    /// Length of everything but the message and the updates.
    pub fn header_len(sender: &str, to: &str) -> usize {
        str_len(sender) + 8 + 8 + str_len(to) + 1
    }

    /// Exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        Self::header_len(&self.sender, &self.to)
            + self.message.encoded_len()
            + self
                .updates
                .iter()
                .take(MAX_UPDATES)
                .map(Update::encoded_len)
                .sum::<usize>()
    }

    /// The plaintext bytes. At most [`MAX_UPDATES`] updates are written.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len());
        w.str(&self.sender);
        w.u64(self.epoch);
        w.u64(self.seq);
        w.str(&self.to);
        self.message.encode(&mut w);
        let count = self.updates.len().min(MAX_UPDATES);
        w.u8(count as u8);
        for update in self.updates.iter().take(count) {
            update.encode(&mut w);
        }
        w.into_bytes()
    }

    /// Parses plaintext bytes; refuses short input, unknown kinds and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        let mut r = Reader::new(bytes);
        let sender = name(&mut r, "sender")?;
        let epoch = r.u64("epoch")?;
        let seq = r.u64("sequence number")?;
        let to = r.str("recipient")?;
        let message = Message::decode(&mut r)?;
        let count = r.u8("update count")?;
        let mut updates = Vec::new();
        for _ in 0..count {
            updates.push(Update::decode(&mut r)?);
        }
        r.finish("packet")?;
        Ok(Packet {
            sender,
            epoch,
            seq,
            to,
            message,
            updates,
        })
    }
}

/// A node name: non-empty, at most [`MAX_NAME_LEN`] bytes.
fn name(r: &mut Reader<'_>, what: &'static str) -> Result<String, GossipError> {
    let name = r.str(what)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(GossipError::Malformed(format!(
            "{what} has {} bytes, expected 1-{MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(name)
}
