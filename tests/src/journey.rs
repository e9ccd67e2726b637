//! The user's journey as a stage: a lab with an ingress proxy, FerroLB installed standalone, the
//! kube-proxy stand-in on every node, and the client's view of it all (who answers ARP for an
//! IP, what `curl` gets, how long a takeover takes). Shared by the scenario suite and the demo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime};

use ferrolb_proto::wire::{self, ArpOperation, Frame, MacAddr};

use crate::error::{LabError, Result};
use crate::ingress::IngressProxy;
use crate::install::Install;
use crate::kubeproxy::{self, Forward};
use crate::lab::{Host, Lab, LabBuilder};
use crate::pcap::CapturedFrame;
use crate::tools;

/// The port every Service of the journey serves.
pub const PORT: u16 = 80;

/// The stage. Fields drop in order: FerroLB and nginx stop before the lab goes.
#[derive(Debug)]
pub struct Journey {
    pub install: Install,
    pub ingress: IngressProxy,
    forwards: Vec<Forward>,
    pub lab: Lab,
}

/// A takeover as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    /// From the failure (timestamp taken by the injecting code just before it acted) to the
    /// first ARP reply carrying a different MAC, from capture timestamps.
    pub elapsed: Duration,
    /// The MAC that answers now.
    pub mac: MacAddr,
    /// Replies from any other MAC than the old owner's captured before the failure: two
    /// owners at once, which makes `elapsed` meaningless.
    pub others_before: usize,
}

impl Journey {
    /// Builds the lab (with its ingress namespace), starts nginx there, and prepares the state
    /// directory with the lab's Nodes. Nothing of FerroLB runs yet.
    pub fn new(builder: LabBuilder) -> Result<Journey> {
        Journey::with(builder, Install::new)
    }

    /// [`new`](Self::new) with the install `prepare` makes of the lab
    /// ([`Install::without_binaries`] for FerroLB in containers).
    pub fn with(
        builder: LabBuilder,
        prepare: impl FnOnce(&Lab) -> Result<Install>,
    ) -> Result<Journey> {
        let lab = builder.ingress().build()?;
        let ingress_host = lab
            .ingress()
            .ok_or_else(|| LabError::Spec("the lab has no ingress".to_owned()))?;
        let ingress = IngressProxy::start(ingress_host, &lab.dir().join("ingress"))?;
        let install = prepare(&lab)?;
        Ok(Journey {
            install,
            ingress,
            forwards: Vec::new(),
            lab,
        })
    }

    /// The client.
    pub fn client(&self) -> &Host {
        self.lab.client()
    }

    /// The ingress proxy's host.
    pub fn ingress_host(&self) -> Result<&Host> {
        self.lab
            .ingress()
            .ok_or_else(|| LabError::Spec("the lab has no ingress".to_owned()))
    }

    /// Plays kube-proxy for a Service that got `ip`: every node forwards `ip:80` to the ingress
    /// proxy (of the same family), masqueraded.
    pub fn expose(&mut self, ip: IpAddr) -> Result<()> {
        let ingress = self.ingress_host()?;
        let backend = match ip {
            IpAddr::V4(_) => IpAddr::V4(ingress.ipv4()),
            IpAddr::V6(_) => IpAddr::V6(ingress.ipv6()),
        };
        let forward = Forward::new(ip, PORT, backend);
        if !self.forwards.contains(&forward) {
            self.forwards.push(forward);
        }
        kubeproxy::program_all(self.lab.nodes(), &self.forwards)
    }

    /// The node whose MAC is `mac` (on either segment).
    pub fn node_by_mac(&self, mac: MacAddr) -> Option<&Host> {
        self.install.node_by_mac(mac)
    }

    /// Waits until exactly one MAC answers ARP for `ip` on the client's `iface`, and returns
    /// the node it belongs to.
    pub fn arp_owner(&self, iface: &str, ip: Ipv4Addr, timeout: Duration) -> Result<&Host> {
        let macs = tools::arping_until(self.client().ns(), iface, ip, timeout, |macs| {
            !macs.is_empty()
        })?;
        self.single_node(&format!("arping {ip}"), &macs)
    }

    /// Repeats single arpings until the answering MAC satisfies `done`; returns it.
    pub fn arp_until(
        &self,
        iface: &str,
        ip: Ipv4Addr,
        timeout: Duration,
        mut done: impl FnMut(MacAddr) -> bool,
    ) -> Result<MacAddr> {
        let macs = tools::arping_until(self.client().ns(), iface, ip, timeout, |macs| {
            macs.len() == 1 && macs.iter().all(|m| done(*m))
        })?;
        macs.first()
            .copied()
            .ok_or_else(|| LabError::Spec("no answer".to_owned()))
    }

    /// Asks `count` times, 20 ms apart; every answer must come from one node, which is returned.
    pub fn arp_answers(&self, iface: &str, ip: Ipv4Addr, count: u32) -> Result<Vec<MacAddr>> {
        tools::arping(
            self.client().ns(),
            iface,
            ip,
            count,
            Duration::from_millis(20),
        )
    }

    fn single_node(&self, what: &str, macs: &[MacAddr]) -> Result<&Host> {
        let bad = |reason: String| LabError::Output {
            command: what.to_owned(),
            namespace: self.client().namespace().to_owned(),
            reason,
        };
        let first = macs
            .first()
            .ok_or_else(|| bad("nobody answered".to_owned()))?;
        if macs.iter().any(|m| m != first) {
            return Err(bad(format!("more than one MAC answered: {macs:?}")));
        }
        self.node_by_mac(*first)
            .ok_or_else(|| bad(format!("{first} is not a lab node's MAC")))
    }

    /// Waits until a neighbour solicitation for `ip` is answered; returns the node.
    pub fn ndp_owner(&self, iface: &str, ip: Ipv6Addr, timeout: Duration) -> Result<&Host> {
        let mac = tools::ndisc6_until(self.client().ns(), iface, ip, timeout)?;
        self.single_node(&format!("ndisc6 {ip}"), &[mac])
    }

    /// One `curl http://ip/` from the client (1 s limit): the page, or `None` on failure.
    pub fn curl(&self, ip: IpAddr) -> Result<Option<String>> {
        let url = match ip {
            IpAddr::V4(v4) => format!("http://{v4}:{PORT}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{PORT}/"),
        };
        let out = self.client().ns().exec_within(
            ["curl", "-s", "-S", "-m", "1", "--no-keepalive", &url],
            Duration::from_secs(5),
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }

    /// Repeats [`curl`](Self::curl) until a page comes back, or fails after `timeout`.
    pub fn curl_until(&self, ip: IpAddr, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(page) = self.curl(ip)? {
                return Ok(page);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: format!("curl http://{ip}/"),
                    namespace: self.client().namespace().to_owned(),
                    reason: format!("no page within {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lab address a page says the request came through (kube-proxy's masquerade makes
    /// it the node that forwarded it), mapped to that node.
    pub fn came_through(&self, page: &str) -> Option<&Host> {
        let addr: IpAddr = page.rsplit("came through ").next()?.trim().parse().ok()?;
        self.lab
            .nodes()
            .iter()
            .find(|n| IpAddr::V4(n.ipv4()) == addr || IpAddr::V6(n.ipv6()) == addr)
    }

    /// The addresses on `node`'s interface `iface` (for the local-listener hand-off: the VIPs
    /// its speaker holds on the dummy interface); empty when the interface does not exist.
    pub fn local_vips(&self, node: &Host, iface: &str) -> Result<Vec<IpAddr>> {
        let out = node.ns().exec(["ip", "-j", "addr", "show", "dev", iface])?;
        if !out.status.success() {
            return Ok(Vec::new());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| LabError::Output {
                command: format!("ip -j addr show dev {iface}"),
                namespace: node.namespace().to_owned(),
                reason: format!("not JSON: {e}"),
            })?;
        Ok(json
            .pointer("/0/addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
            .collect())
    }

    /// Measures a takeover of `ip` from `old`: the client arpings every 10 ms on `iface` under
    /// a capture, `fail` injects the failure (its start is the time origin), and the first ARP
    /// reply for `ip` with another MAC ends it. Fails if none comes within `timeout`.
    pub fn measure_takeover(
        &mut self,
        iface: &str,
        ip: Ipv4Addr,
        old: MacAddr,
        timeout: Duration,
        fail: impl FnOnce(&mut Install) -> Result<()>,
    ) -> Result<Takeover> {
        let client = self.lab.client().ns().clone();
        let capture = client.capture(iface, "arp")?;
        let prober =
            tools::arping_every_10ms(&client, iface, ip, timeout + Duration::from_secs(5))?;
        // Let a few answers from the old owner through first: the measurement then starts
        // from a client that demonstrably had an answer.
        capture.wait_for("an ARP reply before the failure", timeout, |frames| {
            replies(frames, ip).iter().any(|(_, mac)| *mac == old)
        })?;
        let failed_at = SystemTime::now();
        fail(&mut self.install)?;
        let frames = capture.wait_for("an ARP reply from a new owner", timeout, |frames| {
            replies(frames, ip)
                .iter()
                .any(|(ts, mac)| *ts >= failed_at && *mac != old)
        });
        let _ = prober.kill();
        let frames = match frames {
            Ok(frames) => frames,
            Err(err) => {
                let _ = capture.stop();
                return Err(err);
            }
        };
        let _ = capture.stop();
        let (ts, mac) = replies(&frames, ip)
            .into_iter()
            .find(|(ts, mac)| *ts >= failed_at && *mac != old)
            .ok_or_else(|| LabError::Spec("the awaited reply vanished".to_owned()))?;
        let others_before = replies(&frames, ip)
            .iter()
            .filter(|(ts, m)| *ts < failed_at && *m != old)
            .count();
        Ok(Takeover {
            elapsed: ts.duration_since(failed_at).unwrap_or_default(),
            mac,
            others_before,
        })
    }
}

/// ARP replies (not gratuitous) giving `ip`'s MAC, with capture timestamps.
pub fn replies(frames: &[CapturedFrame], ip: Ipv4Addr) -> Vec<(SystemTime, MacAddr)> {
    frames
        .iter()
        .filter_map(|f| match wire::parse_frame(&f.data) {
            Ok(Frame::Arp { arp, .. })
                if arp.operation == ArpOperation::Reply
                    && arp.source_protocol_addr == ip
                    && !arp.is_gratuitous() =>
            {
                Some((f.ts, arp.source_hardware_addr))
            }
            _ => None,
        })
        .collect()
}
