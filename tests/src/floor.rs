//! The least a userspace ARP responder can do: one AF_PACKET socket bound to ARP on one
//! interface (its own replies not looped back), a blocking `recv`, a byte-level check, one
//! `send`. No filter, no threads, no priority, no bookkeeping. `arp-bench --floor` measures it
//! in the speaker's place against the same kernel: the latency any responder built on an
//! AF_PACKET socket (as the speaker must be) pays for its wake-up, next to the speaker's.

#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ferrolb_proto::wire::MacAddr;

const ETH_P_ARP: u16 = 0x0806;
/// Not in the libc crate's Linux constants for every target; since Linux 4.20.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const ARP_REQUEST: [u8; 2] = [0, 1];
/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
const ARP_FRAME_LEN: usize = 42;

/// Answers ARP requests for `ip` on the interface with index `ifindex` and MAC `mac`, until
/// receiving fails. A failed send is reported on stderr (the first, then at each power of
/// two) and the loop goes on, as a responder must.
pub fn serve(ifindex: u32, mac: MacAddr, ip: Ipv4Addr) -> io::Result<()> {
    let socket = open(ifindex)?;
    let mut request = [0u8; 2048];
    let mut reply = [0u8; ARP_FRAME_LEN];
    let mut send_failures = 0u64;
    loop {
        // SAFETY: the buffer is valid for writes of its whole length.
        let len = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                request.as_mut_ptr().cast(),
                request.len(),
                0,
            )
        };
        let Ok(len) = usize::try_from(len) else {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        };
        if !answer(request.get(..len).unwrap_or_default(), mac, ip, &mut reply) {
            continue;
        }
        // Never blocks: a full transmit queue loses this reply, as it would the kernel's.
        // SAFETY: the reply is valid for reads of its whole length.
        let sent = unsafe {
            libc::send(
                socket.as_raw_fd(),
                reply.as_ptr().cast(),
                reply.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            send_failures += 1;
            if send_failures.is_power_of_two() {
                eprintln!(
                    "floor: {send_failures} replies not sent so far; last: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Writes the reply to `frame` into `reply` if `frame` is an ARP request for `ip`. Hardware
/// and protocol types and lengths are not checked: the lab carries only Ethernet/IPv4 ARP, and
/// every check is time the floor must not spend.
fn answer(frame: &[u8], mac: MacAddr, ip: Ipv4Addr, reply: &mut [u8; ARP_FRAME_LEN]) -> bool {
    let Some(frame) = frame.get(..ARP_FRAME_LEN) else {
        return false;
    };
    if frame[12..14] != ETH_P_ARP.to_be_bytes()
        || frame[20..22] != ARP_REQUEST
        || frame[38..42] != ip.octets()
    {
        return false;
    }
    let (requester_mac, requester) = (&frame[22..28], &frame[28..32]);
    reply[0..6].copy_from_slice(requester_mac);
    reply[6..12].copy_from_slice(&mac.0);
    reply[12..22].copy_from_slice(&frame[12..22]);
    reply[21] = 2;
    reply[22..28].copy_from_slice(&mac.0);
    reply[28..32].copy_from_slice(&ip.octets());
    reply[32..38].copy_from_slice(requester_mac);
    reply[38..42].copy_from_slice(requester);
    true
}

fn open(ifindex: u32) -> io::Result<OwnedFd> {
    let protocol = ETH_P_ARP.to_be();
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    // SAFETY: the address is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Without it every reply would come back to this socket and wake the thread once more.
    let on: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use ferrolb_proto::wire::{self, ArpOperation, ArpRepr, EtherType, EthernetRepr, Frame};

    use super::*;

    const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const CLIENT: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x10]);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 101);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);

    fn request(operation: ArpOperation, target: Ipv4Addr) -> Vec<u8> {
        Frame::Arp {
            ethernet: EthernetRepr {
                src_addr: CLIENT,
                dst_addr: MacAddr::BROADCAST,
                ethertype: EtherType::ARP,
                vlan: None,
            },
            arp: ArpRepr {
                operation,
                source_hardware_addr: CLIENT,
                source_protocol_addr: CLIENT_IP,
                target_hardware_addr: MacAddr::UNSPECIFIED,
                target_protocol_addr: target,
            },
        }
        .to_bytes()
    }

    #[test]
    fn the_reply_is_the_one_the_speaker_builds() {
        let mut reply = [0u8; ARP_FRAME_LEN];
        assert!(answer(
            &request(ArpOperation::Request, VIP),
            OURS,
            VIP,
            &mut reply
        ));
        assert_eq!(
            reply.as_slice(),
            wire::arp_reply(OURS, VIP, CLIENT, CLIENT_IP).as_slice()
        );
    }

    #[test]
    fn nothing_but_requests_for_the_ip_is_answered() {
        let mut reply = [0u8; ARP_FRAME_LEN];
        let other = Ipv4Addr::new(10, 250, 0, 2);
        assert!(!answer(
            &request(ArpOperation::Request, other),
            OURS,
            VIP,
            &mut reply
        ));
        assert!(!answer(
            &request(ArpOperation::Reply, VIP),
            OURS,
            VIP,
            &mut reply
        ));
        assert!(!answer(&[0u8; 20], OURS, VIP, &mut reply));
    }
}
