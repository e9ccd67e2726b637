//! When to send gratuitous announcements after taking an IP, and which frames: a pure schedule
//! the announcer's timer loop follows.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_proto::wire::{self, MacAddr};

/// How many announcements, how far apart, and whether to keep refreshing afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GratuitousPlan {
    /// Announcements in the burst after a takeover (MetalLB: 5, at t = 0, 1.1, 2.2, 3.3, 4.4 s).
    pub count: u32,
    pub interval: Duration,
    /// Keep announcing this often after the burst, for switches whose forwarding tables age out
    /// before the router's ARP cache does. `None`: only the burst.
    pub refresh: Option<Duration>,
}

impl Default for GratuitousPlan {
    fn default() -> Self {
        GratuitousPlan {
            count: 5,
            interval: Duration::from_millis(1100),
            refresh: None,
        }
    }
}

/// The announcements of one IP on one interface since it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    started: Instant,
    sent: u32,
}

impl Burst {
    pub fn new(now: Instant) -> Self {
        Burst {
            started: now,
            sent: 0,
        }
    }

    /// How many announcements were sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// When the next announcement is due; `None` once the burst is over and there is no refresh.
    /// Due times are fixed from the start, so a late timer never shifts later announcements.
    pub fn next_due(&self, plan: &GratuitousPlan) -> Option<Instant> {
        if self.sent < plan.count {
            return self
                .started
                .checked_add(plan.interval.checked_mul(self.sent)?);
        }
        let refresh = plan.refresh.filter(|r| !r.is_zero())?;
        let burst_end = plan.interval.checked_mul(plan.count.saturating_sub(1))?;
        let refreshes = refresh.checked_mul(self.sent - plan.count + 1)?;
        self.started.checked_add(burst_end.checked_add(refreshes)?)
    }

    /// Records one announcement (all its frames) as sent.
    pub fn mark_sent(&mut self) {
        self.sent = self.sent.saturating_add(1);
    }
}

/// The frames of one announcement of `ip` from `mac`: for IPv4 the request and reply forms of
/// gratuitous ARP (some hosts learn only from one of them), for IPv6 an unsolicited neighbour
/// advertisement to all nodes with Override set.
pub fn frames(ip: IpAddr, mac: MacAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(ip) => vec![
            wire::gratuitous_arp_request(mac, ip),
            wire::gratuitous_arp_reply(mac, ip),
        ],
        IpAddr::V6(ip) => vec![wire::unsolicited_na(mac, ip)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metallb_burst_then_silence() {
        let plan = GratuitousPlan::default();
        let t0 = Instant::now();
        let mut burst = Burst::new(t0);
        let mut due = Vec::new();
        while let Some(at) = burst.next_due(&plan) {
            due.push(at - t0);
            burst.mark_sent();
            assert!(due.len() <= 10, "the burst ends");
        }
        let ms: Vec<u128> = due.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 1100, 2200, 3300, 4400]);
        assert_eq!(burst.sent(), 5);
    }

    #[test]
    fn refresh_continues_after_the_burst() {
        let plan = GratuitousPlan {
            count: 2,
            interval: Duration::from_secs(1),
            refresh: Some(Duration::from_secs(60)),
        };
        let t0 = Instant::now();
        let mut burst = Burst::new(t0);
        let mut due = Vec::new();
        for _ in 0..4 {
            due.push(burst.next_due(&plan).map(|at| (at - t0).as_secs()));
            burst.mark_sent();
        }
        assert_eq!(due, [Some(0), Some(1), Some(61), Some(121)]);
    }

    #[test]
    fn zero_count_or_zero_refresh() {
        let t0 = Instant::now();
        let none = GratuitousPlan {
            count: 0,
            ..GratuitousPlan::default()
        };
        assert_eq!(Burst::new(t0).next_due(&none), None);
        let zero_refresh = GratuitousPlan {
            count: 1,
            interval: Duration::from_secs(1),
            refresh: Some(Duration::ZERO),
        };
        let mut burst = Burst::new(t0);
        assert_eq!(burst.next_due(&zero_refresh), Some(t0));
        burst.mark_sent();
        assert_eq!(
            burst.next_due(&zero_refresh),
            None,
            "a zero refresh would spin"
        );
    }

    #[test]
    fn frames_per_family() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let v4 = frames("10.250.0.100".parse().unwrap(), mac);
        assert_eq!(v4.len(), 2);
        let ops: Vec<_> = v4
            .iter()
            .map(|f| match wire::parse_frame(f) {
                Ok(wire::Frame::Arp { arp, .. }) => {
                    assert!(arp.is_gratuitous());
                    arp.operation
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ops,
            [wire::ArpOperation::Request, wire::ArpOperation::Reply]
        );
        let v6 = frames("fd00:250::100".parse().unwrap(), mac);
        assert_eq!(v6.len(), 1);
        assert!(matches!(
            wire::parse_frame(&v6[0]),
            Ok(wire::Frame::Ndisc { ndisc: wire::NdiscRepr::NeighborAdvert { flags, .. }, .. })
                if flags.override_() && !flags.solicited()
        ));
    }
}
