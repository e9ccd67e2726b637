//! FerroLB installed on a lab in standalone mode: one state directory shared by the controller
//! and a speaker in every node's namespace, the real binaries, and what a scenario asks of them
//! (write a manifest, wait for an IP, find the owner, kill a speaker).
//!
//! The binaries are the workspace's own `ferrolb-controller` and `ferrolb-speaker`, found where
//! cargo put the running executable: beside it (`<target dir>/debug/`), or in its parent when run
//! from `<target dir>/debug/deps/`, whatever the target directory is (`CARGO_TARGET_DIR`, a
//! configured `target-dir`, or `target/`); or only in `FERROLB_BIN_DIR`, an absolute directory,
//! when that is set. Build them first: `cargo build -p ferrolb-controller -p ferrolb-speaker`. A
//! binary older than the sources it is built from is refused: the test would drive yesterday's
//! code.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::lab::{Host, Lab};
use crate::process::Background;

/// Environment variable naming the directory holding the FerroLB binaries to drive instead of
/// those beside the running executable (only it is searched when set).
pub const BIN_DIR_ENV: &str = "FERROLB_BIN_DIR";

/// Which node (namespace) runs the controller: it only reads and writes the state directory, so
/// any will do; a node keeps it off the host's network.
const CONTROLLER_NODE: usize = 1;

/// How long speakers started together may take to find each other.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(15);

/// The full path of a FerroLB binary, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let build = "cargo build -p ferrolb-controller -p ferrolb-speaker";
    let candidates = match std::env::var_os(BIN_DIR_ENV) {
        // Set on purpose (the static binaries, say): never fall back to others.
        Some(dir) => vec![bin_dir_from_env(&dir)?.join(name)],
        None => beside_executable(name)?,
    };
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(LabError::Spec(format!(
            "the `{name}` binary is not built (looked at {}); build it first: {build} \
             (with the same CARGO_TARGET_DIR as the tests), or set {BIN_DIR_ENV}",
            list.join(", ")
        )));
    };
    refuse_stale(found, &sources_of(name), build)?;
    Ok(found.clone())
}

/// `FERROLB_BIN_DIR` as given: it must be an absolute path to a directory. A relative one would be
/// taken from the test's working directory, which cargo sets to the package's (`tests/`), not the
/// directory the command was typed in.
fn bin_dir_from_env(dir: &std::ffi::OsStr) -> Result<PathBuf> {
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(LabError::Spec(format!(
            "{BIN_DIR_ENV}={}: give an absolute path (cargo runs the tests in the package's \
             directory, so a relative one would not mean what you typed)",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(LabError::Spec(format!(
            "{BIN_DIR_ENV}={}: no such directory",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Where cargo put the FerroLB binaries, judged from where it put the running executable: the
/// same profile directory, which is `deps/`'s parent for test executables.
fn beside_executable(name: &str) -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        context: "locating the running executable".to_owned(),
        source,
    })?;
    let dir = exe.parent().ok_or_else(|| {
        LabError::Spec(format!(
            "the running executable {} has no directory",
            exe.display()
        ))
    })?;
    let mut candidates = vec![dir.join(name)];
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(parent) = dir.parent()
    {
        candidates.push(parent.join(name));
    }
    Ok(candidates)
}

/// The source directories the binary `name` is built from (as this crate was compiled): its
/// own crate's and those it depends on, not its sibling's, which cargo does not relink it for.
pub(crate) fn sources_of(name: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let own = name.strip_prefix("ferrolb-").unwrap_or(name);
    ["proto", "daemon", own]
        .iter()
        .map(|krate| root.join(krate).join("src"))
        .collect()
}

/// Fails when a source file under `sources` is newer than `binary`: cargo builds only what a
/// command asks for, so `cargo test -p ferrolb-e2e` after an edit would drive the old binary.
/// Sources that are not there (the binaries were copied to another machine) are not compared.
pub(crate) fn refuse_stale(binary: &Path, sources: &[PathBuf], build: &str) -> Result<()> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .map_err(|source| LabError::Io {
            context: format!("reading the modification time of {}", binary.display()),
            source,
        })?;
    for dir in sources {
        if let Some((newest, path)) = newest_file(dir)
            && newest > built
        {
            return Err(LabError::Spec(format!(
                "{} is older than its source {}: rebuild it ({build}, or scripts/build-static \
                 for {BIN_DIR_ENV}'s static binaries)",
                binary.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// The most recently modified file under `dir`, with its time.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_file(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, path))
        };
        if let Some((time, path)) = candidate
            && newest.as_ref().is_none_or(|(best, _)| time > *best)
        {
            newest = Some((time, path));
        }
    }
    newest
}

/// Manifests as users write them, as YAML text (pure).
pub mod manifests {
    use std::net::IpAddr;

    /// A Node whose InternalIP is `ip`: the speakers find each other through these.
    pub fn node(name: &str, ip: IpAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
        )
    }

    /// An IPAddressPool in `metallb-system` with these ranges or CIDRs.
    pub fn pool(name: &str, addresses: &[&str]) -> String {
        let list: Vec<String> = addresses.iter().map(|a| format!("  - {a}\n")).collect();
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n  addresses:\n{}",
            list.concat()
        )
    }

    /// An L2Advertisement for every pool; `interfaces` limits it when not empty.
    pub fn l2_advertisement(name: &str, interfaces: &[&str]) -> String {
        let head = format!(
            "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: {name}\n  namespace: metallb-system\n"
        );
        if interfaces.is_empty() {
            head
        } else {
            format!("{head}spec:\n  interfaces: [{}]\n", interfaces.join(", "))
        }
    }

    /// An L2Advertisement for the named pools only.
    pub fn l2_advertisement_for(name: &str, pools: &[&str]) -> String {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n  ipAddressPools: [{}]\n",
            pools.join(", ")
        )
    }

    /// A LoadBalancer Service on port 80, with the options scenarios need.
    #[derive(Debug, Clone)]
    pub struct ServiceManifest {
        pub namespace: String,
        pub name: String,
        pub annotations: Vec<(String, String)>,
        pub local: bool,
        pub dual_stack: bool,
        pub port: u16,
        pub load_balancer_class: Option<String>,
    }

    /// `namespace/name`, type LoadBalancer, port 80, single stack, ETP Cluster.
    pub fn service(namespace: &str, name: &str) -> ServiceManifest {
        ServiceManifest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            annotations: Vec::new(),
            local: false,
            dual_stack: false,
            port: 80,
            load_balancer_class: None,
        }
    }

    impl ServiceManifest {
        /// Adds an annotation (`metallb.io/loadBalancerIPs`, ...).
        pub fn annotation(mut self, key: &str, value: &str) -> Self {
            self.annotations.push((key.to_owned(), value.to_owned()));
            self
        }

        /// `externalTrafficPolicy: Local`.
        pub fn local(mut self) -> Self {
            self.local = true;
            self
        }

        /// `ipFamilyPolicy: RequireDualStack`, `ipFamilies: [IPv4, IPv6]`.
        pub fn dual_stack(mut self) -> Self {
            self.dual_stack = true;
            self
        }

        /// `spec.loadBalancerClass`.
        pub fn load_balancer_class(mut self, class: &str) -> Self {
            self.load_balancer_class = Some(class.to_owned());
            self
        }

        /// The YAML text.
        pub fn yaml(&self) -> String {
            let mut out = format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n",
                self.name, self.namespace
            );
            if !self.annotations.is_empty() {
                out.push_str("  annotations:\n");
                for (k, v) in &self.annotations {
                    out.push_str(&format!("    {k}: \"{v}\"\n"));
                }
            }
            out.push_str("spec:\n  type: LoadBalancer\n");
            out.push_str(&format!(
                "  ports:\n  - name: http\n    port: {}\n    protocol: TCP\n",
                self.port
            ));
            if self.local {
                out.push_str("  externalTrafficPolicy: Local\n");
            }
            if self.dual_stack {
                out.push_str("  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n");
            }
            if let Some(class) = &self.load_balancer_class {
                out.push_str(&format!("  loadBalancerClass: {class}\n"));
            }
            out
        }
    }

    /// An EndpointSlice giving Service `namespace/service` one ready endpoint at `address` on
    /// `node` (for `externalTrafficPolicy: Local`).
    pub fn endpoint_slice(namespace: &str, service: &str, node: &str, address: IpAddr) -> String {
        let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{node}\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nendpoints:\n- addresses: [\"{address}\"]\n  conditions: {{ready: true, serving: true}}\n  nodeName: {node}\nports:\n- name: http\n  port: 80\n  protocol: TCP\n"
        )
    }
}

/// The FerroLB binaries an [`Install`] starts.
#[derive(Debug, Clone)]
struct Binaries {
    controller: PathBuf,
    speaker: PathBuf,
}

/// FerroLB on a lab: the state directory, its membership key, the controller and the speakers.
/// Processes are registered with the lab too, so they die with it whatever happens.
#[derive(Debug)]
pub struct Install {
    dir: PathBuf,
    key_file: PathBuf,
    binaries: Option<Binaries>,
    nodes: Vec<Host>,
    controller: Option<Background>,
    speakers: BTreeMap<String, Background>,
    extra_speaker_args: Vec<String>,
}

impl Install {
    /// A fresh state directory in the lab's directory holding a Node manifest per lab node, and a
    /// fresh membership key; nothing is started yet.
    pub fn new(lab: &Lab) -> Result<Install> {
        let binaries = Binaries {
            controller: binary("ferrolb-controller")?,
            speaker: binary("ferrolb-speaker")?,
        };
        Install::prepare(lab, Some(binaries))
    }

    /// The same state directory for daemons that run elsewhere (the chart's pods as containers,
    /// `pods::Pods`): starting one here is an error, and no binary needs to be built.
    pub fn without_binaries(lab: &Lab) -> Result<Install> {
        Install::prepare(lab, None)
    }

    fn prepare(lab: &Lab, binaries: Option<Binaries>) -> Result<Install> {
        let dir = lab.dir().join("state");
        let key_file = lab.dir().join("membership.key");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        write_file(&key_file, &format!("{}\n", random_key()?))?;
        let install = Install {
            dir,
            key_file,
            binaries,
            nodes: lab.nodes().to_vec(),
            controller: None,
            speakers: BTreeMap::new(),
            extra_speaker_args: Vec::new(),
        };
        for node in lab.nodes() {
            install.write(
                &format!("nodes/{}.yaml", node.name()),
                &manifests::node(node.name(), node.ipv4().into()),
            )?;
        }
        Ok(install)
    }

    /// Extra arguments for every speaker started from now on.
    pub fn speaker_args(&mut self, args: &[&str]) {
        self.extra_speaker_args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The membership key file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The controller binary.
    pub fn controller_bin(&self) -> Result<&Path> {
        self.binaries().map(|b| b.controller.as_path())
    }

    fn binaries(&self) -> Result<&Binaries> {
        self.binaries.as_ref().ok_or_else(|| {
            LabError::Spec(
                "this install runs no binaries of its own (Install::without_binaries)".to_owned(),
            )
        })
    }

    /// Writes a manifest file atomically (a hidden temporary file, then rename), so readers never
    /// see half of it.
    pub fn write(&self, relative: &str, text: &str) -> Result<()> {
        let path = self.dir.join(relative);
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(|source| LabError::Io {
            context: format!("creating {}", parent.display()),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp"));
        write_file(&tmp, text)?;
        std::fs::rename(&tmp, &path).map_err(|source| LabError::Io {
            context: format!("renaming {} to {}", tmp.display(), path.display()),
            source,
        })
    }

    /// Deletes a manifest file.
    pub fn remove(&self, relative: &str) -> Result<()> {
        let path = self.dir.join(relative);
        std::fs::remove_file(&path).map_err(|source| LabError::Io {
            context: format!("removing {}", path.display()),
            source,
        })
    }

    /// Starts the controller (in node 1's namespace; it only touches the directory).
    pub fn start_controller(&mut self) -> Result<()> {
        let node = self.node(CONTROLLER_NODE)?.clone();
        let process = node.ns().spawn([
            self.controller_bin()?.to_string_lossy().as_ref(),
            "--state-dir",
            &self.dir.to_string_lossy(),
            "--metrics-addr",
            "127.0.0.1:7472",
        ])?;
        self.controller = Some(process);
        Ok(())
    }

    /// Waits until the running controller logs that it is ready (it has read the directory and
    /// written what differed), or fails after `timeout` with its log.
    pub fn wait_controller_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let process = self
            .controller
            .as_ref()
            .ok_or_else(|| LabError::Spec("the controller is not running".to_owned()))?;
        loop {
            let log = process.log()?;
            if log.contains("standalone controller ready") {
                return Ok(());
            }
            if Instant::now() >= deadline || !process.is_running()? {
                return Err(LabError::Output {
                    command: process.command().to_owned(),
                    namespace: process.namespace().to_owned(),
                    reason: format!("not ready within {timeout:?}; log:\n{log}"),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the controller (SIGKILL) and reaps it.
    pub fn kill_controller(&mut self) -> Result<()> {
        if let Some(process) = self.controller.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// The running controller, if any.
    pub fn controller(&self) -> Option<&Background> {
        self.controller.as_ref()
    }

    /// Starts the speaker of node `i` (counted from 1).
    pub fn start_speaker(&mut self, i: usize) -> Result<()> {
        let key_file = self.key_file.clone();
        self.start_speaker_keyed(i, &key_file)
    }

    /// Starts the speaker of node `i` with its membership key read from `key_file` (another
    /// cluster's key, say).
    pub fn start_speaker_keyed(&mut self, i: usize, key_file: &Path) -> Result<()> {
        let node = self.node(i)?.clone();
        let mut argv: Vec<String> = vec![
            self.binaries()?.speaker.to_string_lossy().into_owned(),
            "run".to_owned(),
            "--node-name".to_owned(),
            node.name().to_owned(),
            "--state-dir".to_owned(),
            self.dir.to_string_lossy().into_owned(),
            "--membership-key-file".to_owned(),
            key_file.to_string_lossy().into_owned(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:7473".to_owned(),
        ];
        argv.extend(self.extra_speaker_args.iter().cloned());
        let process = node.ns().spawn(argv)?;
        self.speakers.insert(node.name().to_owned(), process);
        Ok(())
    }

    /// Starts a speaker on every node.
    pub fn start_speakers(&mut self) -> Result<()> {
        (1..=self.nodes.len()).try_for_each(|i| self.start_speaker(i))
    }

    /// Every speaker, then (once they have all met: see [`wait_membership`](Self::wait_membership))
    /// the controller. In that order no speaker sees an IP to elect an owner for while it still
    /// believes itself alone.
    pub fn start_all(&mut self) -> Result<()> {
        self.start_speakers()?;
        self.wait_membership(MEMBERSHIP_TIMEOUT)?;
        self.start_controller()
    }

    /// Waits until every running speaker has logged `member up` for every other running one,
    /// or fails after `timeout` with their logs.
    pub fn wait_membership(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&String> = self.speakers.keys().collect();
            let met = self.speakers.iter().all(|(me, process)| {
                let log = process.log().unwrap_or_default();
                running.iter().filter(|other| **other != me).all(|other| {
                    log.contains(&format!("member up node=\"{me}\" member=\"{other}\""))
                })
            });
            if met {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: "ferrolb-speaker run".to_owned(),
                    namespace: self.dir.display().to_string(),
                    reason: format!(
                        "the speakers did not all meet within {timeout:?}:\n{}",
                        self.speaker_logs()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the speaker of node `name` (a crash) and reaps it.
    pub fn kill_speaker(&mut self, name: &str) -> Result<()> {
        match self.speakers.remove(name) {
            Some(process) => process.kill().map(drop),
            None => Err(LabError::Spec(format!("no speaker runs on node {name}"))),
        }
    }

    /// Stops the speaker of node `name` with SIGTERM (make-before-break) and reaps it.
    pub fn stop_speaker(&mut self, name: &str) -> Result<std::process::ExitStatus> {
        match self.speakers.remove(name) {
            Some(process) => process.stop(),
            None => Err(LabError::Spec(format!("no speaker runs on node {name}"))),
        }
    }

    /// The speaker process of node `name`, if running.
    pub fn speaker(&self, name: &str) -> Option<&Background> {
        self.speakers.get(name)
    }

    /// Node `i`, counted from 1.
    pub fn node(&self, i: usize) -> Result<&Host> {
        i.checked_sub(1)
            .and_then(|index| self.nodes.get(index))
            .ok_or_else(|| LabError::Spec(format!("no node {i} in this lab")))
    }

    /// The node with this MAC on `eth0` or `eth1`.
    pub fn node_by_mac(&self, mac: crate::MacAddr) -> Option<&Host> {
        self.nodes
            .iter()
            .find(|n| n.mac() == mac || n.eth1().is_some_and(|e| e.mac == mac))
    }

    /// The IPs the controller wrote for Service `namespace/name` (empty when it has none).
    pub fn service_ips(&self, namespace: &str, name: &str) -> Vec<IpAddr> {
        let path = self
            .dir
            .join(format!("status/services/{namespace}/{name}.yaml"));
        let Some(value) = read_yaml(&path) else {
            return Vec::new();
        };
        value
            .pointer("/status/loadBalancer/ingress")
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pool the controller wrote for Service `namespace/name`
    /// (`metallb.io/ip-allocated-from-pool`), if any.
    pub fn service_pool(&self, namespace: &str, name: &str) -> Option<String> {
        let path = self
            .dir
            .join(format!("status/services/{namespace}/{name}.yaml"));
        read_yaml(&path)?
            .pointer("/metadata/annotations/metallb.io~1ip-allocated-from-pool")?
            .as_str()
            .map(str::to_owned)
    }

    /// The `Valid` condition the controller wrote for pool `name`: its status (`True`,
    /// `False`) and message; `None` before it has written one.
    pub fn pool_validity(&self, name: &str) -> Option<(String, String)> {
        let path = self.dir.join(format!("status/ipaddresspools/{name}.yaml"));
        let status = read_yaml(&path)?;
        let valid = status
            .pointer("/status/conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Valid"))?
            .clone();
        let text = |key: &str| valid.get(key)?.as_str().map(str::to_owned);
        Some((text("status")?, text("message").unwrap_or_default()))
    }

    /// Waits until pool `name`'s `Valid` condition satisfies `done`, or fails after `timeout`
    /// with what it last said.
    pub fn wait_pool_validity(
        &self,
        name: &str,
        timeout: Duration,
        mut done: impl FnMut(&str, &str) -> bool,
    ) -> Result<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let validity = self.pool_validity(name);
            if let Some((status, message)) = &validity
                && done(status, message)
            {
                return Ok((status.clone(), message.clone()));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: "ferrolb-controller".to_owned(),
                    namespace: self.dir.display().to_string(),
                    reason: format!(
                        "IPAddressPool {name}: the awaited Valid condition was not written within {timeout:?}; last seen {validity:?}"
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until Service `namespace/name` has IPs that satisfy `done`, or fails after
    /// `timeout` naming what it saw (and the controller's log).
    pub fn wait_ips(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        mut done: impl FnMut(&[IpAddr]) -> bool,
    ) -> Result<Vec<IpAddr>> {
        let deadline = Instant::now() + timeout;
        loop {
            let ips = self.service_ips(namespace, name);
            if done(&ips) {
                return Ok(ips);
            }
            if Instant::now() >= deadline {
                let log = self
                    .controller
                    .as_ref()
                    .and_then(|c| c.log().ok())
                    .unwrap_or_default();
                return Err(LabError::Output {
                    command: "ferrolb-controller".to_owned(),
                    namespace: self.dir.display().to_string(),
                    reason: format!(
                        "Service {namespace}/{name}: the awaited IPs were not written within {timeout:?}; last seen {ips:?}; controller log:\n{log}"
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for Service `namespace/name` to get at least one IP; returns the first.
    pub fn wait_ip(&self, namespace: &str, name: &str, timeout: Duration) -> Result<IpAddr> {
        let ips = self.wait_ips(namespace, name, timeout, |ips| !ips.is_empty())?;
        ips.first()
            .copied()
            .ok_or_else(|| LabError::Spec("no IP".to_owned()))
    }

    /// The nodes whose speaker records announcing Service `namespace/name`
    /// (`status/l2/<node>/<namespace>/<name>.yaml`); a crashed speaker's record stays behind.
    pub fn recorded_owners(&self, namespace: &str, name: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| {
                self.dir
                    .join(format!("status/l2/{}/{namespace}/{name}.yaml", n.name()))
                    .is_file()
            })
            .map(|n| n.name().to_owned())
            .collect()
    }

    /// Every speaker's log, for failure messages.
    pub fn speaker_logs(&self) -> String {
        self.speakers
            .iter()
            .map(|(name, p)| format!("--- speaker {name}:\n{}", p.log().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|source| LabError::Io {
        context: format!("creating {}", path.display()),
        source,
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| LabError::Io {
            context: format!("writing {}", path.display()),
            source,
        })
}

fn read_yaml(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_yaml_ng::from_str(&text).ok()
}

/// 32 random bytes from the kernel as 64 hex digits: a membership key.
pub fn random_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").map_err(|source| LabError::Io {
        context: "opening /dev/urandom".to_owned(),
        source,
    })?;
    std::io::Read::read_exact(&mut urandom, &mut bytes).map_err(|source| LabError::Io {
        context: "reading /dev/urandom".to_owned(),
        source,
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::{bin_dir_from_env, manifests, refuse_stale};
    use ferrolb_proto::api::manifest::{Manifest, parse_documents};
    use std::time::{Duration, SystemTime};

    #[test]
    fn bin_dir_must_be_an_absolute_directory() {
        let relative = bin_dir_from_env("target/release".as_ref());
        assert!(
            relative.is_err_and(|e| e.to_string().contains("absolute")),
            "a relative FERROLB_BIN_DIR is refused"
        );
        let missing = bin_dir_from_env("/nonexistent/ferrolb-bin".as_ref());
        assert!(
            missing.is_err_and(|e| e.to_string().contains("no such directory")),
            "a missing FERROLB_BIN_DIR is refused"
        );
        assert!(bin_dir_from_env(std::env::temp_dir().as_os_str()).is_ok());
    }

    #[test]
    fn a_binary_older_than_its_sources_is_refused() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("ferrolb-speaker");
        let sources = dir.path().join("src");
        std::fs::create_dir_all(sources.join("nested"))?;
        let source = sources.join("nested/lib.rs");
        std::fs::write(&binary, b"")?;
        std::fs::write(&source, b"")?;
        let now = SystemTime::now();
        let set = |path: &std::path::Path, time: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(path)?
                .set_modified(time)
        };
        set(&binary, now)?;
        set(&source, now - Duration::from_secs(60))?;
        assert!(refuse_stale(&binary, std::slice::from_ref(&sources), "build").is_ok());
        set(&source, now + Duration::from_secs(60))?;
        let stale = refuse_stale(&binary, std::slice::from_ref(&sources), "build");
        assert!(
            stale.is_err_and(|e| e.to_string().contains("nested/lib.rs")),
            "the newer source is named"
        );
        // No sources (binaries copied elsewhere): nothing to compare against.
        assert!(refuse_stale(&binary, &[dir.path().join("absent")], "build").is_ok());
        Ok(())
    }

    #[test]
    fn manifests_read_back_as_their_kinds() {
        let ip = std::net::IpAddr::from([10, 250, 0, 1]);
        let texts = [
            manifests::node("n1", ip),
            manifests::pool("lan", &["10.250.0.100-10.250.0.110", "fd00:250::100/124"]),
            manifests::l2_advertisement("all", &[]),
            manifests::l2_advertisement("eth1", &["eth1"]),
            manifests::l2_advertisement_for("lan", &["lan"]),
            manifests::service("demo", "web")
                .annotation("metallb.io/loadBalancerIPs", "10.250.0.105")
                .local()
                .dual_stack()
                .load_balancer_class("example.org/ferrolb")
                .yaml(),
            manifests::endpoint_slice("demo", "web", "n2", ip),
        ];
        for text in &texts {
            let parsed: Vec<_> = parse_documents("x.yaml", text).into_iter().collect();
            assert_eq!(parsed.len(), 1, "{text}");
            match &parsed[0] {
                Ok(
                    Manifest::Node(_)
                    | Manifest::IPAddressPool(_)
                    | Manifest::L2Advertisement(_)
                    | Manifest::Service(_)
                    | Manifest::EndpointSlice(_),
                ) => {}
                other => panic!("{text}\nread as {other:?}"),
            }
        }
    }
}
