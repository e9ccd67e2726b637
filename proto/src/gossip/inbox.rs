//! The receiving side of one speaker: opens a datagram with the key ring, decodes the packet,
//! checks it is addressed here and not a replay, in that order, so nothing unauthenticated ever
//! touches the replay state or the member table.

use std::collections::HashMap;

use super::{GossipError, KeyRing, Message, NONCE_LEN, Packet, ReplayGuard};

impl Packet {
    /// Encodes and seals this packet with the ring's primary key. `nonce`: fresh random bytes.
    pub fn seal(&self, keys: &KeyRing, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        keys.seal(&self.encode(), nonce)
    }
}

/// Everything a speaker checks before believing a datagram.
#[derive(Debug)]
pub struct Inbox {
    local: String,
    keys: KeyRing,
    /// One guard per authenticated sender name. Only key holders can add entries, so the map is
    /// bounded by the cluster's node names.
    guards: HashMap<String, ReplayGuard>,
}

impl Inbox {
    /// An inbox for the node named `local`.
    pub fn new(local: impl Into<String>, keys: KeyRing) -> Self {
        Inbox {
            local: local.into(),
            keys,
            guards: HashMap::new(),
        }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Replaces the key ring (a rotation); replay state is kept.
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
    }

    /// Opens, decodes and admits one datagram, or says why not.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Packet, GossipError> {
        let plaintext = self.keys.open(datagram)?;
        let packet = Packet::decode(&plaintext)?;
        // A join to a seed address cannot know the seed's name yet; the worst a replay of one
        // can do is make this node send its (authentic, incarnation-ordered) table once more.
        let join = packet.to.is_empty() && matches!(packet.message, Message::PushPull { .. });
        if packet.to != self.local && !join {
            return Err(GossipError::Misdirected {
                to: packet.to,
                local: self.local.clone(),
            });
        }
        let guard = self.guards.entry(packet.sender.clone()).or_default();
        guard
            .accept(packet.epoch, packet.seq)
            .map_err(|reason| GossipError::Replay {
                sender: packet.sender.clone(),
                reason,
            })?;
        Ok(packet)
    }
}
