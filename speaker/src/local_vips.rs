//! The hand-off to listeners on the owner node itself, for hosts without kube-proxy: while this
//! node owns Service IPs, it holds them on a dedicated dummy interface, so the kernel delivers
//! their traffic to local sockets (an nginx bound to 0.0.0.0:80, say).
//!
//! The kernel must never answer ARP for them: only the speaker does, and only while it owns
//! them. `arp_ignore=1` makes the kernel answer only for addresses of the receiving interface
//! (never the dummy), `arp_announce=2` keeps the VIPs out of its own ARP requests; both are the
//! maximum of `all` and the interface, so they are raised on both. IPv6 needs nothing: the
//! kernel answers neighbour solicitations only for addresses on the receiving interface, and
//! the VIPs are added without DAD.
//!
//! The interface belongs to the speaker, marked by its alias: it is created at start (a
//! leftover of a crashed speaker, with the VIPs it held, is deleted first) and deleted at exit.
//! A kernel without the dummy driver gets a bridge without ports instead.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};
use tokio::sync::watch;

/// The alias that marks the interface as the speaker's own.
pub const ALIAS: &str = "ferrolb: local Service IPs";

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_NAME: usize = 15;

/// The addresses to add and to remove to go from `held` to `wanted`.
pub fn plan(held: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
    (
        wanted.difference(held).copied().collect(),
        held.difference(wanted).copied().collect(),
    )
}

/// Checks a name for the dummy interface the way the kernel would, with a precise message.
pub fn check_name(name: &str) -> Result<(), LocalVipError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is reserved")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(LocalVipError::Name {
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalVipError {
    #[error("local VIP interface name {name:?} {problem}")]
    Name { name: String, problem: &'static str },
    #[error("opening a netlink route socket: {0}")]
    Netlink(#[source] std::io::Error),
    #[error(
        "interface {name} exists and FerroLB did not create it (its alias is not {ALIAS:?}): \
         choose another --local-vip-interface (the speaker creates and deletes it itself)"
    )]
    NotOurs { name: String },
    #[error("interface {name} vanished right after it was created")]
    Vanished { name: String },
    #[error("{action} interface {name}: {source}")]
    Link {
        action: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("setting {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The dummy interface and the VIPs on it.
#[derive(Debug)]
pub struct LocalVips {
    handle: Handle,
    name: String,
    index: u32,
    held: BTreeSet<IpAddr>,
}

impl LocalVips {
    /// Creates the interface `name` (after deleting one a previous speaker left), brings it up,
    /// and suppresses the kernel's ARP answers for it. Refuses to touch an existing interface
    /// FerroLB did not create.
    pub async fn create(name: &str) -> Result<LocalVips, LocalVipError> {
        check_name(name)?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(LocalVipError::Netlink)?;
        tokio::spawn(connection);
        let link_error = |action| {
            move |source| LocalVipError::Link {
                action,
                name: name.to_owned(),
                source,
            }
        };
        if let Some(leftover) = find(&handle, name)
            .await
            .map_err(link_error("looking up"))?
        {
            if alias(&leftover) != Some(ALIAS) {
                return Err(LocalVipError::NotOurs {
                    name: name.to_owned(),
                });
            }
            tracing::info!(iface = %name, "deleting the local VIP interface a previous speaker left");
            handle
                .link()
                .del(leftover.header.index)
                .execute()
                .await
                .map_err(link_error("deleting the leftover"))?;
        }
        match handle
            .link()
            .add(LinkDummy::new(name).up().build())
            .execute()
            .await
        {
            Ok(()) => {}
            // Some minimal kernels (microVMs) are built without the dummy driver. A bridge
            // without ports is as inert: nothing enters or leaves it, its addresses are local.
            Err(rtnetlink::Error::NetlinkError(message))
                if message.raw_code() == -libc::EOPNOTSUPP =>
            {
                tracing::warn!(iface = %name, "this kernel has no dummy interfaces (CONFIG_DUMMY): using a bridge without ports instead");
                handle
                    .link()
                    .add(LinkBridge::new(name).up().build())
                    .execute()
                    .await
                    .map_err(link_error("creating the port-less bridge"))?;
            }
            Err(error) => return Err(link_error("creating the dummy")(error)),
        }
        let index = find(&handle, name)
            .await
            .map_err(link_error("looking up the new"))?
            .map(|link| link.header.index)
            .ok_or_else(|| LocalVipError::Vanished {
                name: name.to_owned(),
            })?;
        // The mark that makes the next start delete it, and an operator see whose it is.
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(ALIAS).build())
            .execute()
            .await
            .map_err(link_error("naming (alias) the new"))?;
        for scope in ["all", name] {
            raise_sysctl(scope, "arp_ignore", 1)?;
            raise_sysctl(scope, "arp_announce", 2)?;
        }
        tracing::info!(iface = %name, "holding owned Service IPs on this interface for local listeners (ARP suppressed)");
        Ok(LocalVips {
            handle,
            name: name.to_owned(),
            index,
            held: BTreeSet::new(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VIPs held now.
    pub fn held(&self) -> &BTreeSet<IpAddr> {
        &self.held
    }

    /// Holds exactly `wanted`: removes the others first (a lost IP stops being local at once),
    /// then adds the new ones. A failure is logged and that IP retried at the next call.
    pub async fn hold(&mut self, wanted: &BTreeSet<IpAddr>) {
        let (add, remove) = plan(&self.held, wanted);
        for ip in remove {
            match self.remove(ip).await {
                Ok(()) => {
                    self.held.remove(&ip);
                    tracing::info!(%ip, iface = %self.name, "no longer owned: removed from the local VIP interface");
                }
                Err(error) => {
                    tracing::warn!(%ip, iface = %self.name, %error, "cannot remove a VIP no longer owned")
                }
            }
        }
        for ip in add {
            match self.add(ip).await {
                Ok(()) => {
                    self.held.insert(ip);
                    tracing::info!(%ip, iface = %self.name, "owned: held on the local VIP interface");
                }
                Err(error) => {
                    tracing::warn!(%ip, iface = %self.name, %error, "cannot hold an owned VIP locally")
                }
            }
        }
    }

    async fn add(&self, ip: IpAddr) -> Result<(), rtnetlink::Error> {
        let mut request = self.handle.address().add(self.index, ip, full_prefix(ip));
        // No route for a prefix (the /32 or /128 gets its local route anyway) and no DAD: the
        // speaker has already claimed the IP on the LAN.
        let mut flags = AddressFlags::Noprefixroute;
        if ip.is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(flags));
        request.replace().execute().await
    }

    async fn remove(&self, ip: IpAddr) -> Result<(), rtnetlink::Error> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(ip)
            .execute()
            .try_collect()
            .await?;
        for address in addresses {
            self.handle.address().del(address).execute().await?;
        }
        Ok(())
    }

    /// Deletes the interface, and with it every VIP on it.
    pub async fn delete(self) -> Result<(), LocalVipError> {
        self.handle
            .link()
            .del(self.index)
            .execute()
            .await
            .map_err(|source| LocalVipError::Link {
                action: "deleting",
                name: self.name.clone(),
                source,
            })?;
        tracing::info!(iface = %self.name, "deleted the local VIP interface");
        Ok(())
    }
}

/// Keeps `vips` holding the IPs `owned` names until its sender goes (the announcer stopped
/// answering), then deletes the interface.
pub async fn follow(mut vips: LocalVips, mut owned: watch::Receiver<BTreeSet<IpAddr>>) {
    loop {
        let wanted = owned.borrow_and_update().clone();
        vips.hold(&wanted).await;
        if owned.changed().await.is_err() {
            break;
        }
    }
    let name = vips.name().to_owned();
    if let Err(error) = vips.delete().await {
        tracing::warn!(iface = %name, %error, "cannot delete the local VIP interface; the next start deletes it");
    }
}

fn full_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        // The kernel answers a lookup of a missing name with ENODEV.
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
            _ => None,
        })
}

/// Sets `net.ipv4.conf.<scope>.<key>` to `value` unless it is already higher (an operator's
/// stricter setting stays).
fn raise_sysctl(scope: &str, key: &str, value: u32) -> Result<(), LocalVipError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{scope}/{key}"));
    let error = |source| LocalVipError::Sysctl {
        path: path.clone(),
        source,
    };
    let current: u32 = std::fs::read_to_string(&path)
        .map_err(error)?
        .trim()
        .parse()
        .unwrap_or(0);
    if current < value {
        std::fs::write(&path, value.to_string()).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn plan_adds_the_new_and_removes_the_lost() {
        let (add, remove) = plan(
            &set(&["10.0.0.1", "10.0.0.2", "fd00::1"]),
            &set(&["10.0.0.2", "10.0.0.3", "fd00::2"]),
        );
        assert_eq!(add, Vec::from_iter(set(&["10.0.0.3", "fd00::2"])));
        assert_eq!(remove, Vec::from_iter(set(&["10.0.0.1", "fd00::1"])));
        assert_eq!(
            plan(&set(&["10.0.0.1"]), &set(&["10.0.0.1"])),
            (vec![], vec![])
        );
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused_with_the_reason() {
        for (name, problem) in [
            ("", "is empty"),
            ("ferrolb-local-vips", "is longer than 15 bytes"),
            ("..", "is reserved"),
            ("vip/0", "contains '/', ':' or whitespace"),
            ("vip:0", "contains '/', ':' or whitespace"),
            ("vip 0", "contains '/', ':' or whitespace"),
        ] {
            let error = check_name(name).unwrap_err().to_string();
            assert_eq!(
                error,
                format!("local VIP interface name {name:?} {problem}")
            );
        }
        check_name("ferrolb0").unwrap();
    }
}
