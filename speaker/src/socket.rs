//! The AF_PACKET socket of one interface, set up so the kernel filters for the speaker: only ARP
//! and neighbour solicitations/advertisements reach userspace, never our own outgoing frames,
//! promiscuous mode off; bound to the interface by pnet's datalink channel.
//!
//! The responder then reads and answers on its own descriptor of the socket with one blocking
//! `recv` and one `send` per request: pnet's receiver and sender each `poll` before every call,
//! which doubles the system calls on the path whose latency is measured against the kernel's.
//! Each interface gets one such socket per CPU, in a fanout group that gives a frame to the
//! socket of the CPU that received it ([`open_per_cpu`]).
//!
//! The workspace denies unsafe code; this module is allowed the handful of libc calls pnet and
//! std do not offer (socket options, fanout, multicast membership), each with its safety
//! argument.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use ferrolb_proto::wire::MacAddr;
use pnet_datalink::{Channel, Config, NetworkInterface};

use crate::interfaces::Link;

/// Kernel constants from `<linux/if_packet.h>` and `<asm/socket.h>`, spelled out because not
/// every libc release exports them for every target.
const SO_ATTACH_FILTER: libc::c_int = 26;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_DROP_MEMBERSHIP: libc::c_int = 2;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_MR_MULTICAST: libc::c_ushort = 0;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_CPU: u32 = 2;
const PACKET_FANOUT_FLAG_ROLLOVER: u32 = 0x1000;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// The most responder sockets (and threads) one interface gets; beyond, CPUs share them.
pub const MAX_PER_CPU: usize = 64;

/// How long a responder's read blocks before it looks at its stop flag.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// The receive buffer asked for: room for a burst of a few thousand requests while the
/// responder thread waits for a CPU (the default, ~200 KiB, holds about 300 ARP frames).
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// The CPUs online, which a receive softirq may run on (the responder sockets of an interface,
/// one per CPU, are capped at [`MAX_PER_CPU`]).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).clamp(1, MAX_PER_CPU)
}

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
#[derive(Debug)]
pub struct PacketChannel {
    pub socket: PacketSocket,
    pub control: SocketControl,
}

/// The responder thread's descriptor of the socket: blocking receives that give up after
/// [`READ_TIMEOUT`] (so the thread sees its stop flag), and replies sent on the same socket.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Waits for the next frame and copies it into `buf`; returns its length (a frame longer
    /// than `buf` is cut). `WouldBlock` after [`READ_TIMEOUT`] without one.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`, exclusively borrowed for the call; the
        // fd is owned and open.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Sends one whole Ethernet frame out of the bound interface, without waiting for room in
    /// the send buffer (a full one is an error, counted by the caller).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send(&self.fd, frame)
    }

    /// Discards the frames queued so far (those it received on its own before joining its
    /// fanout group; the group's other member got them too).
    fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: the pointer and length describe `buf`, exclusively borrowed for the call;
            // the fd is owned and open.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                return;
            }
        }
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
        send(&self.fd, frame).map_err(|e| self.error("sending a frame", e))
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

/// `send(2)` of one frame on a bound packet socket, never blocking.
fn send(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `frame`, borrowed for the call; the fd is owned
    // and open. A packet socket bound to an interface needs no destination address.
    let rc = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setsockopt(2)` with an integer-sized (or any plain) value.
/// Asks for a receive buffer of `bytes`: past `net.core.rmem_max` only with CAP_NET_ADMIN
/// (SO_RCVBUFFORCE); otherwise as much as the kernel allows.
pub(crate) fn size_receive_buffer(fd: &impl AsRawFd, bytes: libc::c_int) -> io::Result<()> {
    if set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes).is_err() {
        set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes)?;
    }
    Ok(())
}

pub(crate) fn set_option<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` for the duration of the call and the length
    // passed is its size; the kernel only reads it. The fd is owned and open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(value).cast(),
            socklen::<T>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Whether this process may open packet sockets at all (CAP_NET_RAW): a speaker that cannot
/// answer ARP must not join the membership, where it would be elected and leave its IPs dark.
/// The socket opened to find out receives nothing (protocol 0, never bound) and is closed.
pub fn may_open_packet_sockets() -> io::Result<()> {
    // SAFETY: plain system call with constant arguments; it returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new, valid descriptor nothing else owns; dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
    Ok(())
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

    set_option(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)
        .map_err(|e| err("setting PACKET_IGNORE_OUTGOING (needs Linux 4.20)", e))?;
    size_receive_buffer(&fd, RECEIVE_BUFFER)
        .map_err(|e| err("setting the receive buffer size", e))?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(READ_TIMEOUT.as_micros()).unwrap_or(100_000),
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
        .map_err(|e| err("setting the receive timeout", e))?;

    let socket = PacketSocket {
        fd: fd
            .try_clone()
            .map_err(|e| err("duplicating the socket", e))?,
    };
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
        promiscuous: false,
        socket_fd: Some(fd.into_raw_fd()),
        // Never used for frames: only the binding matters.
        read_buffer_size: 0,
        write_buffer_size: 0,
        ..Config::default()
    };
    // pnet takes ownership of its descriptor (closing it on error and when both halves drop);
    // it binds the socket to the interface. Ours stay open, so the halves can go at once.
    match pnet_datalink::channel(&interface, config) {
        Ok(Channel::Ethernet(_, _)) => {}
        Ok(_) => {
            return Err(err(
                "opening the pnet channel",
                io::Error::other("pnet returned a non-Ethernet channel"),
            ));
        }
        Err(e) => return Err(err("binding the socket to the interface", e)),
    }
    // pnet made the open file non-blocking (shared by every descriptor of it): the responder
    // blocks in `recv` instead, bounded by SO_RCVTIMEO; the control handle sends MSG_DONTWAIT.
    clear_nonblocking(&socket.fd).map_err(|e| err("making the socket blocking", e))?;
    Ok(PacketChannel { socket, control })
}

/// The responder sockets of one interface, one per CPU in a `PACKET_FANOUT_CPU` group: the
/// kernel hands each request to the socket of the CPU whose softirq received it, so a responder
/// pinned to that CPU is woken where it already runs, never across to an idle CPU (in a VM, a
/// wake-up from the hypervisor's halt of tens of microseconds). A full socket rolls over to
/// another. `control` belongs to the first socket; one membership serves the whole group.
#[derive(Debug)]
pub struct PerCpuChannels {
    /// Socket `i` takes the frames received on CPU `i` (modulo their number).
    pub sockets: Vec<PacketSocket>,
    pub control: SocketControl,
    /// Why there is only one socket, when fanout could not be set up.
    pub fallback: Option<SocketError>,
}

/// Opens `cpus` responder sockets of `link` in one fanout group (see [`PerCpuChannels`]). If
/// the kernel refuses fanout, one socket serves every CPU, as [`open`] alone would, and
/// `fallback` says why.
pub fn open_per_cpu(link: &Link, cpus: usize) -> Result<PerCpuChannels, SocketError> {
    let first = open(link)?;
    let mut channels = PerCpuChannels {
        sockets: vec![first.socket],
        control: first.control,
        fallback: None,
    };
    if cpus <= 1 {
        return Ok(channels);
    }
    let err = |step: &'static str, source: io::Error| SocketError {
        iface: link.name.clone(),
        step,
        source,
    };
    let mode = PACKET_FANOUT_CPU | PACKET_FANOUT_FLAG_ROLLOVER;
    // The kernel picks a group id unused in this network namespace, for the first member only.
    let group = set_option(
        &channels.control.fd,
        SOL_PACKET,
        PACKET_FANOUT,
        &((mode | PACKET_FANOUT_FLAG_UNIQUEID) << 16),
    )
    .and_then(|()| fanout_id(&channels.control.fd));
    let id = match group {
        Ok(id) => id,
        Err(e) => {
            channels.fallback = Some(err("joining a PACKET_FANOUT_CPU group", e));
            return Ok(channels);
        }
    };
    for _ in 1..cpus {
        let member = open(link)?;
        set_option(
            &member.control.fd,
            SOL_PACKET,
            PACKET_FANOUT,
            &(id | (mode << 16)),
        )
        .map_err(|e| err("adding a socket to the PACKET_FANOUT_CPU group", e))?;
        channels.sockets.push(member.socket);
    }
    // Nothing is answered yet (no thread reads); what each queued alone would be answered twice.
    channels.sockets.iter().for_each(PacketSocket::drain);
    Ok(channels)
}

/// The id of the fanout group `fd` belongs to.
fn fanout_id(fd: &OwnedFd) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = socklen::<u32>();
    // SAFETY: `value` and `len` are live for the call and `len` is `value`'s size; the kernel
    // writes at most that many bytes. The fd is owned and open.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_FANOUT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value & 0xffff)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn clear_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an owned, open fd; no pointers involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
