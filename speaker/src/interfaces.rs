//! Which network interfaces may announce Service IPs: MetalLB's eligibility rules as a pure
//! function over link values, and a netlink watcher that re-reads the links whenever one changes.

use std::fmt;

use ferrolb_proto::wire::MacAddr;
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tokio::sync::watch;

/// The interface name patterns MetalLB never announces on: container, virtual-bridge, tunnel
/// and CNI plumbing, where a Service IP has no business being answered.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "docker*",
    "cbr*",
    "dummy*",
    "virbr*",
    "lxcbr*",
    "veth*",
    "lo",
    "cali*",
    "tunl*",
    "flannel*",
    "kube-ipvs*",
    "cni*",
    "nodelocaldns*",
    "lxc*",
];

/// One network interface as the kernel describes it, reduced to what eligibility needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// The hardware address; `None` for links without an Ethernet one (tunnels, lo's zeros).
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// The link has a carrier (IFF_LOWER_UP): a cable pulled or a switch port down clears it
    /// while the link stays administratively up.
    pub carrier: bool,
    pub broadcast: bool,
    pub noarp: bool,
    /// The index of the bond, bridge or VRF this link is enslaved to.
    pub master: Option<u32>,
}

/// Interface name patterns to skip: exact names, or a prefix followed by `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludePatterns(Vec<String>);

impl Default for ExcludePatterns {
    fn default() -> Self {
        ExcludePatterns(DEFAULT_EXCLUDE.iter().map(|p| (*p).to_owned()).collect())
    }
}

impl ExcludePatterns {
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ExcludePatterns(patterns.into_iter().map(Into::into).collect())
    }

    /// The first pattern `name` matches.
    pub fn matching(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern.as_str(),
            })
            .map(String::as_str)
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// Why a link may not announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    Down,
    NoCarrier,
    NoBroadcast,
    NoArp,
    /// Member of a bond, bridge or VRF: its master is the interface that talks to the LAN.
    Enslaved {
        master: u32,
    },
    Excluded {
        pattern: String,
    },
    NoMac,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::Down => f.write_str("link is down"),
            Ineligible::NoCarrier => f.write_str("link has no carrier (cable or switch port down)"),
            Ineligible::NoBroadcast => f.write_str("link is not broadcast-capable"),
            Ineligible::NoArp => f.write_str("link has NOARP set"),
            Ineligible::Enslaved { master } => {
                write!(f, "link is enslaved to interface index {master}")
            }
            Ineligible::Excluded { pattern } => {
                write!(f, "name matches the exclude pattern {pattern:?}")
            }
            Ineligible::NoMac => f.write_str("link has no Ethernet address"),
        }
    }
}

/// Whether `link` may announce, and if not, why.
pub fn check(link: &Link, exclude: &ExcludePatterns) -> Result<(), Ineligible> {
    if let Some(pattern) = exclude.matching(&link.name) {
        return Err(Ineligible::Excluded {
            pattern: pattern.to_owned(),
        });
    }
    if !link.up {
        return Err(Ineligible::Down);
    }
    if !link.carrier {
        return Err(Ineligible::NoCarrier);
    }
    if !link.broadcast {
        return Err(Ineligible::NoBroadcast);
    }
    if link.noarp {
        return Err(Ineligible::NoArp);
    }
    if let Some(master) = link.master {
        return Err(Ineligible::Enslaved { master });
    }
    if !link.mac.is_some_and(|mac| mac.is_unicast()) {
        return Err(Ineligible::NoMac);
    }
    Ok(())
}

/// The links that may announce, in the order given.
pub fn eligible<'a>(links: &'a [Link], exclude: &ExcludePatterns) -> Vec<&'a Link> {
    links
        .iter()
        .filter(|link| check(link, exclude).is_ok())
        .collect()
}

/// The eligible links an advertisement selects: all of them when `wanted` is empty (MetalLB's
/// `interfaces` unset), otherwise those named in it.
pub fn select<'a>(eligible: &[&'a Link], wanted: &[String]) -> Vec<&'a Link> {
    eligible
        .iter()
        .copied()
        .filter(|link| wanted.is_empty() || wanted.contains(&link.name))
        .collect()
}

/// Why the link list could not be read or watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("opening a netlink route socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("subscribing to netlink link events (RTNLGRP_LINK): {0}")]
    Subscribe(#[source] std::io::Error),
    #[error("listing links over netlink: {0}")]
    Dump(#[source] rtnetlink::Error),
}

/// A [`Link`] from a netlink link message; `None` without a name.
pub fn from_message(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mac = None;
    let mut master = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => mac = MacAddr::from_bytes(bytes),
            LinkAttribute::Controller(index) => master = Some(*index),
            _ => {}
        }
    }
    let flags = message.header.flags;
    Some(Link {
        name: name?,
        index: message.header.index,
        mac,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        broadcast: flags.contains(LinkFlags::Broadcast),
        noarp: flags.contains(LinkFlags::Noarp),
        master,
    })
}

/// Lists the links of the current network namespace.
pub async fn list(handle: &rtnetlink::Handle) -> Result<Vec<Link>, WatchError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(WatchError::Dump)?;
    let mut links: Vec<Link> = messages.iter().filter_map(from_message).collect();
    links.sort_by_key(|link| link.index);
    Ok(links)
}

/// The name of the link holding `ip` as one of its addresses, if any: the link the membership
/// runs over when `ip` is the node's membership address.
pub async fn holding(ip: std::net::IpAddr) -> Result<Option<String>, WatchError> {
    use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

    let (connection, handle, _) = rtnetlink::new_connection().map_err(WatchError::Open)?;
    let connection = tokio::spawn(connection);
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(WatchError::Dump)?;
    let index = addresses
        .iter()
        .find(|message| {
            message.attributes.iter().any(|attribute| {
                matches!(attribute, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == ip)
            })
        })
        .map(|message| message.header.index);
    let links = list(&handle).await?;
    connection.abort();
    Ok(index.and_then(|index| {
        links
            .into_iter()
            .find(|link| link.index == index)
            .map(|link| link.name)
    }))
}

/// Watches the links: the receiver holds the current list, replaced after every netlink link
/// event (RTNLGRP_LINK), so interfaces that come, go, or change flags are noticed at once.
///
/// Must be called inside a Tokio runtime; the task ends when every receiver is dropped.
pub async fn watch() -> Result<watch::Receiver<Vec<Link>>, WatchError> {
    use rtnetlink::sys::{AsyncSocket, SocketAddr};

    let (mut connection, handle, mut events) =
        rtnetlink::new_connection().map_err(WatchError::Open)?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .map_err(WatchError::Subscribe)?;
    tokio::spawn(connection);
    // Subscribed before the first dump: a change racing with it triggers another dump.
    let (tx, rx) = watch::channel(list(&handle).await?);
    tokio::spawn(async move {
        while events.next().await.is_some() {
            // One dump for a burst of events (a link going up sends several).
            while let Ok(Some(_)) =
                tokio::time::timeout(std::time::Duration::from_millis(5), events.next()).await
            {
            }
            match list(&handle).await {
                Ok(links) => {
                    tx.send_if_modified(|current| {
                        let changed = *current != links;
                        *current = links;
                        changed
                    });
                }
                Err(error) => tracing::warn!(%error, "re-reading links after a netlink event"),
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str) -> Link {
        Link {
            name: name.to_owned(),
            index: 2,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            up: true,
            carrier: true,
            broadcast: true,
            noarp: false,
            master: None,
        }
    }

    #[test]
    fn an_ordinary_nic_is_eligible() {
        let exclude = ExcludePatterns::default();
        for name in ["eth0", "enp3s0", "bond0", "br0", "eth0.100", "wlan0"] {
            assert_eq!(check(&link(name), &exclude), Ok(()), "{name}");
        }
    }

    #[test]
    fn default_patterns_exclude_plumbing() {
        let exclude = ExcludePatterns::default();
        for (name, pattern) in [
            ("docker0", "docker*"),
            ("veth1234", "veth*"),
            ("lo", "lo"),
            ("cali12ab", "cali*"),
            ("flannel.1", "flannel*"),
            ("kube-ipvs0", "kube-ipvs*"),
            ("cni0", "cni*"),
            ("nodelocaldns", "nodelocaldns*"),
            ("lxc00aa", "lxc*"),
            ("lxcbr0", "lxcbr*"),
            ("dummy0", "dummy*"),
            ("tunl0", "tunl*"),
            ("virbr0", "virbr*"),
            ("cbr0", "cbr*"),
        ] {
            assert_eq!(
                check(&link(name), &exclude),
                Err(Ineligible::Excluded {
                    pattern: pattern.to_owned()
                }),
                "{name}"
            );
        }
        // `lo` is an exact name, not a prefix.
        assert_eq!(check(&link("lowpan0"), &exclude), Ok(()));
    }

    #[test]
    fn custom_patterns_replace_the_defaults() {
        let exclude = ExcludePatterns::new(["eth1", "ens*"]);
        assert!(check(&link("eth1"), &exclude).is_err());
        assert!(check(&link("ens18"), &exclude).is_err());
        assert_eq!(check(&link("eth0"), &exclude), Ok(()));
        assert_eq!(check(&link("docker0"), &exclude), Ok(()));
    }

    #[test]
    fn flags_and_masters() {
        let exclude = ExcludePatterns::default();
        let down = Link {
            up: false,
            ..link("eth0")
        };
        assert_eq!(check(&down, &exclude), Err(Ineligible::Down));
        let unplugged = Link {
            carrier: false,
            ..link("eth0")
        };
        assert_eq!(check(&unplugged, &exclude), Err(Ineligible::NoCarrier));
        let p2p = Link {
            broadcast: false,
            ..link("wg0")
        };
        assert_eq!(check(&p2p, &exclude), Err(Ineligible::NoBroadcast));
        let noarp = Link {
            noarp: true,
            ..link("eth0")
        };
        assert_eq!(check(&noarp, &exclude), Err(Ineligible::NoArp));
        let port = Link {
            master: Some(7),
            ..link("eth0")
        };
        assert_eq!(
            check(&port, &exclude),
            Err(Ineligible::Enslaved { master: 7 })
        );
        let no_mac = Link {
            mac: None,
            ..link("eth0")
        };
        assert_eq!(check(&no_mac, &exclude), Err(Ineligible::NoMac));
        let zero_mac = Link {
            mac: Some(MacAddr::UNSPECIFIED),
            ..link("eth0")
        };
        assert_eq!(check(&zero_mac, &exclude), Err(Ineligible::NoMac));
    }

    #[test]
    fn advertisement_narrows_the_eligible_links() {
        let links = vec![
            link("eth0"),
            Link {
                index: 3,
                ..link("eth1")
            },
            link("docker0"),
            Link {
                master: Some(9),
                ..link("eth2")
            },
        ];
        let exclude = ExcludePatterns::default();
        let ok = eligible(&links, &exclude);
        let names = |links: &[&Link]| links.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ok), ["eth0", "eth1"]);
        assert_eq!(names(&select(&ok, &[])), ["eth0", "eth1"]);
        assert_eq!(names(&select(&ok, &["eth1".to_owned()])), ["eth1"]);
        // Asking for an ineligible or missing interface selects nothing (announceFailed).
        assert!(select(&ok, &["eth2".to_owned(), "eth9".to_owned()]).is_empty());
    }
}
