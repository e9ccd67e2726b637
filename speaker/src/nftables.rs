//! The nftables tables that carry connections in flight across a move ([`crate::carry`]),
//! written over netlink: the speaker's image has no `nft` binary, and the crates that speak
//! nftables either need libnftnl/libclang to build or lack the `dup` statement.
//!
//! Per family, table `ferrolb` (in `ip` and `ip6`):
//!
//! ```text
//! chain prerouting { type filter hook prerouting priority mangle; policy accept;
//!     ip ttl > 1 tcp flags ! syn ct state new goto carried
//!     ip ttl > 1 tcp flags fin / fin,syn,rst ct state invalid goto carried
//!     ip ttl > 1 tcp flags rst / syn,rst ct state invalid goto carried }
//! chain carried {
//!     ip daddr <vip> counter dup to <previous owner> drop
//!     ...
//! }
//! ```
//!
//! At `mangle` (-150) conntrack has run (-200) and kube-proxy's DNAT (-100) has not. A TCP
//! segment without SYN that conntrack picks up as *new*, or a FIN or RST it cannot pick up
//! (*invalid*), belongs to a connection this node never saw: it is sent on to the node that
//! owned the IP before (whose conntrack has it) and dropped here, instead of being NATed here
//! and reset by the backend. (An out-of-window FIN or RST of a connection this node does track
//! is invalid too; kube-proxy would drop it here anyway.) Only such packets reach the per-IP
//! chain, so its length costs nothing to the rest. `dup` lowers the copy's TTL without checking
//! it, so packets at TTL 1 are not carried: two nodes carrying one IP to each other (during a
//! hand-over) pass a packet neither knows back and forth at most until its TTL runs out.
//!
//! Each change is one netlink batch per family, applied atomically: create the table (a no-op
//! if it exists), delete it, and, when anything is carried, define it anew.
//!
//! A third table, in the `arp` family, lets the kernel skip ARP requests for the IPs the
//! speaker answers ([`crate::kernel_arp`]); it is written the same way:
//!
//! ```text
//! table arp ferrolb {
//!     set answered { type ipv4_addr; }
//!     chain input { type filter hook input priority filter; policy accept;
//!         arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation request
//!             arp daddr ip @answered counter drop }
//! }
//! ```

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The name of FerroLB's table in each family.
pub const TABLE: &str = "ferrolb";

/// One carried IP: TCP packets of connections unknown here go to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CarryRule {
    pub vip: IpAddr,
    /// The previous owner's address, of the VIP's family (the next hop of the copy).
    pub to: IpAddr,
}

/// An nftables family FerroLB writes its table in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ip,
            IpAddr::V6(_) => Family::Ip6,
        }
    }

    /// As `nft` names it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    fn nfproto(self) -> u8 {
        match self {
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
        }
    }

    /// Offsets in the network header: the TTL (hop limit) and the destination address.
    fn offsets(self) -> (u32, u32) {
        match self {
            Family::Ip => (8, 16),
            Family::Ip6 => (7, 24),
        }
    }

    /// A rule of this family standing for the real ones (documentation addresses).
    fn sample(self) -> CarryRule {
        match self {
            Family::Ip => CarryRule {
                vip: IpAddr::from([192, 0, 2, 1]),
                to: IpAddr::from([192, 0, 2, 2]),
            },
            Family::Ip6 => CarryRule {
                vip: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
                to: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]),
            },
        }
    }
}

// Netlink and nfnetlink (linux/netlink.h, linux/netfilter/nfnetlink.h).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFPROTO_ARP: u8 = 3;

// nf_tables (linux/netfilter/nf_tables.h).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
/// nft's `ipv4_addr` data type (what `nft list` shows the set's keys as).
const TYPE_IPADDR: u32 = 7;
const NF_ARP_IN: u32 = 0;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_IP_PRI_MANGLE: i32 = -150;
const NF_ACCEPT: u32 = 1;
const NF_DROP: u32 = 0;
const NFT_GOTO: i32 = -4;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_GT: u32 = 4;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
/// `NF_CT_STATE_BIT(IP_CT_NEW)`.
const CT_STATE_NEW: u32 = 1 << 3;
/// `NF_CT_STATE_INVALID_BIT`.
const CT_STATE_INVALID: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAGS_OFFSET: u32 = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// Batches up to this size fit any default socket buffer.
const SMALL_BATCH: usize = 64 * 1024;

const HOOKED_CHAIN: &str = "prerouting";
const CARRIED_CHAIN: &str = "carried";

/// What a batch leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The table holds exactly what was given (nothing: no table).
    Apply,
    /// The table is built with the rules and deleted again in the same batch: the kernel
    /// checks permissions and loads the expressions' modules, and nothing remains.
    Probe,
}

/// The netlink batch that makes `family`'s table carry exactly its share of `rules`, in one
/// transaction (pure; `seq` numbers the messages from there on, and the batch says how many
/// it used).
pub fn batch(family: Family, rules: &[CarryRule], outcome: Outcome, seq: u32) -> (Vec<u8>, u32) {
    let mine: Vec<&CarryRule> = rules
        .iter()
        .filter(|r| Family::of(r.vip) == family && Family::of(r.to) == family)
        .collect();
    let define = |out: &mut Batch| define_carry_table(out, family, &mine);
    transaction(
        family.nfproto(),
        outcome,
        seq,
        (!mine.is_empty()).then_some(define),
    )
}

/// The hooked chain that picks out packets of unknown connections, and the per-IP rules.
fn define_carry_table(out: &mut Batch, family: Family, mine: &[&CarryRule]) {
    let proto = family.nfproto();
    let (ttl_offset, daddr_offset) = family.offsets();
    out.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, proto, |m| {
        m.string(NFTA_CHAIN_TABLE, TABLE);
        m.string(NFTA_CHAIN_NAME, HOOKED_CHAIN);
        m.nested(NFTA_CHAIN_HOOK, |h| {
            h.u32(NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING);
            h.u32(NFTA_HOOK_PRIORITY, NF_IP_PRI_MANGLE as u32);
        });
        m.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        m.string(NFTA_CHAIN_TYPE, "filter");
    });
    out.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, proto, |m| {
        m.string(NFTA_CHAIN_TABLE, TABLE);
        m.string(NFTA_CHAIN_NAME, CARRIED_CHAIN);
    });
    // A packet of a connection this node never saw: an ACK (conntrack picks it up as
    // new), or a FIN or RST (conntrack finds no state to pick up: invalid).
    let unknown: [(u8, u8, u32); 3] = [
        (TCP_SYN, 0, CT_STATE_NEW),
        (TCP_SYN | TCP_FIN | TCP_RST, TCP_FIN, CT_STATE_INVALID),
        (TCP_SYN | TCP_RST, TCP_RST, CT_STATE_INVALID),
    ];
    for (mask, flags, state) in unknown {
        rule(out, proto, HOOKED_CHAIN, |e| {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, ttl_offset, 1);
            e.cmp(NFT_CMP_GT, &[1]);
            e.tcp_flags(mask, flags);
            e.ct_state(state);
            e.goto(CARRIED_CHAIN);
        });
    }
    for r in mine {
        let (vip, to) = (octets(r.vip), octets(r.to));
        rule(out, proto, CARRIED_CHAIN, |e| {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, daddr_offset, vip.len() as u32);
            e.cmp(NFT_CMP_EQ, &vip);
            e.counter();
            e.immediate_data(&to);
            e.dup();
            e.verdict(NF_DROP);
        });
    }
}

/// One transaction on FerroLB's table of family `nfproto`: create it (a no-op if it exists)
/// and delete it, so nothing of before remains; with `define`, create it again and let
/// `define` fill it (and, for a probe, delete it once more). Returns the bytes and how many
/// messages they number from `seq`.
fn transaction(
    nfproto: u8,
    outcome: Outcome,
    seq: u32,
    define: Option<impl FnOnce(&mut Batch)>,
) -> (Vec<u8>, u32) {
    let mut out = Batch::new(seq);
    out.message(NFNL_MSG_BATCH_BEGIN, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
    let table = |m: &mut Attributes<'_>| m.string(NFTA_TABLE_NAME, TABLE);
    out.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, nfproto, table);
    out.nft(NFT_MSG_DELTABLE, NLM_F_ACK, nfproto, table);
    if let Some(define) = define {
        out.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, nfproto, table);
        define(&mut out);
        if outcome == Outcome::Probe {
            out.nft(NFT_MSG_DELTABLE, NLM_F_ACK, nfproto, table);
        }
    }
    out.message(NFNL_MSG_BATCH_END, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
    let used = out.seq.wrapping_sub(seq);
    (out.bytes, used)
}

const ANSWERED_SET: &str = "answered";
const ARP_CHAIN: &str = "input";
/// Elements per message: each message of elements stays around 4 KiB.
const ELEMENTS_PER_MESSAGE: usize = 256;
/// Offsets in the ARP header (RFC 826): the fixed part up to the operation, and the target
/// protocol address of an Ethernet/IPv4 ARP packet.
const ARP_REQUEST_FIXED: [(u32, &[u8]); 5] = [
    (0, &[0, 1]),       // hardware type: Ethernet
    (2, &[0x08, 0x00]), // protocol type: IPv4
    (4, &[6]),          // hardware address length
    (5, &[4]),          // protocol address length
    (6, &[0, 1]),       // operation: request
];
const ARP_TARGET_IP_OFFSET: u32 = 24;

/// The netlink batch that makes table `arp ferrolb` drop exactly the ARP requests for
/// `answered` at the kernel's ARP input (none: no table), in one transaction; as [`batch`].
pub fn arp_batch(answered: &BTreeSet<Ipv4Addr>, outcome: Outcome, seq: u32) -> (Vec<u8>, u32) {
    let define = |out: &mut Batch| define_arp_table(out, answered);
    transaction(
        NFPROTO_ARP,
        outcome,
        seq,
        (!answered.is_empty()).then_some(define),
    )
}

/// The set of answered IPs and the chain whose rule drops the requests for them.
fn define_arp_table(out: &mut Batch, answered: &BTreeSet<Ipv4Addr>) {
    out.nft(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_ACK, NFPROTO_ARP, |m| {
        m.string(NFTA_SET_TABLE, TABLE);
        m.string(NFTA_SET_NAME, ANSWERED_SET);
        m.u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
        m.u32(NFTA_SET_KEY_LEN, 4);
        m.u32(NFTA_SET_ID, 1);
    });
    let ips: Vec<&Ipv4Addr> = answered.iter().collect();
    for chunk in ips.chunks(ELEMENTS_PER_MESSAGE) {
        out.nft(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE | NLM_F_ACK,
            NFPROTO_ARP,
            |m| {
                m.string(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                m.string(NFTA_SET_ELEM_LIST_SET, ANSWERED_SET);
                m.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                    for ip in chunk {
                        list.nested(NFTA_LIST_ELEM, |e| {
                            e.nested(NFTA_SET_ELEM_KEY, |k| k.raw(NFTA_DATA_VALUE, &ip.octets()));
                        });
                    }
                });
            },
        );
    }
    out.nft(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE | NLM_F_ACK,
        NFPROTO_ARP,
        |m| {
            m.string(NFTA_CHAIN_TABLE, TABLE);
            m.string(NFTA_CHAIN_NAME, ARP_CHAIN);
            m.nested(NFTA_CHAIN_HOOK, |h| {
                h.u32(NFTA_HOOK_HOOKNUM, NF_ARP_IN);
                h.u32(NFTA_HOOK_PRIORITY, 0);
            });
            m.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            m.string(NFTA_CHAIN_TYPE, "filter");
        },
    );
    rule(out, NFPROTO_ARP, ARP_CHAIN, |e| {
        for (offset, value) in ARP_REQUEST_FIXED {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, value.len() as u32);
            e.cmp(NFT_CMP_EQ, value);
        }
        e.payload(NFT_PAYLOAD_NETWORK_HEADER, ARP_TARGET_IP_OFFSET, 4);
        e.lookup(ANSWERED_SET, 1);
        e.counter();
        e.verdict(NF_DROP);
    });
}

/// The request for a family's table (answered with the table, or ENOENT).
fn get_table(nfproto: u8, seq: u32) -> Vec<u8> {
    let mut out = Batch::new(seq);
    out.nft(NFT_MSG_GETTABLE, NLM_F_ACK, nfproto, |m| {
        m.string(NFTA_TABLE_NAME, TABLE);
    });
    out.bytes
}

fn nft(message: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | message
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Rules ask for no acknowledgement: each ack costs the receive buffer a whole skb, and
/// thousands would overflow it. A refused rule is still answered with its error.
fn rule(
    out: &mut Batch,
    family: u8,
    chain: &str,
    expressions: impl FnOnce(&mut Expressions<'_, '_>),
) {
    out.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, |m| {
        m.string(NFTA_RULE_TABLE, TABLE);
        m.string(NFTA_RULE_CHAIN, chain);
        m.nested(NFTA_RULE_EXPRESSIONS, |list| {
            expressions(&mut Expressions { list });
        });
    });
}

/// A netlink batch being written.
struct Batch {
    bytes: Vec<u8>,
    seq: u32,
}

impl Batch {
    fn new(seq: u32) -> Self {
        Batch {
            bytes: Vec::new(),
            seq,
        }
    }

    /// One message: netlink header, nfgenmsg, then the attributes `body` writes.
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Attributes<'_>),
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]); // length, patched below
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.bytes.extend_from_slice(&self.seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.extend_from_slice(&[family, 0]);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        body(&mut Attributes {
            bytes: &mut self.bytes,
        });
        let len = (self.bytes.len() - start) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.seq = self.seq.wrapping_add(1);
    }

    /// One nf_tables message.
    fn nft(
        &mut self,
        message: u16,
        flags: u16,
        family: u8,
        body: impl FnOnce(&mut Attributes<'_>),
    ) {
        self.message(nft(message), flags, family, 0, body);
    }
}

/// Netlink attributes appended to a message (values in network order, as nf_tables wants).
struct Attributes<'a> {
    bytes: &'a mut Vec<u8>,
}

impl Attributes<'_> {
    fn raw(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut with_nul = value.as_bytes().to_vec();
        with_nul.push(0);
        self.raw(kind, &with_nul);
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.raw(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, body: impl FnOnce(&mut Attributes<'_>)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 2]); // length, patched below
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        body(&mut Attributes { bytes: self.bytes });
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// The expressions of one rule, all working in register 1.
struct Expressions<'a, 'b> {
    list: &'a mut Attributes<'b>,
}

impl Expressions<'_, '_> {
    fn expression(&mut self, name: &str, data: impl FnOnce(&mut Attributes<'_>)) {
        self.list.nested(NFTA_LIST_ELEM, |e| {
            e.string(NFTA_EXPR_NAME, name);
            e.nested(NFTA_EXPR_DATA, data);
        });
    }

    /// The TCP flags under `mask` equal `value`.
    fn tcp_flags(&mut self, mask: u8, value: u8) {
        self.meta(NFT_META_L4PROTO);
        self.cmp(NFT_CMP_EQ, &[IPPROTO_TCP]);
        self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, TCP_FLAGS_OFFSET, 1);
        self.bitwise(&[mask], &[0]);
        self.cmp(NFT_CMP_EQ, &[value]);
    }

    /// Conntrack's state has one of the `bits`.
    fn ct_state(&mut self, bits: u32) {
        self.ct(NFT_CT_STATE);
        self.bitwise(&bits.to_ne_bytes(), &[0; 4]);
        self.cmp(NFT_CMP_NEQ, &[0; 4]);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.expression("payload", |d| {
            d.u32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
            d.u32(2, base); // NFTA_PAYLOAD_BASE
            d.u32(3, offset); // NFTA_PAYLOAD_OFFSET
            d.u32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    fn meta(&mut self, key: u32) {
        self.expression("meta", |d| {
            d.u32(1, NFT_REG_1); // NFTA_META_DREG
            d.u32(2, key); // NFTA_META_KEY
        });
    }

    fn ct(&mut self, key: u32) {
        self.expression("ct", |d| {
            d.u32(1, NFT_REG_1); // NFTA_CT_DREG
            d.u32(2, key); // NFTA_CT_KEY
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expression("cmp", |d| {
            d.u32(1, NFT_REG_1); // NFTA_CMP_SREG
            d.u32(2, op); // NFTA_CMP_OP
            d.nested(3, |v| v.raw(NFTA_DATA_VALUE, value)); // NFTA_CMP_DATA
        });
    }

    /// register 1 = (register 1 & mask) ^ xor.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8]) {
        self.expression("bitwise", |d| {
            d.u32(1, NFT_REG_1); // NFTA_BITWISE_SREG
            d.u32(2, NFT_REG_1); // NFTA_BITWISE_DREG
            d.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            d.nested(4, |v| v.raw(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
            d.nested(5, |v| v.raw(NFTA_DATA_VALUE, xor)); // NFTA_BITWISE_XOR
        });
    }

    fn immediate_data(&mut self, value: &[u8]) {
        self.expression("immediate", |d| {
            d.u32(1, NFT_REG_1); // NFTA_IMMEDIATE_DREG
            d.nested(2, |v| v.raw(NFTA_DATA_VALUE, value)); // NFTA_IMMEDIATE_DATA
        });
    }

    /// Register 1 is an element of the set `name` (created in the same batch with `id`).
    fn lookup(&mut self, name: &str, id: u32) {
        self.expression("lookup", |d| {
            d.string(1, name); // NFTA_LOOKUP_SET
            d.u32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            d.u32(4, id); // NFTA_LOOKUP_SET_ID
        });
    }

    /// Packets and bytes that matched (`nft list table ip ferrolb` shows them).
    fn counter(&mut self) {
        self.expression("counter", |_| {});
    }

    /// A copy of the packet to the address in register 1.
    fn dup(&mut self) {
        self.expression("dup", |d| d.u32(1, NFT_REG_1)); // NFTA_DUP_SREG_ADDR
    }

    fn verdict(&mut self, code: u32) {
        self.expression("immediate", |d| {
            d.u32(1, NFT_REG_VERDICT);
            d.nested(2, |data| {
                data.nested(NFTA_DATA_VERDICT, |v| v.u32(NFTA_VERDICT_CODE, code));
            });
        });
    }

    fn goto(&mut self, chain: &str) {
        self.expression("immediate", |d| {
            d.u32(1, NFT_REG_VERDICT);
            d.nested(2, |data| {
                data.nested(NFTA_DATA_VERDICT, |v| {
                    v.u32(NFTA_VERDICT_CODE, NFT_GOTO as u32);
                    v.string(NFTA_VERDICT_CHAIN, chain);
                });
            });
        });
    }
}

/// Which of FerroLB's tables a request is about (for its family and its error).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Carry(Family),
    Arp,
}

impl Kind {
    fn family(self) -> &'static str {
        match self {
            Kind::Carry(family) => family.name(),
            Kind::Arp => "arp",
        }
    }

    fn nfproto(self) -> u8 {
        match self {
            Kind::Carry(family) => family.nfproto(),
            Kind::Arp => NFPROTO_ARP,
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Kind::Carry(_) => "nf_tables with the dup and ct expressions",
            Kind::Arp => "nf_tables with the arp family",
        }
    }
}

/// Why the kernel refused a batch.
#[derive(Debug, thiserror::Error)]
pub enum NftablesError {
    #[error("opening a NETLINK_NETFILTER socket")]
    Open(#[source] io::Error),
    #[error("sending the nftables batch")]
    Send(#[source] io::Error),
    #[error("reading the kernel's answer to the nftables batch")]
    Receive(#[source] io::Error),
    #[error("the kernel refused table {family} {TABLE} (needs CAP_NET_ADMIN, and {needs})")]
    Refused {
        family: &'static str,
        /// The kernel parts the table uses.
        needs: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel did not acknowledge the nftables batch")]
    Unacknowledged,
}

/// FerroLB's nftables tables on this node.
pub struct Nftables {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables").field("seq", &self.seq).finish()
    }
}

impl Nftables {
    pub fn open() -> Result<Self, NftablesError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftablesError::Open)?;
        socket.bind_auto().map_err(NftablesError::Open)?;
        // Errors without the refused message echoed back: a refused batch of thousands of
        // rules must not overflow the receive buffer.
        socket.set_cap_ack(true).map_err(NftablesError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NftablesError::Open)?;
        Ok(Nftables { socket, seq: 1 })
    }

    /// Makes both tables carry exactly `rules` (none: the tables are removed).
    pub fn apply(&mut self, rules: &[CarryRule]) -> Result<(), NftablesError> {
        let results = Family::ALL.map(|family| self.apply_family(family, rules));
        results.into_iter().collect()
    }

    /// Makes `family`'s table carry exactly its share of `rules`, in one transaction.
    pub fn apply_family(
        &mut self,
        family: Family,
        rules: &[CarryRule],
    ) -> Result<(), NftablesError> {
        let first = self.seq;
        let (bytes, used) = batch(family, rules, Outcome::Apply, first);
        self.request(Kind::Carry(family), &bytes, first, used)
            .map(|_| ())
    }

    /// Builds `family`'s table with a sample rule and deletes it in the same transaction:
    /// fails as a real change would (permissions, missing nf_tables expressions), loads the
    /// modules ahead of the first takeover, and removes any table a previous run left.
    pub fn probe(&mut self, family: Family) -> Result<(), NftablesError> {
        let first = self.seq;
        let (bytes, used) = batch(family, &[family.sample()], Outcome::Probe, first);
        self.request(Kind::Carry(family), &bytes, first, used)
            .map(|_| ())
    }

    /// Whether `family`'s table exists (something may have flushed the ruleset).
    pub fn exists(&mut self, family: Family) -> Result<bool, NftablesError> {
        self.table_exists(Kind::Carry(family))
    }

    /// Makes table `arp ferrolb` drop exactly the ARP requests for `answered` (none: no
    /// table), in one transaction.
    pub fn apply_arp(&mut self, answered: &BTreeSet<Ipv4Addr>) -> Result<(), NftablesError> {
        let first = self.seq;
        let (bytes, used) = arp_batch(answered, Outcome::Apply, first);
        self.request(Kind::Arp, &bytes, first, used).map(|_| ())
    }

    /// As [`probe`](Self::probe), for table `arp ferrolb`.
    pub fn probe_arp(&mut self) -> Result<(), NftablesError> {
        let first = self.seq;
        let sample = BTreeSet::from([Ipv4Addr::new(192, 0, 2, 1)]);
        let (bytes, used) = arp_batch(&sample, Outcome::Probe, first);
        self.request(Kind::Arp, &bytes, first, used).map(|_| ())
    }

    /// Whether table `arp ferrolb` exists.
    pub fn arp_exists(&mut self) -> Result<bool, NftablesError> {
        self.table_exists(Kind::Arp)
    }

    fn table_exists(&mut self, kind: Kind) -> Result<bool, NftablesError> {
        let first = self.seq;
        let bytes = get_table(kind.nfproto(), first);
        match self.request(kind, &bytes, first, 1) {
            Ok(answered) => Ok(answered),
            Err(NftablesError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `bytes` (`used` messages numbered from `first`) and reads every answer: true if
    /// the kernel answered with data (a table), Ok if it acknowledged without error.
    fn request(
        &mut self,
        kind: Kind,
        bytes: &[u8],
        first: u32,
        used: u32,
    ) -> Result<bool, NftablesError> {
        self.seq = self.seq.wrapping_add(used);
        // One batch is one datagram: thousands of rules outgrow the default send buffer
        // (net.core.wmem_max); CAP_NET_ADMIN, which writing the rules needs anyway, lifts it.
        if bytes.len() > SMALL_BATCH {
            let size = libc::c_int::try_from(bytes.len() + SMALL_BATCH).unwrap_or(libc::c_int::MAX);
            let socket = &self.socket;
            crate::socket::set_option(socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size)
                .or_else(|_| {
                    crate::socket::set_option(socket, libc::SOL_SOCKET, libc::SO_SNDBUF, &size)
                })
                .map_err(NftablesError::Send)?;
        }
        self.socket.send(bytes, 0).map_err(NftablesError::Send)?;
        // nfnetlink handles a request inside sendmsg: every answer is queued when it returns.
        // Read them all (a refused batch answers with one error per refused message; a
        // receive error, such as ENOBUFS, means answers were lost), and count only this
        // request's.
        let mut acknowledged = false;
        let mut data = false;
        let mut refused = None;
        let mut lost = None;
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    lost.get_or_insert(e);
                    continue;
                }
            }
            for answer in answers(&buf) {
                if answer.seq.wrapping_sub(first) >= used {
                    continue;
                }
                match answer.error {
                    Some(0) => acknowledged = true,
                    Some(errno) => {
                        acknowledged = true;
                        refused.get_or_insert(errno);
                    }
                    None => data = true,
                }
            }
        }
        if let Some(errno) = refused {
            return Err(NftablesError::Refused {
                family: kind.family(),
                needs: kind.needs(),
                source: io::Error::from_raw_os_error(-errno),
            });
        }
        if let Some(e) = lost {
            return Err(NftablesError::Receive(e));
        }
        if acknowledged {
            Ok(data)
        } else {
            Err(NftablesError::Unacknowledged)
        }
    }
}

/// One netlink message of an answer: its sequence number, and its error code if it is an
/// NLMSG_ERROR (0: acknowledged).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    seq: u32,
    error: Option<i32>,
}

/// The messages in `buf`, up to the first malformed one.
fn answers(mut buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let error = match kind {
            NLMSG_ERROR if len >= 20 => {
                Some(i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]))
            }
            NLMSG_ERROR => break,
            _ => None,
        };
        out.push(Answer { seq, error });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a batch into (type, flags, family, attributes) per message.
    fn messages(mut bytes: &[u8]) -> Vec<(u16, u16, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            let kind = u16::from_ne_bytes(bytes[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(bytes[6..8].try_into().unwrap());
            out.push((kind, flags, bytes[16], bytes[20..len].to_vec()));
            bytes = &bytes[len..];
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn nothing_carried_removes_the_table_in_one_batch() {
        for family in Family::ALL {
            let (bytes, used) = batch(family, &[], Outcome::Apply, 7);
            let proto = family.nfproto();
            let msgs = messages(&bytes);
            let kinds: Vec<(u16, u8)> = msgs.iter().map(|m| (m.0, m.2)).collect();
            assert_eq!(
                kinds,
                vec![
                    (NFNL_MSG_BATCH_BEGIN, 0),
                    (nft(NFT_MSG_NEWTABLE), proto),
                    (nft(NFT_MSG_DELTABLE), proto),
                    (NFNL_MSG_BATCH_END, 0),
                ]
            );
            assert!(
                msgs[1..3].iter().all(|m| m.1 & NLM_F_ACK != 0),
                "tables are acknowledged"
            );
            assert_eq!(used, 4);
        }
    }

    #[test]
    fn each_rule_lands_in_its_family_with_its_addresses() {
        let rules = [
            CarryRule {
                vip: "10.250.0.100".parse().unwrap(),
                to: "10.250.0.1".parse().unwrap(),
            },
            CarryRule {
                vip: "fd00:250::100".parse().unwrap(),
                to: "fd00:250::1".parse().unwrap(),
            },
            // Families mixed: nothing can carry it.
            CarryRule {
                vip: "10.250.0.101".parse().unwrap(),
                to: "fd00:250::1".parse().unwrap(),
            },
        ];
        let rules_of = |family: Family| -> Vec<Vec<u8>> {
            messages(&batch(family, &rules, Outcome::Apply, 1).0)
                .into_iter()
                .filter(|m| m.0 == nft(NFT_MSG_NEWRULE))
                .inspect(|m| assert_eq!(m.2, family.nfproto()))
                .map(|m| m.3)
                .collect()
        };
        let v4 = rules_of(Family::Ip);
        assert_eq!(v4.len(), 4, "three hooked rules and one carried IP");
        assert!(
            v4[..3].iter().all(|r| contains(r, b"carried\0")),
            "hooked rules jump to the list"
        );
        assert!(contains(&v4[3], &[10, 250, 0, 100]) && contains(&v4[3], &[10, 250, 0, 1]));
        assert!(!v4.iter().any(|r| contains(r, &[10, 250, 0, 101])));
        let v6 = rules_of(Family::Ip6);
        assert_eq!(v6.len(), 4);
        let vip6: std::net::Ipv6Addr = "fd00:250::100".parse().unwrap();
        assert!(contains(&v6[3], &vip6.octets()));
    }

    #[test]
    fn a_probe_deletes_what_it_built_in_the_same_batch() {
        let (bytes, used) = batch(Family::Ip, &[Family::Ip.sample()], Outcome::Probe, 1);
        let kinds: Vec<u16> = messages(&bytes).iter().map(|m| m.0).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == nft(NFT_MSG_NEWRULE)).count(),
            4
        );
        assert_eq!(kinds[kinds.len() - 2], nft(NFT_MSG_DELTABLE), "{kinds:?}");
        assert_eq!(used as usize, kinds.len());
    }

    #[test]
    fn the_arp_table_lists_every_answered_ip_in_chunks_or_goes() {
        let kinds = |bytes: &[u8]| -> Vec<(u16, u8)> {
            messages(bytes).iter().map(|m| (m.0, m.2)).collect()
        };
        let (bytes, used) = arp_batch(&BTreeSet::new(), Outcome::Apply, 3);
        assert_eq!(
            kinds(&bytes),
            vec![
                (NFNL_MSG_BATCH_BEGIN, 0),
                (nft(NFT_MSG_NEWTABLE), NFPROTO_ARP),
                (nft(NFT_MSG_DELTABLE), NFPROTO_ARP),
                (NFNL_MSG_BATCH_END, 0),
            ],
            "nothing answered: no table"
        );
        assert_eq!(used, 4);

        let answered: BTreeSet<Ipv4Addr> = (0..600u32)
            .map(|i| Ipv4Addr::from(0x0afa_0000 + i))
            .collect();
        let (bytes, used) = arp_batch(&answered, Outcome::Apply, 1);
        let msgs = messages(&bytes);
        let elements: Vec<&Vec<u8>> = msgs
            .iter()
            .filter(|m| m.0 == nft(NFT_MSG_NEWSETELEM))
            .map(|m| &m.3)
            .collect();
        assert_eq!(elements.len(), 3, "600 elements in messages of 256");
        for ip in &answered {
            let in_one = elements
                .iter()
                .filter(|e| contains(e, &ip.octets()))
                .count();
            assert!(in_one >= 1, "{ip} missing");
        }
        let rule = msgs.iter().find(|m| m.0 == nft(NFT_MSG_NEWRULE)).unwrap();
        assert!(contains(&rule.3, b"lookup\0") && contains(&rule.3, b"answered\0"));
        assert!(msgs.iter().all(|m| m.2 == NFPROTO_ARP || m.2 == 0));
        assert_eq!(used as usize, msgs.len());

        let (bytes, _) = arp_batch(&answered, Outcome::Probe, 1);
        let msgs = messages(&bytes);
        assert_eq!(
            msgs[msgs.len() - 2].0,
            nft(NFT_MSG_DELTABLE),
            "the probe leaves nothing"
        );
    }

    #[test]
    fn answers_are_read_and_garbage_is_not() {
        let mut answer = Vec::new();
        for (seq, errno) in [(5u32, 0i32), (6, -1)] {
            answer.extend_from_slice(&36u32.to_ne_bytes());
            answer.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            answer.extend_from_slice(&[0; 2]);
            answer.extend_from_slice(&seq.to_ne_bytes());
            answer.extend_from_slice(&[0; 4]);
            answer.extend_from_slice(&errno.to_ne_bytes());
            answer.extend_from_slice(&[0; 16]);
        }
        // A table, as GETTABLE answers.
        answer.extend_from_slice(&24u32.to_ne_bytes());
        answer.extend_from_slice(&nft(NFT_MSG_NEWTABLE).to_ne_bytes());
        answer.extend_from_slice(&[0; 2]);
        answer.extend_from_slice(&7u32.to_ne_bytes());
        answer.extend_from_slice(&[0; 12]);
        let read = answers(&answer);
        assert_eq!(
            read,
            vec![
                Answer {
                    seq: 5,
                    error: Some(0)
                },
                Answer {
                    seq: 6,
                    error: Some(-1)
                },
                Answer {
                    seq: 7,
                    error: None
                },
            ]
        );
        assert!(answers(&[0xff; 7]).is_empty());
        assert!(answers(&[0xff; 64]).is_empty());
        // An error message cut short is not read past its end.
        let mut short = 16u32.to_ne_bytes().to_vec();
        short.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        short.extend_from_slice(&[0; 10]);
        short.extend_from_slice(&[0xff; 8]);
        assert!(answers(&short).is_empty());
    }

    #[test]
    fn carried_rules_skip_packets_at_ttl_1() {
        let rules = [Family::Ip.sample()];
        let msgs = messages(&batch(Family::Ip, &rules, Outcome::Apply, 1).0);
        let hooked: Vec<&Vec<u8>> = msgs
            .iter()
            .filter(|m| m.0 == nft(NFT_MSG_NEWRULE) && contains(&m.3, b"prerouting\0"))
            .map(|m| &m.3)
            .collect();
        assert_eq!(hooked.len(), 3);
        // A payload of 1 byte at network offset 8 (the TTL), compared greater than 1: the
        // operator (4), then the nested data (12 bytes, type 3) holding the value 1.
        let gt_one = [
            0, 0, 0, 4, 0x0c, 0x00, 0x03, 0x80, 0x05, 0x00, 0x01, 0x00, 0x01,
        ];
        assert!(
            hooked
                .iter()
                .all(|r| contains(r, &8u32.to_be_bytes()) && contains(r, &gt_one))
        );
    }
}
