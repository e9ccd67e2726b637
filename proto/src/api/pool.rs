//! `IPAddressPool` (metallb.io/v1beta1): the addresses FerroLB may hand to LoadBalancer Services.
// Each kube `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of IP addresses that can be allocated to LoadBalancer Services, field for field as
/// MetalLB's.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    plural = "ipaddresspools",
    namespaced,
    status = "IPAddressPoolStatus",
    derive = "PartialEq",
    doc = "IPAddressPool represents a pool of IP addresses that can be allocated to LoadBalancer services.",
    printcolumn(
        name = "Auto Assign",
        type_ = "boolean",
        json_path = ".spec.autoAssign"
    ),
    printcolumn(
        name = "Avoid Buggy IPs",
        type_ = "boolean",
        json_path = ".spec.avoidBuggyIPs"
    ),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Assigned IPv4",
        type_ = "integer",
        json_path = ".status.assignedIPv4",
        priority = "10"
    ),
    printcolumn(
        name = "Available IPv4",
        type_ = "integer",
        json_path = ".status.availableIPv4",
        priority = "10"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// The IP address ranges this pool hands out. Each entry is a CIDR (`192.168.10.0/24`) or an
    /// explicit range (`192.168.10.10-192.168.10.20`); IPv4 and IPv6 entries may be mixed.
    pub addresses: Vec<String>,

    /// Whether FerroLB may pick addresses from this pool for Services that did not ask for it.
    /// When false, the pool is used only by Services that name it or request one of its IPs.
    #[serde(default = "default_auto_assign")]
    pub auto_assign: bool,

    /// Skip IPv4 addresses ending in .0 and .255, which some old equipment mishandles.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Which Services this pool serves and how it ranks against other pools. Without it, the pool
    /// serves any Service, after the pools that name the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

fn default_auto_assign() -> bool {
    true
}

/// Ties a pool to a set of Services and gives it a priority among the pools that match them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; 0 or unset ranks after every numbered pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,

    /// Namespaces whose Services may take addresses from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// Label selectors on Namespaces whose Services may take addresses from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,

    /// Label selectors on Services that may take addresses from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// Usage counters the controller keeps; manual edits are overwritten.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses assigned to Services.
    #[serde(rename = "assignedIPv4", default)]
    pub assigned_ipv4: i64,
    /// IPv6 addresses assigned to Services.
    #[serde(rename = "assignedIPv6", default)]
    pub assigned_ipv6: i64,
    /// IPv4 addresses still free. Saturates at the largest int64 for huge pools.
    #[serde(rename = "availableIPv4", default)]
    pub available_ipv4: i64,
    /// IPv6 addresses still free. Saturates at the largest int64 for huge pools (a /64 has more).
    #[serde(rename = "availableIPv6", default)]
    pub available_ipv6: i64,
    /// Why the pool is or is not in use (FerroLB addition): `Valid` is False with the reason when
    /// the pool is rejected, for example because it overlaps another pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
