//! The Service annotations FerroLB honours and writes, in MetalLB's spelling, with the deprecated
//! `metallb.universe.tf/` forms still read.

use std::collections::BTreeMap;

/// Where an allocation came from; written by the controller on every Service it serves.
pub const IP_ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";

/// Node label that keeps a node out of every election, as for cloud load balancers.
pub const EXCLUDE_FROM_LOAD_BALANCERS_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

const STABLE_PREFIX: &str = "metallb.io/";
const DEPRECATED_PREFIX: &str = "metallb.universe.tf/";

/// An annotation a user puts on a Service to steer allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceAnnotation {
    /// `loadBalancerIPs`: comma-separated addresses to assign, at most one per family.
    LoadBalancerIps,
    /// `address-pool`: the pool to allocate from, even when its autoAssign is off.
    AddressPool,
    /// `allow-shared-ip`: Services with the same key may share an address.
    AllowSharedIp,
}

impl ServiceAnnotation {
    pub const ALL: [ServiceAnnotation; 3] = [
        ServiceAnnotation::LoadBalancerIps,
        ServiceAnnotation::AddressPool,
        ServiceAnnotation::AllowSharedIp,
    ];

    fn suffix(self) -> &'static str {
        match self {
            ServiceAnnotation::LoadBalancerIps => "loadBalancerIPs",
            ServiceAnnotation::AddressPool => "address-pool",
            ServiceAnnotation::AllowSharedIp => "allow-shared-ip",
        }
    }

    /// The current key, e.g. `metallb.io/address-pool`.
    pub fn key(self) -> String {
        format!("{STABLE_PREFIX}{}", self.suffix())
    }

    /// The deprecated key, e.g. `metallb.universe.tf/address-pool`.
    pub fn deprecated_key(self) -> String {
        format!("{DEPRECATED_PREFIX}{}", self.suffix())
    }

    /// Reads the annotation, preferring the current key. A value set only under the deprecated
    /// key is returned with `deprecated` set, so the caller can warn the user.
    pub fn lookup(self, annotations: &BTreeMap<String, String>) -> Option<AnnotationValue<'_>> {
        if let Some(value) = annotations.get(&self.key()) {
            return Some(AnnotationValue {
                value,
                key_used: self.key(),
                deprecated: false,
            });
        }
        annotations
            .get(&self.deprecated_key())
            .map(|value| AnnotationValue {
                value,
                key_used: self.deprecated_key(),
                deprecated: true,
            })
    }
}

/// An annotation's value and the key it was found under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationValue<'a> {
    pub value: &'a str,
    pub key_used: String,
    pub deprecated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_metallbs() {
        assert_eq!(
            ServiceAnnotation::LoadBalancerIps.key(),
            "metallb.io/loadBalancerIPs"
        );
        assert_eq!(
            ServiceAnnotation::AddressPool.key(),
            "metallb.io/address-pool"
        );
        assert_eq!(
            ServiceAnnotation::AllowSharedIp.key(),
            "metallb.io/allow-shared-ip"
        );
        assert_eq!(
            ServiceAnnotation::AllowSharedIp.deprecated_key(),
            "metallb.universe.tf/allow-shared-ip"
        );
    }

    #[test]
    fn stable_key_wins_and_deprecated_is_flagged() {
        let both = annotations(&[
            ("metallb.io/address-pool", "new"),
            ("metallb.universe.tf/address-pool", "old"),
        ]);
        let found = ServiceAnnotation::AddressPool.lookup(&both).unwrap();
        assert_eq!((found.value, found.deprecated), ("new", false));

        let old = annotations(&[("metallb.universe.tf/address-pool", "old")]);
        let found = ServiceAnnotation::AddressPool.lookup(&old).unwrap();
        assert_eq!((found.value, found.deprecated), ("old", true));
        assert_eq!(found.key_used, "metallb.universe.tf/address-pool");

        assert!(ServiceAnnotation::AllowSharedIp.lookup(&old).is_none());
    }
}
