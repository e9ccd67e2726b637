//! The lab's client tools (arping, ndisc6) run inside a namespace, their answers parsed into
//! MAC addresses, with bounded waits for "until someone answers".

use std::net::{Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use ferrolb_proto::wire::MacAddr;

use crate::error::{LabError, Result};
use crate::netns::Namespace;
use crate::process::Background;

/// The MAC of every ARP reply arping printed, in order, duplicates kept: `42 bytes from
/// 02:00:0a:fa:00:01 (10.250.0.100): index=0 time=85.2 usec`.
pub fn parse_arping(stdout: &str) -> Vec<MacAddr> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(" bytes from ")?.1.split_whitespace().next())
        .filter_map(|mac| mac.parse().ok())
        .collect()
}

/// The target link-layer address ndisc6 printed (`Target link-layer address: 5A:7C:...`).
pub fn parse_ndisc6(stdout: &str) -> Option<MacAddr> {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Target link-layer address:"))
        .and_then(|mac| mac.trim().parse().ok())
}

/// Sends `count` ARP requests for `target` from `iface`, `interval` apart (Habets' arping,
/// broadcasting every one), and returns the MACs that answered; none is not an error.
pub fn arping(
    ns: &Namespace,
    iface: &str,
    target: Ipv4Addr,
    count: u32,
    interval: Duration,
) -> Result<Vec<MacAddr>> {
    let deadline = interval * count + Duration::from_millis(300);
    let output = ns.exec([
        "arping",
        "-i",
        iface,
        "-c",
        &count.to_string(),
        "-W",
        &format!("{:.3}", interval.as_secs_f64()),
        "-w",
        &format!("{:.3}", deadline.as_secs_f64()),
        &target.to_string(),
    ])?;
    Ok(parse_arping(&String::from_utf8_lossy(&output.stdout)))
}

/// Starts arping `target` from `iface` every 10 ms for `duration`, in the background: the
/// client of a takeover measurement, whose replies a capture then times. Stopped when the
/// returned process is dropped or killed.
pub fn arping_every_10ms(
    ns: &Namespace,
    iface: &str,
    target: Ipv4Addr,
    duration: Duration,
) -> Result<Background> {
    ns.spawn([
        "arping",
        "-i",
        iface,
        "-W",
        "0.01",
        "-w",
        &duration.as_secs().max(1).to_string(),
        &target.to_string(),
    ])
}

/// Repeats single arpings for `target` until the answering MACs satisfy `done`, or fails after
/// `timeout` naming what was last seen.
pub fn arping_until(
    ns: &Namespace,
    iface: &str,
    target: Ipv4Addr,
    timeout: Duration,
    mut done: impl FnMut(&[MacAddr]) -> bool,
) -> Result<Vec<MacAddr>> {
    let deadline = Instant::now() + timeout;
    loop {
        let macs = arping(ns, iface, target, 1, Duration::from_millis(100))?;
        if done(&macs) {
            return Ok(macs);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Output {
                command: format!("arping -i {iface} {target}"),
                namespace: ns.name().to_owned(),
                reason: format!(
                    "the awaited answer did not come within {timeout:?}; last answers: {macs:?}"
                ),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One neighbour solicitation for `target` from `iface` (ndisc6, one try of `wait`): the
/// advertised MAC, or `None` if nobody answered.
pub fn ndisc6(
    ns: &Namespace,
    iface: &str,
    target: Ipv6Addr,
    wait: Duration,
) -> Result<Option<MacAddr>> {
    let output = ns.exec([
        "ndisc6",
        "-1",
        "-r",
        "1",
        "-w",
        &wait.as_millis().to_string(),
        &target.to_string(),
        iface,
    ])?;
    Ok(parse_ndisc6(&String::from_utf8_lossy(&output.stdout)))
}

/// Repeats [`ndisc6`] until someone answers, or fails after `timeout`.
pub fn ndisc6_until(
    ns: &Namespace,
    iface: &str,
    target: Ipv6Addr,
    timeout: Duration,
) -> Result<MacAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(mac) = ndisc6(ns, iface, target, Duration::from_millis(200))? {
            return Ok(mac);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Output {
                command: format!("ndisc6 {target} {iface}"),
                namespace: ns.name().to_owned(),
                reason: format!("no advertisement within {timeout:?}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arping_output() {
        let out = "ARPING 10.250.0.100\n\
            42 bytes from 5a:7c:be:08:03:b3 (10.250.0.100): index=0 time=108.642 usec\n\
            42 bytes from 02:00:0a:fa:00:02 (10.250.0.100): index=0 time=1.2 msec\n\
            \n--- 10.250.0.100 statistics ---\n\
            1 packets transmitted, 2 packets received,   0% unanswered (1 extra)\n";
        assert_eq!(
            parse_arping(out),
            [
                MacAddr([0x5a, 0x7c, 0xbe, 0x08, 0x03, 0xb3]),
                MacAddr([2, 0, 0x0a, 0xfa, 0, 2])
            ]
        );
        assert!(parse_arping("Timeout\n").is_empty());
    }

    #[test]
    fn ndisc6_output() {
        let out = "Soliciting fd00:250::100 (fd00:250::100) on eth0...\n\
            Target link-layer address: 5A:7C:BE:08:03:B3\n from fd00:250::100\n";
        assert_eq!(
            parse_ndisc6(out),
            Some(MacAddr([0x5a, 0x7c, 0xbe, 0x08, 0x03, 0xb3]))
        );
        assert_eq!(parse_ndisc6("Timed out.\nNo response.\n"), None);
    }
}
