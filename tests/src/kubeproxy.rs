//! The lab's stand-in for kube-proxy: on a node, traffic for a Service's external IP and port is
//! DNATed to the ingress backend and masqueraded, as kube-proxy does for `externalTrafficPolicy:
//! Cluster` in a real cluster. This is test harness, not product: FerroLB only brings the packets
//! to the node.
//!
//! One nftables table per node (`inet ferrolb_kubeproxy`), replaced atomically each time it is
//! programmed. The node also forwards (`ip_forward=1`, IPv6 `forwarding=1`) and sends no ICMP
//! redirects (`send_redirects=0`): the client and the backend share the LAN, and a redirect would
//! teach the client to bypass the node.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::error::{LabError, Result};
use crate::lab::Host;

/// The nftables table the stand-in owns on each node.
pub const TABLE: &str = "ferrolb_kubeproxy";

/// One forwarding rule: `vip:port` arriving at the node goes to `backend:backend_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub vip: IpAddr,
    pub port: u16,
    pub backend: IpAddr,
    pub backend_port: u16,
}

impl Forward {
    /// `vip:port` to `backend` on the same port.
    pub fn new(vip: IpAddr, port: u16, backend: IpAddr) -> Self {
        Forward {
            vip,
            port,
            backend,
            backend_port: port,
        }
    }
}

/// The nftables script that (re)creates the table with `forwards` (pure, for tests).
///
/// The script first creates the table (a no-op if it exists), deletes it, then defines it anew,
/// so `nft -f` replaces it in one transaction whether or not it existed.
pub fn ruleset(forwards: &[Forward]) -> Result<String> {
    let mut pre = String::new();
    let mut post = String::new();
    for f in forwards {
        let (family, target) = match (f.vip, f.backend) {
            (IpAddr::V4(_), IpAddr::V4(b)) => ("ip", format!("{b}:{}", f.backend_port)),
            (IpAddr::V6(_), IpAddr::V6(b)) => ("ip6", format!("[{b}]:{}", f.backend_port)),
            _ => {
                return Err(LabError::Spec(format!(
                    "kube-proxy rule {}:{} -> {}: the Service IP and the backend must be of one family",
                    f.vip, f.port, f.backend
                )));
            }
        };
        let _ = writeln!(
            pre,
            "    {family} daddr {} tcp dport {} dnat {family} to {target}",
            f.vip, f.port
        );
        let masquerade = format!(
            "    {family} daddr {} tcp dport {} masquerade\n",
            f.backend, f.backend_port
        );
        if !post.contains(&masquerade) {
            post.push_str(&masquerade);
        }
    }
    Ok(format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  \
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n}}\n"
    ))
}

/// Makes `node` forward `forwards` as kube-proxy would: sysctls, then the table, replaced whole.
/// Programming the same node again replaces its rules.
pub fn program(node: &Host, forwards: &[Forward]) -> Result<()> {
    let ns = node.ns();
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
    ns.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
    for iface in [Some(node.eth0()), node.eth1()].into_iter().flatten() {
        ns.sysctl(&format!("net.ipv4.conf.{}.send_redirects", iface.name), "0")?;
    }
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let script = ruleset(forwards)?;
    let file = tempfile::Builder::new()
        .prefix("ferrolb-kubeproxy-")
        .suffix(".nft")
        .tempfile()
        .map_err(|source| LabError::Io {
            context: "creating the nftables script".to_owned(),
            source,
        })?;
    std::fs::write(file.path(), script).map_err(|source| LabError::Io {
        context: format!("writing {}", file.path().display()),
        source,
    })?;
    ns.run(["nft", "-f", &file.path().to_string_lossy()])?;
    Ok(())
}

/// [`program`] on every node of `nodes`.
pub fn program_all(nodes: &[Host], forwards: &[Forward]) -> Result<()> {
    nodes.iter().try_for_each(|node| program(node, forwards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_dnats_and_masquerades_each_family() {
        let v4 = Forward::new(
            "10.250.0.100".parse().unwrap_or(IpAddr::from([0; 4])),
            80,
            "10.250.0.50".parse().unwrap_or(IpAddr::from([0; 4])),
        );
        let v6 = Forward::new(
            "fd00:250::100".parse().unwrap_or(IpAddr::from([0; 16])),
            80,
            "fd00:250::50".parse().unwrap_or(IpAddr::from([0; 16])),
        );
        let https = Forward {
            port: 443,
            backend_port: 443,
            ..v4
        };
        let script = ruleset(&[v4, v6, https]).unwrap_or_default();
        assert!(script.starts_with("table inet ferrolb_kubeproxy\ndelete table"));
        assert!(script.contains("ip daddr 10.250.0.100 tcp dport 80 dnat ip to 10.250.0.50:80"));
        assert!(script.contains("ip daddr 10.250.0.100 tcp dport 443 dnat ip to 10.250.0.50:443"));
        assert!(
            script.contains("ip6 daddr fd00:250::100 tcp dport 80 dnat ip6 to [fd00:250::50]:80")
        );
        assert_eq!(
            script
                .matches("ip daddr 10.250.0.50 tcp dport 80 masquerade")
                .count(),
            1
        );
        assert!(script.contains("ip6 daddr fd00:250::50 tcp dport 80 masquerade"));
    }

    #[test]
    fn mixed_families_are_refused() {
        let mixed = Forward::new(
            IpAddr::from([10, 250, 0, 100]),
            80,
            IpAddr::from([0xfd, 0, 2, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50]),
        );
        assert!(ruleset(&[mixed]).is_err());
    }
}
