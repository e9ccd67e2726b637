//! The AF_PACKET socket of one interface, set up so the kernel filters for the speaker: only ARP
//! and neighbour solicitations/advertisements reach userspace, never our own outgoing frames,
//! promiscuous mode off; then handed to pnet's datalink channel.
//!
//! The workspace denies unsafe code; this module is the one place allowed the handful of libc
//! calls pnet and std do not offer (socket options), each with its safety argument.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use ferrolb_proto::wire::MacAddr;
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};

use crate::interfaces::Link;

/// Kernel constants from `<linux/if_packet.h>` and `<asm/socket.h>`, spelled out because not
/// every libc release exports them for every target.
const SO_ATTACH_FILTER: libc::c_int = 26;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_DROP_MEMBERSHIP: libc::c_int = 2;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_MR_MULTICAST: libc::c_ushort = 0;

/// How long a responder's read blocks before it looks at its stop flag.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// Why a packet socket could not be set up or used; names the interface and the step.
#[derive(Debug, thiserror::Error)]
#[error("{step} on interface {iface}: {source}")]
pub struct SocketError {
    pub iface: String,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

/// `struct packet_mreq`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

// BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// Ancillary load: "was a VLAN tag stripped from this frame?" (SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT).
const VLAN_TAG_PRESENT: u32 = (-0x1000i32 + 48) as u32;
/// Accept a whole frame (any snap length above the MTU).
const ACCEPT: u32 = 0x0004_0000;

/// ARP (0x0806), or IPv6 (0x86dd) carrying ICMPv6 (next header 58, no extension header) of type
/// 135 (neighbour solicitation) or 136 (advertisement, for conflict detection).
///
/// Tagged frames are dropped, whether the tag is in the data or was stripped by VLAN offload: on
/// a trunk they belong to the VLAN's own interface (which has its own socket when selected), and
/// answering them here would announce the IP into another broadcast domain.
const NEIGHBOUR_FILTER: [SockFilter; 12] = [
    op(LD_W_ABS, 0, 0, VLAN_TAG_PRESENT),
    op(JEQ_K, 0, 8, 0), // tag stripped -> drop
    op(LD_H_ABS, 0, 0, 12),
    op(JEQ_K, 7, 0, 0x0806), // ARP -> accept
    op(JEQ_K, 0, 5, 0x86dd), // not IPv6 -> drop
    op(LD_B_ABS, 0, 0, 20),
    op(JEQ_K, 0, 3, 58), // not ICMPv6 -> drop
    op(LD_B_ABS, 0, 0, 54),
    op(JEQ_K, 2, 0, 135), // NS -> accept
    op(JEQ_K, 1, 0, 136), // NA -> accept
    op(RET_K, 0, 0, 0),
    op(RET_K, 0, 0, ACCEPT),
];

/// The frames this interface's responder sees and sends, and a handle to change its multicast
/// groups and send from another thread.
pub struct PacketChannel {
    pub tx: Box<dyn DataLinkSender>,
    pub rx: Box<dyn DataLinkReceiver>,
    pub control: SocketControl,
}

impl std::fmt::Debug for PacketChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketChannel")
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// A second descriptor of the same socket (a `dup`), so that group membership and sends from the
/// control thread never race with pnet closing its descriptor.
#[derive(Debug)]
pub struct SocketControl {
    fd: OwnedFd,
    ifindex: libc::c_int,
    iface: String,
}

impl SocketControl {
    /// Receive frames sent to the multicast MAC `group` (e.g. an IPv6 solicited-node group's
    /// 33:33:ff:xx:xx:xx) without promiscuous mode. Memberships end with the socket.
    pub fn join(&self, group: MacAddr) -> Result<(), SocketError> {
        self.membership(PACKET_ADD_MEMBERSHIP, group, "joining a multicast group")
    }

    /// Stop receiving frames for `group`.
    pub fn leave(&self, group: MacAddr) -> Result<(), SocketError> {
        self.membership(PACKET_DROP_MEMBERSHIP, group, "leaving a multicast group")
    }

    fn membership(
        &self,
        option: libc::c_int,
        group: MacAddr,
        step: &'static str,
    ) -> Result<(), SocketError> {
        let mut address = [0u8; 8];
        address[..6].copy_from_slice(group.as_bytes());
        let mreq = PacketMreq {
            mr_ifindex: self.ifindex,
            mr_type: PACKET_MR_MULTICAST,
            mr_alen: 6,
            mr_address: address,
        };
        // SAFETY: `mreq` is a live, correctly laid out `struct packet_mreq` for the duration of
        // the call, and the length passed is its size; the fd is owned and open.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                option,
                (&raw const mreq).cast(),
                socklen::<PacketMreq>(),
            )
        };
        self.check(rc, step)
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> Result<(), SocketError> {
        // SAFETY: the pointer and length describe `frame`, borrowed for the call; the fd is owned
        // and open. A packet socket bound to an interface needs no destination address.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return Err(self.error("sending a frame", io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    fn check(&self, rc: libc::c_int, step: &'static str) -> Result<(), SocketError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(step, io::Error::last_os_error()))
        }
    }

    fn error(&self, step: &'static str, source: io::Error) -> SocketError {
        SocketError {
            iface: self.iface.clone(),
            step,
            source,
        }
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Opens the responder socket of `link`: AF_PACKET, filtered to ARP and NDP, own frames
/// ignored, not promiscuous, bound to the link by pnet.
pub fn open(link: &Link) -> Result<PacketChannel, SocketError> {
    let err = |step: &'static str, source: io::Error| SocketError {
        iface: link.name.clone(),
        step,
        source,
    };
    // Protocol 0: the socket receives nothing until pnet binds it to the interface, by which time
    // the filter is attached, so no unfiltered frame is ever queued.
    // SAFETY: plain system call with constant arguments; it returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(err(
            "creating an AF_PACKET socket (needs CAP_NET_RAW)",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a new, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let program = SockFprog {
        len: NEIGHBOUR_FILTER.len() as libc::c_ushort,
        filter: NEIGHBOUR_FILTER.as_ptr(),
    };
    // SAFETY: `program` points at a static array of `len` valid instructions; the kernel copies
    // them during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&raw const program).cast(),
            socklen::<SockFprog>(),
        )
    };
    if rc != 0 {
        return Err(err(
            "attaching the ARP/NDP socket filter",
            io::Error::last_os_error(),
        ));
    }

    let one: libc::c_int = 1;
    // SAFETY: `one` is a live c_int and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&raw const one).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(err(
            "setting PACKET_IGNORE_OUTGOING (needs Linux 4.20)",
            io::Error::last_os_error(),
        ));
    }

    let control = SocketControl {
        fd: fd
            .try_clone()
            .map_err(|e| err("duplicating the socket", e))?,
        ifindex: libc::c_int::try_from(link.index).map_err(|_| {
            err(
                "reading the interface index",
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?,
        iface: link.name.clone(),
    };

    let interface = NetworkInterface {
        name: link.name.clone(),
        description: String::new(),
        index: link.index,
        mac: link.mac.map(|m| {
            let [a, b, c, d, e, f] = m.octets();
            pnet_datalink::MacAddr(a, b, c, d, e, f)
        }),
        ips: Vec::new(),
        flags: 0,
    };
    let config = Config {
        read_timeout: Some(READ_TIMEOUT),
        write_timeout: Some(Duration::from_millis(100)),
        promiscuous: false,
        socket_fd: Some(fd.into_raw_fd()),
        ..Config::default()
    };
    // pnet takes ownership of the descriptor (closing it on error and when both halves drop).
    match pnet_datalink::channel(&interface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok(PacketChannel { tx, rx, control }),
        Ok(_) => Err(err(
            "opening the pnet channel",
            io::Error::other("pnet returned a non-Ethernet channel"),
        )),
        Err(e) => Err(err("binding the socket to the interface", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program over `frame` with a minimal interpreter of the opcodes it uses.
    fn run(frame: &[u8], vlan_stripped: bool) -> u32 {
        let mut pc = 0usize;
        let mut a = 0u32;
        loop {
            let Some(ins) = NEIGHBOUR_FILTER.get(pc) else {
                panic!("jumped off the program at {pc}");
            };
            let load = |width: usize| -> Option<u32> {
                if ins.k == VLAN_TAG_PRESENT {
                    return Some(u32::from(vlan_stripped));
                }
                let at = ins.k as usize;
                let bytes = frame.get(at..at + width)?;
                Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
            };
            match ins.code {
                LD_W_ABS | LD_H_ABS | LD_B_ABS => {
                    let width = match ins.code {
                        LD_W_ABS => 4,
                        LD_H_ABS => 2,
                        _ => 1,
                    };
                    // The kernel drops the frame when a load runs past its end.
                    let Some(v) = load(width) else { return 0 };
                    a = v;
                    pc += 1;
                }
                JEQ_K => {
                    pc += 1 + usize::from(if a == ins.k { ins.jt } else { ins.jf });
                }
                RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn filter_passes_arp_and_ndp_only() {
        use ferrolb_proto::wire;
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let ip = std::net::Ipv4Addr::new(10, 250, 0, 100);
        let ip6: std::net::Ipv6Addr = "fd00:250::100"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(run(&wire::gratuitous_arp_request(mac, ip), false), ACCEPT);
        assert_eq!(run(&wire::dad_solicit(mac, ip6), false), ACCEPT);
        assert_eq!(run(&wire::unsolicited_na(mac, ip6), false), ACCEPT);
        // Offloaded VLAN tag: dropped.
        assert_eq!(run(&wire::gratuitous_arp_request(mac, ip), true), 0);
        // In-band 802.1Q tag: dropped.
        let mut tagged = wire::gratuitous_arp_request(mac, ip);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        assert_eq!(run(&tagged, false), 0);
        // IPv4, ICMPv6 echo, UDP over IPv6, runts: dropped.
        let mut ipv4 = wire::gratuitous_arp_request(mac, ip);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(run(&ipv4, false), 0);
        let mut echo = wire::unsolicited_na(mac, ip6);
        echo[54] = 128;
        assert_eq!(run(&echo, false), 0);
        let mut udp = wire::unsolicited_na(mac, ip6);
        udp[20] = 17;
        assert_eq!(run(&udp, false), 0);
        assert_eq!(run(&[0u8; 10], false), 0);
    }
}
