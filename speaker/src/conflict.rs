//! Duplicate address detection before a first announcement (RFC 5227 ARP probes, RFC 4862 DAD
//! for IPv6): a pure state machine the announcer drives with the clock and the claims it sees.
//!
//! RFC 5227 waits 1-2 s between three probes and 2 s after them, for a host joining a network.
//! A Service IP is assigned by an IPAM that owns the pool, so the probe only guards against a
//! stray host squatting on it; FerroLB keeps the window short (by default three probes 100 ms
//! apart, then 200 ms: ~400 ms), which catches any host whose kernel answers ARP or NDP.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_proto::wire::{self, MacAddr};

/// How to probe, and how often to probe again an IP found taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePlan {
    pub probes: u32,
    pub interval: Duration,
    /// How long to listen after the last probe.
    pub wait: Duration,
    /// After a conflict, probe again this much later (and announce if the IP is free by then).
    pub recheck: Duration,
}

impl Default for ProbePlan {
    fn default() -> Self {
        ProbePlan {
            probes: 3,
            interval: Duration::from_millis(100),
            wait: Duration::from_millis(200),
            recheck: Duration::from_secs(10),
        }
    }
}

impl ProbePlan {
    /// From the first probe to the verdict when nobody answers.
    pub fn window(&self) -> Duration {
        self.interval
            .saturating_mul(self.probes.saturating_sub(1))
            .saturating_add(self.wait)
    }
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Nobody answered: announce.
    Free,
    /// A station with this MAC uses the IP: do not announce.
    Taken { mac: MacAddr },
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStep {
    /// Send one probe now, then poll again.
    Send,
    /// Nothing until then (or until a claim is observed).
    WaitUntil(Instant),
    Done(ProbeOutcome),
}

/// One run of probes for one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    started: Instant,
    sent: u32,
    taken: Option<MacAddr>,
}

impl Probe {
    pub fn new(now: Instant) -> Self {
        Probe {
            started: now,
            sent: 0,
            taken: None,
        }
    }

    /// Another station claimed the IP (answered a probe, announced it, or probes for it too).
    pub fn observe(&mut self, mac: MacAddr) {
        self.taken.get_or_insert(mac);
    }

    pub fn poll(&mut self, now: Instant, plan: &ProbePlan) -> ProbeStep {
        if let Some(mac) = self.taken {
            return ProbeStep::Done(ProbeOutcome::Taken { mac });
        }
        if self.sent < plan.probes {
            let due = self.started + plan.interval.saturating_mul(self.sent);
            if now >= due {
                self.sent += 1;
                return ProbeStep::Send;
            }
            return ProbeStep::WaitUntil(due);
        }
        let end = self.started + plan.window();
        if now >= end {
            ProbeStep::Done(ProbeOutcome::Free)
        } else {
            ProbeStep::WaitUntil(end)
        }
    }
}

/// The probe frame for `ip` from `mac`: an ARP probe (sender IP 0.0.0.0) or a DAD solicitation
/// (from ::, to the solicited-node group).
pub fn probe_frame(ip: IpAddr, mac: MacAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => wire::arp_probe(mac, ip),
        IpAddr::V6(ip) => wire::dad_solicit(mac, ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROGUE: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x66]);

    /// Drives a probe with a simulated clock; `claim_at` injects a claim at that offset.
    fn drive(plan: &ProbePlan, claim_at: Option<Duration>) -> (Vec<u128>, ProbeOutcome, u128) {
        let t0 = Instant::now();
        let mut probe = Probe::new(t0);
        let mut now = t0;
        let mut sends = Vec::new();
        loop {
            if claim_at.is_some_and(|at| now >= t0 + at) {
                probe.observe(ROGUE);
            }
            match probe.poll(now, plan) {
                ProbeStep::Send => sends.push((now - t0).as_millis()),
                ProbeStep::WaitUntil(at) => {
                    assert!(at > now, "never waits for the past");
                    now = match claim_at.map(|c| t0 + c) {
                        Some(claim) if claim > now && claim < at => claim,
                        _ => at,
                    };
                }
                ProbeStep::Done(outcome) => return (sends, outcome, (now - t0).as_millis()),
            }
        }
    }

    #[test]
    fn nobody_answers_three_probes_then_free() {
        let (sends, outcome, at) = drive(&ProbePlan::default(), None);
        assert_eq!(sends, [0, 100, 200]);
        assert_eq!(outcome, ProbeOutcome::Free);
        assert_eq!(at, 400);
        assert_eq!(ProbePlan::default().window(), Duration::from_millis(400));
    }

    #[test]
    fn an_answer_ends_the_probe_at_once() {
        let (sends, outcome, at) = drive(&ProbePlan::default(), Some(Duration::from_millis(150)));
        assert_eq!(sends, [0, 100]);
        assert_eq!(outcome, ProbeOutcome::Taken { mac: ROGUE });
        assert_eq!(at, 150);
        // An answer during the final wait counts too.
        let (_, outcome, _) = drive(&ProbePlan::default(), Some(Duration::from_millis(399)));
        assert_eq!(outcome, ProbeOutcome::Taken { mac: ROGUE });
    }

    #[test]
    fn the_first_claimant_is_kept() {
        let mut probe = Probe::new(Instant::now());
        probe.observe(ROGUE);
        probe.observe(MacAddr([2, 0, 0, 0, 0, 0x77]));
        assert_eq!(
            probe.poll(Instant::now(), &ProbePlan::default()),
            ProbeStep::Done(ProbeOutcome::Taken { mac: ROGUE })
        );
    }

    #[test]
    fn zero_probes_is_just_the_wait() {
        let plan = ProbePlan {
            probes: 0,
            ..ProbePlan::default()
        };
        let (sends, outcome, at) = drive(&plan, None);
        assert!(sends.is_empty());
        assert_eq!((outcome, at), (ProbeOutcome::Free, 200));
    }

    #[test]
    fn probe_frames() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let v4 = probe_frame("10.250.0.100".parse().unwrap(), mac);
        assert!(
            matches!(wire::parse_frame(&v4), Ok(wire::Frame::Arp { arp, .. }) if arp.is_probe())
        );
        let v6 = probe_frame("fd00:250::100".parse().unwrap(), mac);
        assert!(matches!(
            wire::parse_frame(&v6),
            Ok(wire::Frame::Ndisc { ipv6, .. }) if ipv6.src_addr.is_unspecified()
        ));
    }
}
