//! When two Services may hold one address: the same non-empty `allow-shared-ip` key, the same
//! backends, and no (protocol, port) pair in common.

use std::collections::BTreeMap;
use std::fmt;

/// A transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// One port a Service listens on; two sharing Services must not have one in common.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    pub fn tcp(port: u16) -> Self {
        Port {
            protocol: Protocol::Tcp,
            port,
        }
    }

    pub fn udp(port: u16) -> Self {
        Port {
            protocol: Protocol::Udp,
            port,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Where a Service's traffic goes, as far as sharing an address is concerned: with
/// `externalTrafficPolicy: Local` the announcing node must host the backends, so Services may
/// only share when they select the same pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendKey {
    /// `externalTrafficPolicy: Cluster` (the default): any node may announce.
    #[default]
    Cluster,
    /// `externalTrafficPolicy: Local` with the Service's pod selector.
    Local(BTreeMap<String, String>),
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKey::Cluster => f.write_str("externalTrafficPolicy Cluster"),
            BackendKey::Local(selector) => {
                write!(f, "externalTrafficPolicy Local with selector {{")?;
                for (i, (k, v)) in selector.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{k}={v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// What the allocator remembers of a Service that carries a sharing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sharing {
    pub key: Box<str>,
    pub backend: BackendKey,
    /// Sorted and without duplicates, so overlap is a merge walk.
    pub ports: Box<[Port]>,
}

impl Sharing {
    pub(crate) fn new(key: &str, backend: BackendKey, ports: &[Port]) -> Self {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        Sharing {
            key: key.into(),
            backend,
            ports: ports.into(),
        }
    }
}

/// Why two Services cannot share an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SharingMismatch {
    #[error("this Service has no metallb.io/allow-shared-ip key")]
    NoKey,
    #[error("that Service has no metallb.io/allow-shared-ip key")]
    OtherHasNoKey,
    #[error("their metallb.io/allow-shared-ip keys differ ({ours:?} here, {theirs:?} there)")]
    DifferentKeys { ours: String, theirs: String },
    #[error("their backends differ ({ours} here, {theirs} there)")]
    DifferentBackends { ours: String, theirs: String },
    #[error("both use port {0}")]
    SamePort(Port),
}

/// Whether a Service with `ours` may join an address held by one with `theirs`. Symmetric
/// apart from which side the message blames.
pub(crate) fn compatible(
    ours: Option<&Sharing>,
    theirs: Option<&Sharing>,
) -> Result<(), SharingMismatch> {
    let ours = ours.ok_or(SharingMismatch::NoKey)?;
    let theirs = theirs.ok_or(SharingMismatch::OtherHasNoKey)?;
    if ours.key != theirs.key {
        return Err(SharingMismatch::DifferentKeys {
            ours: ours.key.to_string(),
            theirs: theirs.key.to_string(),
        });
    }
    if ours.backend != theirs.backend {
        return Err(SharingMismatch::DifferentBackends {
            ours: ours.backend.to_string(),
            theirs: theirs.backend.to_string(),
        });
    }
    match first_common(&ours.ports, &theirs.ports) {
        Some(port) => Err(SharingMismatch::SamePort(port)),
        None => Ok(()),
    }
}

/// The lowest port in both sorted lists.
fn first_common(a: &[Port], b: &[Port]) -> Option<Port> {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => {
                a.next();
            }
            std::cmp::Ordering::Greater => {
                b.next();
            }
            std::cmp::Ordering::Equal => return Some(x),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharing(key: &str, ports: &[Port]) -> Sharing {
        Sharing::new(key, BackendKey::Cluster, ports)
    }

    #[test]
    fn tcp_and_udp_on_one_port_coexist() {
        let dns_tcp = sharing("dns", &[Port::tcp(53)]);
        let dns_udp = sharing("dns", &[Port::udp(53)]);
        assert_eq!(compatible(Some(&dns_tcp), Some(&dns_udp)), Ok(()));
    }

    #[test]
    fn every_mismatch_is_named() {
        let web = sharing("k", &[Port::tcp(80), Port::tcp(443)]);
        let clash = sharing("k", &[Port::udp(443), Port::tcp(443)]);
        let other_key = sharing("j", &[Port::tcp(8080)]);
        let local = Sharing::new(
            "k",
            BackendKey::Local([("app".to_string(), "x".to_string())].into()),
            &[Port::tcp(9)],
        );
        let msg = |a: Option<&Sharing>, b: Option<&Sharing>| {
            compatible(a, b).map_err(|e| e.to_string()).unwrap_err()
        };
        assert_eq!(msg(Some(&web), Some(&clash)), "both use port TCP/443");
        assert_eq!(
            msg(Some(&web), Some(&other_key)),
            "their metallb.io/allow-shared-ip keys differ (\"k\" here, \"j\" there)"
        );
        assert_eq!(
            msg(Some(&web), Some(&local)),
            "their backends differ (externalTrafficPolicy Cluster here, externalTrafficPolicy \
             Local with selector {app=x} there)"
        );
        assert_eq!(
            msg(None, Some(&web)),
            "this Service has no metallb.io/allow-shared-ip key"
        );
        assert_eq!(
            msg(Some(&web), None),
            "that Service has no metallb.io/allow-shared-ip key"
        );
    }
}
