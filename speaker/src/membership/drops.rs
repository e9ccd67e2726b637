//! Datagrams the kernel dropped at the membership socket because its receive buffer was full:
//! the `drops` column the kernel keeps per UDP socket in `/proc/net/udp` and `/proc/net/udp6`,
//! found by the socket's inode. A burst the loop cannot drain in time is lost there, before any
//! counter of the loop sees it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

/// The inode of an open socket (what `/proc/net/udp` names it by), if the kernel says.
pub fn inode(socket: &impl AsRawFd) -> Option<u64> {
    let path = format!("/proc/self/fd/{}", socket.as_raw_fd());
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The drops of the socket with `inode`, read from this network namespace's UDP tables.
pub fn read(inode: u64) -> Option<u64> {
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| parse(&table, inode))
}

/// The `drops` column of the row for `inode` in a `/proc/net/udp` table.
pub fn parse(table: &str, inode: u64) -> Option<u64> {
    let header = table.lines().next()?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    // The header names `tx_queue rx_queue` and `tr tm->when` as one field each in the rows.
    let inode_at = columns.iter().position(|c| *c == "inode")? - 2;
    let drops_at = columns.iter().position(|c| *c == "drops")? - 2;
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        (fields.get(inode_at)?.parse::<u64>().ok()? == inode)
            .then(|| fields.get(drops_at)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  145: 00000000:1F0A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 91841 2 0000000000000000 273
  146: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 20315 2 0000000000000000 0
";

    #[test]
    fn the_row_of_the_socket_gives_its_drops() {
        assert_eq!(parse(TABLE, 91841), Some(273));
        assert_eq!(parse(TABLE, 20315), Some(0));
        assert_eq!(parse(TABLE, 1), None);
        assert_eq!(parse("", 91841), None);
        assert_eq!(parse("garbage\nmore garbage", 91841), None);
    }

    #[test]
    fn a_live_socket_is_found() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = inode(&socket).unwrap();
        assert_eq!(read(inode), Some(0));
    }
}
