//! The CustomResourceDefinitions generated from the Rust types: the one source of the chart's
//! `crds/` files.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, ValidationRule,
};
use kube::CustomResourceExt;

use super::{IPAddressPool, L2Advertisement, ServiceL2Status};

/// The command that regenerates the files; named in their header and in stale-file errors.
pub const REGENERATE: &str = "cargo run -p ferrolb-proto --bin crdgen";

/// Kinds whose `spec` users may leave out, as MetalLB's documented `L2Advertisement` example does.
pub const SPEC_OPTIONAL: [&str; 2] = ["L2Advertisement", "ServiceL2Status"];

/// Every CRD FerroLB serves.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        ServiceL2Status::crd(),
    ];
    for crd in &mut crds {
        if SPEC_OPTIONAL.contains(&crd.spec.names.kind.as_str()) {
            default_empty_spec(crd);
        }
        if crd.spec.names.kind == "IPAddressPool" {
            address_rules(crd);
        }
    }
    crds
}

/// The most entries a pool's `addresses` may have: the API server bounds the cost of the rules
/// below by it before it accepts the CRD (no MetalLB manifest comes near it).
pub const MAX_POOL_ADDRESSES: i64 = 128;

/// The longest address entry: an IPv6 range of two full-length addresses with spaces around
/// the dash.
pub const MAX_ADDRESS_LENGTH: i64 = 96;

/// `x` (an IPv4 address as text, spaces allowed around it) as an integer, in CEL: the list
/// wrapped in `[...].map(...)[0]` binds the octets once, in every CEL version the rules run on.
fn cel_ipv4(x: &str) -> String {
    format!(
        "[{x}.trim().split('.').map(o, int(o))].map(o, ((o[0] * 256 + o[1]) * 256 + o[2]) * 256 + o[3])[0]"
    )
}

/// What the API server checks of each address entry itself, so `kubectl apply` refuses a pool
/// the controller would mark invalid: the field named (`spec.addresses[i]`), the value, and what
/// is allowed. Overlaps between pools span objects: the chart's ValidatingAdmissionPolicy
/// checks those. IPv6 ranges are not compared (CEL has no 128-bit integers): the controller
/// still refuses a reversed one.
pub fn address_rules(crd: &mut CustomResourceDefinition) {
    let v4 = r"^\\s*[0-9]+(\\.[0-9]+){3}\\s*";
    // The message names the value too (the API server's own text says only "string").
    let rule = |rule: String, message: &str| ValidationRule {
        rule,
        message: Some(message.to_owned()),
        message_expression: Some(format!("\"{message}, not \" + self")),
        ..Default::default()
    };
    let rules = vec![
        rule(
            r"self.matches('^\\s*[0-9A-Fa-f:.]+\\s*(/\\s*[0-9]+|-\\s*[0-9A-Fa-f:.]+)\\s*$')".to_owned(),
            "must be a CIDR (192.168.10.0/24, fc00:f853:ccd:e799::/124) or a range of two addresses (192.168.9.1-192.168.9.5); a single address is a /32 or /128",
        ),
        rule(
            format!(r"!self.matches('{v4}/') || self.matches('/\\s*([0-9]|[12][0-9]|3[0-2])\\s*$')"),
            "an IPv4 CIDR's prefix length is 0 to 32",
        ),
        rule(
            r"!self.matches(':.*/') || self.matches('/\\s*([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])\\s*$')".to_owned(),
            "an IPv6 CIDR's prefix length is 0 to 128",
        ),
        rule(
            r"!self.matches('^[^/]*-') || self.split('-')[0].contains(':') == self.split('-')[1].contains(':')".to_owned(),
            "a range's two ends are of one family (both IPv4 or both IPv6)",
        ),
        rule(
            r"self.contains(':') || !self.matches('(^|[^0-9])(25[6-9]|2[6-9][0-9]|[3-9][0-9][0-9]|[0-9]{4,})([^0-9]|$)')".to_owned(),
            "an IPv4 address is four numbers of 0 to 255",
        ),
        rule(
            format!(
                r"!self.matches('{v4}-\\s*[0-9]+(\\.[0-9]+){{3}}\\s*$') || {} <= {}",
                cel_ipv4("self.split('-')[0]"),
                cel_ipv4("self.split('-')[1]")
            ),
            "a range's first address is not above its last",
        ),
    ];
    for version in &mut crd.spec.versions {
        let Some(addresses) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|spec| spec.properties.as_mut())
            .and_then(|p| p.get_mut("addresses"))
        else {
            continue;
        };
        addresses.max_items = Some(MAX_POOL_ADDRESSES);
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) =
            addresses.items.as_mut()
        {
            let items: &mut JSONSchemaProps = items;
            items.max_length = Some(MAX_ADDRESS_LENGTH);
            items.x_kubernetes_validations = Some(rules.clone());
        }
    }
}

/// kube-derive always requires `spec`. MetalLB does not for these kinds, so the API server is told
/// to default a missing spec to `{}`: it then does so on write and when reading objects MetalLB
/// stored, and every client sees a spec.
fn default_empty_spec(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(required) = schema.required.as_mut() {
            required.retain(|field| field != "spec");
            if required.is_empty() {
                schema.required = None;
            }
        }
        if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            spec.default = Some(JSON(serde_json::json!({})));
        }
    }
}

/// `(file name, YAML text)` for each CRD, named as MetalLB names them (`metallb.io_<plural>.yaml`).
pub fn files() -> Result<Vec<(String, String)>, serde_yaml_ng::Error> {
    definitions()
        .into_iter()
        .map(|crd| {
            let body = serde_yaml_ng::to_string(&crd)?;
            let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            Ok((
                name,
                format!("# Generated by `{REGENERATE}`; do not edit.\n---\n{body}"),
            ))
        })
        .collect()
}
