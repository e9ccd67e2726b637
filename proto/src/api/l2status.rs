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
