//! What a kubelet makes of one container of a pod, as `docker run` options: the command and args,
//! the environment with the downward API filled in and `$(VAR)` references expanded, the
//! security context (user, runAsNonRoot, capabilities, no_new_privs, read-only root, seccomp),
//! resources, volume mounts and the grace period. Pure: a rendered PodSpec and what the API
//! server knows about the pod go in, arguments come out. A field the kubelet would act on and
//! this translation does not know is an error, never silently dropped.
//!
//! Not done here, because FerroLB's standalone tests do not run against an API server: the
//! service-account token mount and the `KUBERNETES_SERVICE_*` variables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, PodSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What the API server and the kubelet know about a pod that its spec does not say: the
/// sources of the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.name`, e.g. `ferrolb-speaker-x7k2p`.
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `spec.nodeName`: the node the scheduler put it on.
    pub node_name: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// `status.podIP` (the host IP for a hostNetwork pod).
    pub pod_ip: String,
}

/// Where the pod lives on this machine, as the caller set it up.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The container (a sandbox) whose network namespace the pod's containers share.
    pub sandbox: &'a str,
    /// The host directory holding each volume's content, by volume name.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The image's `USER` (`docker image inspect`), which decides runAsNonRoot without runAsUser.
    pub image_user: &'a str,
}

/// The translation failed: the spec asks for something the kubelet would refuse, or for
/// something this stand-in does not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletError {
    #[error("the pod has no container named `{0}`")]
    NoContainer(String),
    #[error("container `{container}`: {what} is not supported by the test's kubelet")]
    Unsupported { container: String, what: String },
    #[error("container `{container}`: runAsNonRoot is set, but {why}")]
    RootRefused { container: String, why: String },
    #[error("container `{container}`: {what}")]
    Invalid { container: String, what: String },
}

/// `docker run -d` for one container: the options, the image, and the arguments after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRun {
    pub options: Vec<String>,
    pub image: String,
    pub args: Vec<String>,
}

impl DockerRun {
    /// The arguments after `docker run -d`.
    pub fn arguments(&self) -> Vec<String> {
        let mut argv = self.options.clone();
        argv.push(self.image.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// Adds an option pair before the image (`-e`, `NAME=value`).
    pub fn option(&mut self, flag: &str, value: impl Into<String>) {
        self.options.push(flag.to_owned());
        self.options.push(value.into());
    }

    /// The value given with `-e NAME=...`, if any (the last one wins, as in docker).
    pub fn env(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.options
            .windows(2)
            .filter(|pair| pair[0] == "-e")
            .filter_map(|pair| pair[1].strip_prefix(&prefix))
            .next_back()
    }
}

/// The kubelet's default grace period, when the pod sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// `docker run` for container `name` of `pod`, as the kubelet would start it.
pub fn docker_run(
    pod: &PodSpec,
    name: &str,
    facts: &PodFacts,
    placement: &Placement<'_>,
) -> Result<DockerRun, KubeletError> {
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| KubeletError::NoContainer(name.to_owned()))?;
    let unsupported = |what: &str| KubeletError::Unsupported {
        container: name.to_owned(),
        what: what.to_owned(),
    };
    let image = container
        .image
        .clone()
        .ok_or_else(|| unsupported("a container without an image"))?;
    let mut run = DockerRun {
        options: vec![
            // Nothing is pulled: the image is on the node, loaded as docs/installation.md says.
            "--pull".to_owned(),
            "never".to_owned(),
            "--network".to_owned(),
            format!("container:{}", placement.sandbox),
            "--label".to_owned(),
            format!("io.kubernetes.pod.name={}", facts.name),
            "--label".to_owned(),
            format!("io.kubernetes.container.name={name}"),
        ],
        image,
        args: Vec::new(),
    };

    let env = environment(container, pod, facts)?;
    for (var, value) in &env {
        run.option("-e", format!("{var}={value}"));
    }
    let lookup = |var: &str| env.iter().rev().find(|(n, _)| n == var).map(|(_, v)| v);
    let expanded = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|arg| expand(arg, lookup))
            .collect()
    };
    let command = expanded(&container.command);
    let args = expanded(&container.args);
    match command.split_first() {
        Some((entrypoint, rest)) => {
            // A command replaces the image's ENTRYPOINT and CMD; docker drops CMD with it.
            run.option("--entrypoint", entrypoint.clone());
            run.args.extend(rest.iter().cloned());
            run.args.extend(args);
        }
        // Args alone replace CMD only, as docker's arguments after the image do.
        None => run.args.extend(args),
    }

    security(
        &mut run,
        name,
        pod.security_context.as_ref(),
        container.security_context.as_ref(),
        placement.image_user,
    )?;
    resources(&mut run, container)?;
    mounts(&mut run, pod, container, placement)?;
    let grace = pod
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    // `docker stop` then waits as long as the kubelet would before SIGKILL.
    run.option("--stop-timeout", grace.to_string());
    Ok(run)
}

/// The container's environment in order, each value resolved: literal values with `$(VAR)`
/// expanded against the variables defined before it, downward-API fields from `facts`.
fn environment(
    container: &Container,
    pod: &PodSpec,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, KubeletError> {
    let bad = |what: String| KubeletError::Unsupported {
        container: container.name.clone(),
        what,
    };
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(bad("envFrom".to_owned()));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .filter(|_| {
                        from.secret_key_ref.is_none()
                            && from.config_map_key_ref.is_none()
                            && from.resource_field_ref.is_none()
                    })
                    .ok_or_else(|| {
                        bad(format!("env {}: a valueFrom other than fieldRef", var.name))
                    })?;
                field_value(&field.field_path, pod, facts).ok_or_else(|| {
                    bad(format!("env {}: fieldRef {}", var.name, field.field_path))
                })?
            }
            (Some(value), None) => expand(value, |name| {
                env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
            }),
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// The downward API's value of `path`, or `None` for a path it does not offer here.
fn field_value(path: &str, pod: &PodSpec, facts: &PodFacts) -> Option<String> {
    Some(match path {
        "metadata.name" => facts.name.clone(),
        "metadata.namespace" => facts.namespace.clone(),
        "metadata.uid" => facts.uid.clone(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod.service_account_name.clone().unwrap_or_default(),
        "status.hostIP" => facts.host_ip.clone(),
        "status.podIP" => facts.pod_ip.clone(),
        _ => return None,
    })
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, `$$` is a literal `$`, and any other `$` stays.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The pod's and the container's security contexts (the container's fields win).
fn security(
    run: &mut DockerRun,
    name: &str,
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    image_user: &str,
) -> Result<(), KubeletError> {
    let unsupported = |what: &str| KubeletError::Unsupported {
        container: name.to_owned(),
        what: what.to_owned(),
    };
    let c = container.cloned().unwrap_or_default();
    let p = pod.cloned().unwrap_or_default();
    if c.se_linux_options.is_some() || p.se_linux_options.is_some() {
        return Err(unsupported("seLinuxOptions"));
    }
    if c.app_armor_profile.is_some() || p.app_armor_profile.is_some() {
        return Err(unsupported("appArmorProfile"));
    }
    if c.proc_mount.is_some() {
        return Err(unsupported("procMount"));
    }
    if p.fs_group.is_some() {
        // It would also change the group of every volume's files.
        return Err(unsupported("fsGroup"));
    }
    if p.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("sysctls"));
    }
    let user = c.run_as_user.or(p.run_as_user);
    let group = c.run_as_group.or(p.run_as_group);
    if c.run_as_non_root.or(p.run_as_non_root) == Some(true) {
        let refused = |why: String| KubeletError::RootRefused {
            container: name.to_owned(),
            why,
        };
        match user {
            Some(0) => return Err(refused("runAsUser is 0".to_owned())),
            Some(_) => {}
            // The kubelet checks the image's user, which must be numeric to be checked.
            None => {
                let uid = image_user.split(':').next().unwrap_or_default();
                match uid.parse::<u32>() {
                    Ok(0) => {
                        return Err(refused(format!("the image's user `{image_user}` is root")));
                    }
                    Ok(_) => {}
                    Err(_) if uid.is_empty() || uid == "root" => {
                        return Err(refused("the image runs as root (no USER)".to_owned()));
                    }
                    Err(_) => {
                        return Err(refused(format!(
                            "the image's user `{image_user}` is not numeric, so it cannot be checked"
                        )));
                    }
                }
            }
        }
    }
    match (user, group) {
        (Some(u), Some(g)) => run.option("--user", format!("{u}:{g}")),
        (Some(u), None) => run.option("--user", u.to_string()),
        (None, Some(_)) => return Err(unsupported("runAsGroup without runAsUser")),
        (None, None) => {}
    }
    for group in p.supplemental_groups.iter().flatten() {
        run.option("--group-add", group.to_string());
    }
    if c.privileged == Some(true) {
        run.options.push("--privileged".to_owned());
    }
    if c.allow_privilege_escalation == Some(false) {
        run.option("--security-opt", "no-new-privileges");
    }
    if c.read_only_root_filesystem == Some(true) {
        run.options.push("--read-only".to_owned());
    }
    if let Some(caps) = &c.capabilities {
        for cap in caps.drop.iter().flatten() {
            run.option("--cap-drop", cap.clone());
        }
        for cap in caps.add.iter().flatten() {
            run.option("--cap-add", cap.clone());
        }
    }
    let seccomp = c.seccomp_profile.or(p.seccomp_profile);
    match seccomp.as_ref().map(|s| s.type_.as_str()) {
        // The engine's default profile, as the runtime's default is in a cluster.
        Some("RuntimeDefault") => {}
        // No profile in a pod means Unconfined (the kubelet's default).
        Some("Unconfined") | None => run.option("--security-opt", "seccomp=unconfined"),
        Some(other) => return Err(unsupported(&format!("seccompProfile {other}"))),
    }
    Ok(())
}

/// Memory limit (no swap, as the kubelet sets it), CPU request as shares, CPU limit as quota.
fn resources(run: &mut DockerRun, container: &Container) -> Result<(), KubeletError> {
    let Some(resources) = &container.resources else {
        return Ok(());
    };
    let invalid = |what: String| KubeletError::Invalid {
        container: container.name.clone(),
        what,
    };
    let get = |map: &Option<BTreeMap<String, Quantity>>,
               key: &str|
     -> Result<Option<f64>, KubeletError> {
        map.as_ref()
            .and_then(|m| m.get(key))
            .map(|q| {
                quantity(&q.0)
                    .ok_or_else(|| invalid(format!("resource {key}: `{}` is not a quantity", q.0)))
            })
            .transpose()
    };
    if let Some(bytes) = get(&resources.limits, "memory")? {
        let bytes = (bytes as u64).to_string();
        run.option("--memory", bytes.clone());
        run.option("--memory-swap", bytes);
    }
    if let Some(cpus) = get(&resources.requests, "cpu")? {
        // The kubelet's shares: 1024 per CPU, at least 2.
        run.option("--cpu-shares", ((cpus * 1024.0) as u64).max(2).to_string());
    }
    if let Some(cpus) = get(&resources.limits, "cpu")? {
        run.option("--cpu-period", "100000");
        run.option(
            "--cpu-quota",
            ((cpus * 100_000.0) as u64).max(1000).to_string(),
        );
    }
    Ok(())
}

/// A Kubernetes quantity as a number (`256Mi`, `10m`, `1.5`, `2G`); `None` if it is not one.
pub fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((text, 1.0));
    let digits_only = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|c| *c == '.').count() <= 1;
    if !digits_only {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// `-v HOST:PATH[:ro]` for each volumeMount, from the volumes the caller laid out.
fn mounts(
    run: &mut DockerRun,
    pod: &PodSpec,
    container: &Container,
    placement: &Placement<'_>,
) -> Result<(), KubeletError> {
    for mount in container.volume_mounts.iter().flatten() {
        let problem = |what: String| KubeletError::Invalid {
            container: container.name.clone(),
            what: format!("volumeMount {} at {}: {what}", mount.name, mount.mount_path),
        };
        if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
            return Err(KubeletError::Unsupported {
                container: container.name.clone(),
                what: format!("volumeMount {}: subPath", mount.name),
            });
        }
        let declared = pod
            .volumes
            .iter()
            .flatten()
            .any(|volume| volume.name == mount.name);
        if !declared {
            return Err(problem("the pod declares no such volume".to_owned()));
        }
        let host = placement
            .volumes
            .get(&mount.name)
            .ok_or_else(|| problem("the caller laid out no content for it".to_owned()))?;
        let mode = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        run.option(
            "-v",
            format!("{}:{}{mode}", host.display(), mount.mount_path),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> PodSpec {
        match serde_yaml_ng::from_str(yaml) {
            Ok(spec) => spec,
            Err(e) => panic!("{e}\n{yaml}"),
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            name: "ferrolb-speaker-x7k2p".to_owned(),
            namespace: "metallb-system".to_owned(),
            uid: "0b6d2c8e-0000-4000-8000-000000000001".to_owned(),
            node_name: "n1".to_owned(),
            host_ip: "10.250.0.1".to_owned(),
            pod_ip: "10.250.0.1".to_owned(),
        }
    }

    fn run(spec: &PodSpec, image_user: &str) -> Result<DockerRun, KubeletError> {
        let volumes = BTreeMap::from([(
            "membership-key".to_owned(),
            PathBuf::from("/tmp/pod/membership-key"),
        )]);
        let placement = Placement {
            sandbox: "sandbox-n1",
            volumes: &volumes,
            image_user,
        };
        docker_run(spec, "speaker", &facts(), &placement)
    }

    const SPEAKER: &str = r#"
terminationGracePeriodSeconds: 15
securityContext: {seccompProfile: {type: RuntimeDefault}}
containers:
  - name: speaker
    image: ghcr.io/ferrolb/ferrolb:0.1.0
    command: ["/usr/local/bin/ferrolb-speaker"]
    args: [run, --gratuitous-count, "8"]
    env:
      - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
      - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
      - {name: FERROLB_MEMBERSHIP_ADVERTISE, value: "$(HOST_IP):7947"}
    resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {memory: 256Mi}}
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_RAW, NET_ADMIN]}
    volumeMounts:
      - {name: membership-key, mountPath: /etc/ferrolb/membership, readOnly: true}
volumes:
  - name: membership-key
    secret: {secretName: ferrolb-membership, defaultMode: 256}
"#;

    #[test]
    fn the_speaker_of_the_chart_becomes_these_options() {
        let got = run(&pod(SPEAKER), "65532:65532").unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<String> = [
            "--pull",
            "never",
            "--network",
            "container:sandbox-n1",
            "--label",
            "io.kubernetes.pod.name=ferrolb-speaker-x7k2p",
            "--label",
            "io.kubernetes.container.name=speaker",
            "-e",
            "NODE_NAME=n1",
            "-e",
            "HOST_IP=10.250.0.1",
            "-e",
            "FERROLB_MEMBERSHIP_ADVERTISE=10.250.0.1:7947",
            "--entrypoint",
            "/usr/local/bin/ferrolb-speaker",
            "--user",
            "0:0",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_RAW",
            "--cap-add",
            "NET_ADMIN",
            "--memory",
            "268435456",
            "--memory-swap",
            "268435456",
            "--cpu-shares",
            "20",
            "-v",
            "/tmp/pod/membership-key:/etc/ferrolb/membership:ro",
            "--stop-timeout",
            "15",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(got.options, expected);
        assert_eq!(got.image, "ghcr.io/ferrolb/ferrolb:0.1.0");
        assert_eq!(got.args, ["run", "--gratuitous-count", "8"]);
        let arguments = got.arguments();
        assert_eq!(arguments.len(), expected.len() + 1 + 3);
        assert_eq!(arguments[expected.len()], "ghcr.io/ferrolb/ferrolb:0.1.0");
        assert_eq!(got.env("HOST_IP"), Some("10.250.0.1"));
        assert_eq!(got.env("ABSENT"), None);
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = BTreeMap::from([
            ("HOST_IP".to_owned(), "10.250.0.1".to_owned()),
            ("PORT".to_owned(), "7946".to_owned()),
        ]);
        let lookup = |name: &str| vars.get(name);
        assert_eq!(expand("$(HOST_IP):$(PORT)", lookup), "10.250.0.1:7946");
        assert_eq!(expand("$$(HOST_IP)", lookup), "$(HOST_IP)");
        assert_eq!(expand("$(UNDEFINED)x", lookup), "$(UNDEFINED)x");
        assert_eq!(expand("a$b $ $(unclosed", lookup), "a$b $ $(unclosed");
        assert_eq!(expand("plain", lookup), "plain");
        assert_eq!(expand("$", lookup), "$");
    }

    #[test]
    fn a_variable_sees_only_those_defined_before_it() {
        let spec = pod(r#"
containers:
  - name: speaker
    image: x
    env:
      - {name: EARLY, value: "$(LATE)"}
      - {name: LATE, value: v}
      - {name: AFTER, value: "$(LATE)-$(EARLY)"}
    args: ["$(AFTER)", "$$(LATE)"]
"#);
        let got = run(&spec, "0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.env("EARLY"), Some("$(LATE)"));
        assert_eq!(got.env("AFTER"), Some("v-$(LATE)"));
        assert_eq!(got.args, ["v-$(LATE)", "$(LATE)"]);
        assert!(
            got.options
                .windows(2)
                .any(|w| w == ["--security-opt", "seccomp=unconfined"]),
            "no seccomp profile is Unconfined: {:?}",
            got.options
        );
        assert!(!got.options.contains(&"--entrypoint".to_owned()));
    }

    #[test]
    fn run_as_non_root_is_checked_like_the_kubelet() {
        let spec = |context: &str| {
            pod(&format!(
                "containers:\n  - name: speaker\n    image: x\n    securityContext: {context}\n"
            ))
        };
        let non_root = spec("{runAsNonRoot: true}");
        assert!(run(&non_root, "65532:65532").is_ok());
        for user in ["", "0", "0:0", "root", "nonroot"] {
            assert!(
                matches!(run(&non_root, user), Err(KubeletError::RootRefused { .. })),
                "image user `{user}`"
            );
        }
        assert!(matches!(
            run(&spec("{runAsNonRoot: true, runAsUser: 0}"), "65532"),
            Err(KubeletError::RootRefused { .. })
        ));
        let explicit = run(&spec("{runAsNonRoot: true, runAsUser: 65532}"), "0")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            explicit
                .options
                .windows(2)
                .any(|w| w == ["--user", "65532"])
        );
    }

    #[test]
    fn what_it_does_not_know_is_an_error() {
        let field = pod(r#"
containers:
  - name: speaker
    image: x
    env: [{name: L, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}]
"#);
        let error = run(&field, "0").map(drop).unwrap_err().to_string();
        assert!(error.contains("metadata.labels['app']"), "{error}");
        let secret = pod(r#"
containers:
  - name: speaker
    image: x
    env: [{name: K, valueFrom: {secretKeyRef: {name: s, key: k}}}]
"#);
        assert!(matches!(
            run(&secret, "0"),
            Err(KubeletError::Unsupported { .. })
        ));
        let undeclared = pod(r#"
containers:
  - name: speaker
    image: x
    volumeMounts: [{name: membership-key, mountPath: /etc/k}]
"#);
        let error = run(&undeclared, "0").map(drop).unwrap_err().to_string();
        assert!(error.contains("declares no such volume"), "{error}");
        let sub_path = pod(r#"
containers:
  - name: speaker
    image: x
    volumeMounts: [{name: membership-key, mountPath: /etc/k, subPath: key}]
volumes: [{name: membership-key, emptyDir: {}}]
"#);
        assert!(matches!(
            run(&sub_path, "0"),
            Err(KubeletError::Unsupported { .. })
        ));
        assert!(matches!(
            docker_run(
                &pod(SPEAKER),
                "controller",
                &facts(),
                &Placement {
                    sandbox: "s",
                    volumes: &BTreeMap::new(),
                    image_user: "0",
                }
            ),
            Err(KubeletError::NoContainer(_))
        ));
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("256Mi"), Some(268_435_456.0));
        assert_eq!(quantity("10m"), Some(0.01));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1.5G"), Some(1.5e9));
        for bad in ["", "Mi", "1e3", "-1", "1..2", "ten"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }
}
