//! `ServiceL2Status` (metallb.io/v1beta1): which node announces a Service, written by that node's
//! speaker.
// Each kube `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label naming the announcing node on a ServiceL2Status.
pub const NODE_LABEL: &str = "metallb.io/node";
/// Label naming the announced Service on a ServiceL2Status.
pub const SERVICE_NAME_LABEL: &str = "metallb.io/service-name";
/// Label naming the announced Service's namespace on a ServiceL2Status.
pub const SERVICE_NAMESPACE_LABEL: &str = "metallb.io/service-namespace";

/// The longest label value Kubernetes accepts.
pub const LABEL_VALUE_MAX: usize = 63;

/// A name as a label value: itself when it is one (at most 63 characters, alphanumerics, `-`,
/// `_`, `.`, starting and ending alphanumeric), else its first characters and a hash of the
/// whole, so a node's FQDN (up to 253 characters) still labels its records and two long names
/// stay apart. Records are matched on `status.node` too: the label only narrows the list.
pub fn label_value(name: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let edges = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if name.len() <= LABEL_VALUE_MAX && name.chars().all(allowed) && edges(name) {
        return name.to_owned();
    }
    with_hash(name, LABEL_VALUE_MAX)
}

/// `name` cut to fit `max` with `-<16 hex digits>` of its hash, only DNS-label characters kept.
pub fn with_hash(name: &str, max: usize) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep = max.saturating_sub(17);
    let prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    if prefix.is_empty() {
        format!("h{hash:016x}")
    } else {
        format!("{prefix}-{hash:016x}")
    }
}

/// Empty, as in MetalLB: the object carries only status.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceL2Status",
    plural = "servicel2statuses",
    namespaced,
    status = "MetalLBServiceL2Status",
    derive = "PartialEq",
    doc = "ServiceL2Status reveals the actual traffic status of loadbalancer services in layer2 mode.",
    printcolumn(name = "Allocated Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Service Name",
        type_ = "string",
        json_path = ".status.serviceName"
    ),
    printcolumn(
        name = "Service Namespace",
        type_ = "string",
        json_path = ".status.serviceNamespace"
    )
)]
pub struct ServiceL2StatusSpec {}

/// Where a Service's traffic arrives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetalLBServiceL2Status {
    /// The node that receives the Service's traffic.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The Service this status describes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// The namespace of that Service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_namespace: String,
    /// The interfaces that answer for the Service's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
}

/// One interface answering for a Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct InterfaceInfo {
    /// The interface name, e.g. `eth0`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_become_label_values_told_apart() {
        assert_eq!(label_value("n1"), "n1");
        let a = label_value(&format!("{}.a.example.com", "n".repeat(80)));
        let b = label_value(&format!("{}.b.example.com", "n".repeat(80)));
        assert!(a.len() <= LABEL_VALUE_MAX && b.len() <= LABEL_VALUE_MAX);
        assert_ne!(a, b);
        assert_eq!(label_value(&a), a, "a label value is kept");
    }
}
