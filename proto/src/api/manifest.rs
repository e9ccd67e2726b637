//! Reading the objects FerroLB understands from YAML manifests (one or many documents), with
//! errors that name the source, the document, the object and the field.
//!
//! Standalone mode keeps its state in such files; tests read MetalLB's own examples with it.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::crd::SPEC_OPTIONAL;
use super::{IPAddressPool, L2Advertisement, ServiceL2Status};

/// One object read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    IPAddressPool(IPAddressPool),
    L2Advertisement(L2Advertisement),
    ServiceL2Status(ServiceL2Status),
    Service(Box<Service>),
    Namespace(Namespace),
    Node(Box<Node>),
    EndpointSlice(EndpointSlice),
}

/// The kinds [`parse_documents`] accepts, with their apiVersion, for error messages.
pub const KINDS: [(&str, &str); 7] = [
    ("IPAddressPool", "metallb.io/v1beta1"),
    ("L2Advertisement", "metallb.io/v1beta1"),
    ("ServiceL2Status", "metallb.io/v1beta1"),
    ("Service", "v1"),
    ("Namespace", "v1"),
    ("Node", "v1"),
    ("EndpointSlice", "discovery.k8s.io/v1"),
];

/// Why one document could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// Where the text came from, e.g. a file path.
    pub source: String,
    /// 1-based position of the document in the source; 0 when not known (a duplicate object
    /// found after parsing), and then not printed.
    pub document: usize,
    /// `Kind namespace/name` when the document got that far.
    pub object: Option<String>,
    /// The field at fault (`spec.addresses[0]`), empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.document > 0 {
            write!(f, " document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Reads every document of `text`. Empty documents are skipped; each bad document yields its own
/// error and does not stop the others.
pub fn parse_documents(source: &str, text: &str) -> Vec<Result<Manifest, ManifestError>> {
    let mut results = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let error = |object: Option<String>, field: String, message: String| ManifestError {
            source: source.to_owned(),
            document: index + 1,
            object,
            field,
            message,
        };
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                results.push(Err(error(
                    None,
                    String::new(),
                    format!("not valid YAML: {err}"),
                )));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        results
            .push(decode(value).map_err(|(object, field, message)| error(object, field, message)));
    }
    results
}

type DecodeError = (Option<String>, String, String);

fn decode(mut value: Value) -> Result<Manifest, DecodeError> {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let object = describe(&kind, &value);
    if kind.is_empty() || api_version.is_empty() {
        return Err((
            None,
            String::new(),
            "the document has no apiVersion or kind".to_owned(),
        ));
    }
    if is_legacy_metallb_config(&kind, &value) {
        return Err((
            object,
            "kind".to_owned(),
            "\"ConfigMap\" holds MetalLB's configuration before v0.13 (address-pools), which \
             FerroLB does not read (nor does MetalLB since v0.13); convert it with MetalLB's \
             configmaptocrs tool (the ConfigMap saved as config.yaml here: docker run -v \
             $(pwd):/var/input quay.io/metallb/configmaptocrs) and use the resources.yaml it \
             writes instead"
                .to_owned(),
        ));
    }
    let Some(&(_, expected)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<String> = KINDS.iter().map(|(k, v)| format!("{k} ({v})")).collect();
        return Err((
            object,
            "kind".to_owned(),
            format!(
                "{kind:?} is not a kind FerroLB reads; it reads {}",
                known.join(", ")
            ),
        ));
    };
    if api_version != expected {
        return Err((
            object,
            "apiVersion".to_owned(),
            format!("{api_version:?} is not served for {kind}; use {expected:?}"),
        ));
    }
    if SPEC_OPTIONAL.contains(&kind.as_str())
        && let Some(map) = value.as_object_mut()
    {
        // The API server defaults a missing spec to {} (see crd.rs); do the same here.
        map.entry("spec").or_insert_with(|| serde_json::json!({}));
    }
    let v = value;
    let o = &object;
    Ok(match kind.as_str() {
        "IPAddressPool" => Manifest::IPAddressPool(read(v, o)?),
        "L2Advertisement" => Manifest::L2Advertisement(read(v, o)?),
        "ServiceL2Status" => Manifest::ServiceL2Status(read(v, o)?),
        "Service" => Manifest::Service(Box::new(read(v, o)?)),
        "Namespace" => Manifest::Namespace(read(v, o)?),
        "Node" => Manifest::Node(Box::new(read(v, o)?)),
        _ => Manifest::EndpointSlice(read(v, o)?),
    })
}

/// MetalLB's configuration before v0.13: a ConfigMap whose `config` holds `address-pools`.
fn is_legacy_metallb_config(kind: &str, value: &Value) -> bool {
    kind == "ConfigMap"
        && value
            .pointer("/data/config")
            .and_then(Value::as_str)
            .is_some_and(|config| config.contains("address-pools"))
}

/// Deserializes, keeping the path of the field that failed. Unknown fields are dropped (as the
/// API server prunes them), but named when a field next to them is missing: a typo is the
/// likely cause, and serde alone only names what is missing.
fn read<T: DeserializeOwned>(value: Value, object: &Option<String>) -> Result<T, DecodeError> {
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path| unknown.push(path.to_string());
    let result =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note));
    result.map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let message = err.into_inner().to_string();
        let message = naming_unknown(message, &field, &unknown);
        (object.clone(), field, message)
    })
}

/// A "missing field" message with the unknown fields beside it (`paths` as serde_ignored
/// writes them: `spec.adresses`, `spec.?.x` through an Option), a close one suggested.
fn naming_unknown(message: String, field: &str, paths: &[String]) -> String {
    let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    else {
        return message;
    };
    let mut here: Vec<String> = paths
        .iter()
        .map(|path| path.replace("?.", ""))
        .filter_map(|path| {
            let (parent, name) = path.rsplit_once('.').unwrap_or(("", &path));
            (parent == field).then(|| name.to_owned())
        })
        .collect();
    here.sort();
    let named: Vec<String> = here
        .iter()
        .map(|name| {
            if strsim::damerau_levenshtein(name, missing) <= 2 {
                format!("`{name}` (did you mean `{missing}`?)")
            } else {
                format!("`{name}`")
            }
        })
        .collect();
    match named.as_slice() {
        [] => message,
        [one] => format!("{message}; unknown field {one}"),
        many => format!("{message}; unknown fields {}", many.join(", ")),
    }
}

fn describe(kind: &str, value: &Value) -> Option<String> {
    let meta = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
    };
    let name = meta("name")?;
    Some(match meta("namespace") {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Manifest, ManifestError> {
        let mut all = parse_documents("pools.yaml", text);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn error(text: &str) -> String {
        one(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_several_documents_and_skips_empty_ones() {
        let all = parse_documents(
            "x.yaml",
            "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec:\n  \
             addresses: [10.0.0.0/24]\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
        );
        assert_eq!(all.len(), 2);
        assert!(matches!(&all[0], Ok(Manifest::IPAddressPool(p)) if p.spec.auto_assign));
        assert!(matches!(&all[1], Ok(Manifest::Namespace(_))));
    }

    #[test]
    fn a_missing_l2advertisement_spec_means_everything() {
        let doc = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: all}\n";
        let Ok(Manifest::L2Advertisement(ad)) = one(doc) else {
            panic!("not read")
        };
        assert_eq!(ad.spec, Default::default());
    }

    #[test]
    fn errors_name_source_document_object_and_field() {
        assert_eq!(
            error(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a, namespace: lb}\nspec:\n  addresses: 10.0.0.0/24\n"
            ),
            "pools.yaml document 1 (IPAddressPool lb/a): spec.addresses: invalid type: string \"10.0.0.0/24\", expected a sequence"
        );
        assert_eq!(
            error(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec:\n  addresses: []\n  autoAssign: yes\n"
            ),
            "pools.yaml document 1 (IPAddressPool a): spec.autoAssign: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            error("apiVersion: metallb.io/v1beta2\nkind: IPAddressPool\nmetadata: {name: a}\n"),
            "pools.yaml document 1 (IPAddressPool a): apiVersion: \"metallb.io/v1beta2\" is not served for IPAddressPool; use \"metallb.io/v1beta1\""
        );
        assert_eq!(
            error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"),
            "pools.yaml document 1 (ConfigMap c): kind: \"ConfigMap\" is not a kind FerroLB reads; it reads \
             IPAddressPool (metallb.io/v1beta1), L2Advertisement (metallb.io/v1beta1), ServiceL2Status \
             (metallb.io/v1beta1), Service (v1), Namespace (v1), Node (v1), EndpointSlice (discovery.k8s.io/v1)"
        );
        assert_eq!(
            error("just: text\n"),
            "pools.yaml document 1: the document has no apiVersion or kind"
        );
    }

    /// Issue 19: a typo is named beside the field it leaves missing.
    #[test]
    fn an_unknown_field_is_named_beside_the_missing_one() {
        assert_eq!(
            error(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec:\n  adresses: [10.0.0.0/24]\n  autoAssign: false\n"
            ),
            "pools.yaml document 1 (IPAddressPool a): spec: missing field `addresses`; unknown \
             field `adresses` (did you mean `addresses`?)"
        );
        assert_eq!(
            error(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec:\n  ranges: [10.0.0.0/24]\n  avoid: true\n"
            ),
            "pools.yaml document 1 (IPAddressPool a): spec: missing field `addresses`; unknown \
             fields `avoid`, `ranges`"
        );
    }

    /// Issue 19: MetalLB's pre-0.13 configuration points at its conversion tool.
    #[test]
    fn a_legacy_metallb_configmap_points_at_the_conversion_tool() {
        let legacy = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config, namespace: metallb-system}\ndata:\n  config: |\n    address-pools:\n    - name: default\n      protocol: layer2\n      addresses: [192.168.1.240-192.168.1.250]\n";
        let message = error(legacy);
        assert!(
            message.starts_with("pools.yaml document 1 (ConfigMap metallb-system/config): kind: ")
                && message.contains("MetalLB's configuration before v0.13")
                && message.contains("configmaptocrs"),
            "{message}"
        );
    }

    #[test]
    fn bad_yaml_is_reported_and_earlier_documents_survive() {
        let all = parse_documents(
            "x.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\nkind: [unclosed\n",
        );
        assert_eq!(all.len(), 2);
        assert!(all[0].is_ok());
        let err = all[1].clone().unwrap_err();
        assert_eq!(err.document, 2);
        assert!(err.message.starts_with("not valid YAML"), "{err}");
    }
}
