//! The membership envelope from the outside: every message round-trips, and wrong keys,
//! tampering, replays, truncation, random bytes and forged deaths are all refused by type.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::net::SocketAddr;

use ferrolb_proto::gossip::{
    ENVELOPE_OVERHEAD, GossipError, Inbox, KeyRing, MemberRecord, MemberState, Message, NONCE_LEN,
    Packet, Reason, ReplayError, Update,
};
use proptest::prelude::*;

const KEY_A: &str = "4f0c1b9a7e2d3c5b6a798897a6b5c4d3e2f1001122334455667788990aabbccd";
const KEY_B: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334455667788990aabbccddeeff";

fn ring(hex: &str) -> KeyRing {
    KeyRing::parse(hex).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn packet(seq: u64, message: Message, updates: Vec<Update>) -> Packet {
    Packet {
        sender: "node-1".into(),
        epoch: 1_700_000_000_000,
        seq,
        to: "node-2".into(),
        message,
        updates,
    }
}

fn every_update() -> Vec<Update> {
    vec![
        Update::Alive {
            member: "node-3".into(),
            incarnation: 4,
            address: addr("10.250.0.3:7946"),
        },
        Update::Alive {
            member: "node-6".into(),
            incarnation: 0,
            address: addr("[fd00::6]:7946"),
        },
        Update::Suspect {
            member: "node-4".into(),
            incarnation: 7,
            from: "node-1".into(),
        },
        Update::Dead {
            member: "node-5".into(),
            incarnation: u64::MAX,
            from: "node-9".into(),
        },
        Update::Leave {
            member: "node-8".into(),
            incarnation: 2,
        },
    ]
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Ping { seq: 1 },
        Message::Ack { seq: u32::MAX },
        Message::PingReq {
            seq: 9,
            target: "node-3".into(),
            address: addr("10.250.0.3:7946"),
        },
        Message::PushPull {
            want_reply: true,
            members: vec![
                MemberRecord {
                    name: "node-1".into(),
                    address: addr("10.250.0.1:7946"),
                    incarnation: 3,
                    state: MemberState::Alive,
                },
                MemberRecord {
                    name: "node-7".into(),
                    address: addr("[fd00::7]:7946"),
                    incarnation: 1,
                    state: MemberState::Dead,
                },
            ],
        },
        Message::PushPull {
            want_reply: false,
            members: vec![],
        },
        Message::Gossip,
    ]
}

#[test]
fn every_message_round_trips_with_and_without_updates() {
    let keys = ring(KEY_A);
    let mut seq = 0;
    for message in every_message() {
        for updates in [vec![], every_update()] {
            let p = packet(seq, message.clone(), updates);
            seq += 1;
            let plain = p.encode();
            assert_eq!(plain.len(), p.encoded_len(), "{p:?}");
            assert_eq!(Packet::decode(&plain).unwrap(), p);
            let sealed = p.seal(&keys, [seq as u8; NONCE_LEN]);
            assert_eq!(sealed.len(), plain.len() + ENVELOPE_OVERHEAD);
            let mut inbox = Inbox::new("node-2", ring(KEY_A));
            assert_eq!(inbox.open(&sealed).unwrap(), p);
        }
    }
}

#[test]
fn a_wrong_key_is_refused_and_named() {
    let sealed = packet(1, Message::Ping { seq: 1 }, vec![]).seal(&ring(KEY_B), [1; NONCE_LEN]);
    let mut inbox = Inbox::new("node-2", ring(KEY_A));
    let err = inbox.open(&sealed).unwrap_err();
    assert_eq!(err.reason(), Reason::UnknownKey);
    assert!(err.to_string().contains("another cluster key"), "{err}");
}

#[test]
fn a_forged_key_id_fails_authentication() {
    // An attacker copies our key id into the header but seals with their own key.
    let mut sealed = packet(1, Message::Ping { seq: 1 }, vec![]).seal(&ring(KEY_B), [1; NONCE_LEN]);
    let ours = ring(KEY_A).primary_id();
    sealed[4..8].copy_from_slice(&ours.0);
    let err = Inbox::new("node-2", ring(KEY_A)).open(&sealed).unwrap_err();
    assert_eq!(err, GossipError::AuthenticationFailed { key_id: ours });
}

#[test]
fn a_forged_death_without_the_key_changes_nothing() {
    // "node-3 is dead", said by someone without the key: sealed under another key, or the
    // plaintext sent bare, or a genuine datagram with its update bytes rewritten.
    let forged = packet(
        1,
        Message::Gossip,
        vec![Update::Dead {
            member: "node-3".into(),
            incarnation: 99,
            from: "node-1".into(),
        }],
    );
    let mut inbox = Inbox::new("node-2", ring(KEY_A));
    assert!(
        inbox
            .open(&forged.seal(&ring(KEY_B), [3; NONCE_LEN]))
            .is_err()
    );
    assert!(inbox.open(&forged.encode()).is_err());
    let genuine = packet(2, Message::Gossip, every_update()).seal(&ring(KEY_A), [4; NONCE_LEN]);
    let mut tampered = genuine.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01;
    assert_eq!(
        inbox.open(&tampered).unwrap_err().reason(),
        Reason::AuthenticationFailed
    );
    // The forgeries did not consume the genuine datagram's sequence number.
    assert!(inbox.open(&genuine).is_ok());
}

#[test]
fn a_replayed_datagram_is_refused() {
    let keys = ring(KEY_A);
    let mut inbox = Inbox::new("node-2", ring(KEY_A));
    let first = packet(10, Message::Ping { seq: 1 }, vec![]).seal(&keys, [5; NONCE_LEN]);
    inbox.open(&first).unwrap();
    let err = inbox.open(&first).unwrap_err();
    assert_eq!(
        err,
        GossipError::Replay {
            sender: "node-1".into(),
            reason: ReplayError::Duplicate { seq: 10 }
        }
    );
    // The same content re-sealed with a fresh nonce is still the same (epoch, seq).
    let resealed = packet(10, Message::Ping { seq: 1 }, vec![]).seal(&keys, [6; NONCE_LEN]);
    assert_eq!(inbox.open(&resealed).unwrap_err().reason(), Reason::Replay);
    // A datagram from before the sender restarted.
    let mut after_restart = packet(0, Message::Ping { seq: 2 }, vec![]);
    after_restart.epoch += 1;
    inbox
        .open(&after_restart.seal(&keys, [7; NONCE_LEN]))
        .unwrap();
    let before = packet(11, Message::Ping { seq: 3 }, vec![]).seal(&keys, [8; NONCE_LEN]);
    assert!(matches!(
        inbox.open(&before),
        Err(GossipError::Replay {
            reason: ReplayError::OldEpoch { .. },
            ..
        })
    ));
}

#[test]
fn a_datagram_for_another_node_is_refused() {
    // Captured on its way to node-2 and replayed to node-3.
    let sealed = packet(1, Message::Ping { seq: 1 }, vec![]).seal(&ring(KEY_A), [1; NONCE_LEN]);
    let err = Inbox::new("node-3", ring(KEY_A)).open(&sealed).unwrap_err();
    assert_eq!(err.reason(), Reason::Misdirected);
    // A join to a seed, whose name the joiner does not know yet, is accepted anywhere.
    let mut join = packet(
        2,
        Message::PushPull {
            want_reply: true,
            members: vec![],
        },
        vec![],
    );
    join.to = String::new();
    assert!(
        Inbox::new("node-3", ring(KEY_A))
            .open(&join.seal(&ring(KEY_A), [2; NONCE_LEN]))
            .is_ok()
    );
}

#[test]
fn rotation_accepts_the_secondary_and_seals_with_the_primary() {
    let old = ring(KEY_A);
    let rotating = KeyRing::parse(&format!("{KEY_B}\n{KEY_A}\n")).unwrap();
    let mut inbox = Inbox::new(
        "node-2",
        KeyRing::parse(&format!("{KEY_B}\n{KEY_A}")).unwrap(),
    );
    inbox
        .open(&packet(1, Message::Gossip, vec![]).seal(&old, [1; NONCE_LEN]))
        .unwrap();
    inbox
        .open(&packet(2, Message::Gossip, vec![]).seal(&rotating, [2; NONCE_LEN]))
        .unwrap();
    let from_rotating = packet(3, Message::Gossip, vec![]).seal(&rotating, [3; NONCE_LEN]);
    assert_eq!(
        Inbox::new("node-2", ring(KEY_A))
            .open(&from_rotating)
            .unwrap_err()
            .reason(),
        Reason::UnknownKey
    );
}

#[test]
fn truncation_at_every_length_is_refused() {
    let keys = ring(KEY_A);
    let sealed = packet(1, Message::Gossip, every_update()).seal(&keys, [1; NONCE_LEN]);
    for len in 0..sealed.len() {
        let err = Inbox::new("node-2", ring(KEY_A))
            .open(&sealed[..len])
            .unwrap_err();
        assert!(
            matches!(
                err.reason(),
                Reason::Truncated | Reason::AuthenticationFailed
            ),
            "length {len}: {err}"
        );
    }
    // Plaintext truncated before sealing (a buggy peer with the key) is caught by the decoder.
    let plain = packet(1, Message::Gossip, every_update()).encode();
    for len in 0..plain.len() {
        assert!(Packet::decode(&plain[..len]).is_err(), "length {len}");
    }
}

#[test]
fn malformed_plaintext_under_the_right_key_is_named() {
    let keys = ring(KEY_A);
    let mut plain = packet(1, Message::Gossip, vec![]).encode();
    plain.push(0);
    let err = Inbox::new("node-2", ring(KEY_A))
        .open(&keys.seal(&plain, [1; NONCE_LEN]))
        .unwrap_err();
    assert_eq!(err.reason(), Reason::Malformed);
    assert!(err.to_string().contains("trailing"), "{err}");
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9.-]{0,40}"
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_update() -> impl Strategy<Value = Update> {
    prop_oneof![
        (arb_name(), any::<u64>(), arb_addr()).prop_map(|(member, incarnation, address)| {
            Update::Alive {
                member,
                incarnation,
                address,
            }
        }),
        (arb_name(), any::<u64>(), arb_name()).prop_map(|(member, incarnation, from)| {
            Update::Suspect {
                member,
                incarnation,
                from,
            }
        }),
        (arb_name(), any::<u64>(), arb_name()).prop_map(|(member, incarnation, from)| {
            Update::Dead {
                member,
                incarnation,
                from,
            }
        }),
        (arb_name(), any::<u64>()).prop_map(|(member, incarnation)| Update::Leave {
            member,
            incarnation
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let record = (arb_name(), arb_addr(), any::<u64>(), 0u8..4).prop_map(
        |(name, address, incarnation, state)| MemberRecord {
            name,
            address,
            incarnation,
            state: [
                MemberState::Alive,
                MemberState::Suspect,
                MemberState::Dead,
                MemberState::Left,
            ][usize::from(state)],
        },
    );
    prop_oneof![
        any::<u32>().prop_map(|seq| Message::Ping { seq }),
        any::<u32>().prop_map(|seq| Message::Ack { seq }),
        (any::<u32>(), arb_name(), arb_addr()).prop_map(|(seq, target, address)| {
            Message::PingReq {
                seq,
                target,
                address,
            }
        }),
        (any::<bool>(), prop::collection::vec(record, 0..8)).prop_map(|(want_reply, members)| {
            Message::PushPull {
                want_reply,
                members,
            }
        }),
        Just(Message::Gossip),
    ]
}

fn arb_packet() -> impl Strategy<Value = Packet> {
    (
        arb_name(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(String::new()), arb_name()],
        arb_message(),
        prop::collection::vec(arb_update(), 0..12),
    )
        .prop_map(|(sender, epoch, seq, to, message, updates)| Packet {
            sender,
            epoch,
            seq,
            to,
            message,
            updates,
        })
}

proptest! {
    #[test]
    fn any_packet_round_trips(p in arb_packet()) {
        let plain = p.encode();
        prop_assert_eq!(plain.len(), p.encoded_len());
        prop_assert_eq!(Packet::decode(&plain).unwrap(), p);
    }

    #[test]
    fn opening_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        let mut inbox = Inbox::new("node-2", ring(KEY_A));
        prop_assert!(inbox.open(&bytes).is_err());
        let _ = Packet::decode(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(tail in prop::collection::vec(any::<u8>(), 0..600)) {
        let keys = ring(KEY_A);
        let mut bytes = keys.seal(b"", [0; NONCE_LEN])[..8].to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert!(Inbox::new("node-2", ring(KEY_A)).open(&bytes).is_err());
    }

    #[test]
    fn tampering_any_byte_fails(p in arb_packet(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let keys = ring(KEY_A);
        let mut sealed = p.seal(&keys, [9; NONCE_LEN]);
        let i = at.index(sealed.len());
        sealed[i] ^= flip;
        let err = keys.open(&sealed).unwrap_err();
        // Bytes 0-2 are magic and version, named as such; everything else fails the AEAD.
        let expected = match i {
            0 | 1 => Reason::NotMembership,
            2 => Reason::UnknownVersion,
            3 => Reason::Malformed,
            4..=7 => Reason::UnknownKey,
            _ => Reason::AuthenticationFailed,
        };
        prop_assert_eq!(err.reason(), expected);
    }
}
