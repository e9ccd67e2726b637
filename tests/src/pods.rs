//! The chart's pods on a lab, run as a kubelet would run them from the image
//! `scripts/build-image` built: a sandbox per node whose network namespace is that node (the
//! speaker is a hostNetwork pod), the speaker container of the rendered DaemonSet in each, and
//! the controller container of the rendered Deployment in a sandbox of its own. Every option
//! comes from the rendered pod specs ([`kubelet::docker_run`]), with one addition: the
//! standalone backend, a state directory mounted at [`STATE_DIR_IN_POD`] and named by
//! `FERROLB_STATE_DIR`, stands in for the Kubernetes API the pods would talk to.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::chart::{NAMESPACE, Rendered};
use crate::container::{Container, Engine, Sandbox};
use crate::error::{LabError, Result};
use crate::install::Install;
use crate::kubelet::{self, DockerRun, Placement, PodFacts};
use crate::lab::{Host, Lab};

/// Where the state directory is mounted in every pod.
pub const STATE_DIR_IN_POD: &str = "/var/lib/ferrolb";

/// What a pods test needs beyond the lab: the image archive `scripts/build-image` wrote
/// ([`crate::container::IMAGE_ARCHIVE_ENV`]) and helm. Returns the archive, or skips (fails
/// under `FERROLB_REQUIRE_LAB=1`) saying what is missing.
pub fn require() -> Option<PathBuf> {
    let missing = match (crate::container::image_archive(), crate::chart::helm()) {
        (Ok(archive), Ok(_)) => return Some(archive),
        (Err(e), _) | (_, Err(e)) => e.to_string(),
    };
    crate::privilege::skip_or_fail(&missing)
}

/// A probe of a container, as the pod spec defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
}

/// One speaker pod's container, and what its peers had logged of it when it started: by
/// node, the peer's container and how often it had said this node came up.
#[derive(Debug)]
struct SpeakerPod {
    container: Container,
    run: DockerRun,
    seen_before: BTreeMap<String, (String, usize)>,
}

/// The chart's pods on a lab. Dropping it stops the engine and removes every container.
#[derive(Debug)]
pub struct Pods {
    work: PathBuf,
    state_dir: PathBuf,
    image_user: String,
    speaker_pod: PodSpec,
    controller_pod: PodSpec,
    speaker_name: String,
    controller_name: String,
    volumes: BTreeMap<String, PathBuf>,
    nodes: Vec<Host>,
    sandboxes: BTreeMap<String, Sandbox>,
    controller_sandbox: Sandbox,
    speakers: BTreeMap<String, SpeakerPod>,
    controller: Option<(Container, DockerRun)>,
    starts: u32,
    engine: Engine,
}

impl Pods {
    /// Starts an engine, loads the image archive into it (the image the chart names must be in
    /// it), lays out the pods' Secret volumes from the render, and gives every node of the lab
    /// a sandbox that becomes its network namespace. Nothing of FerroLB runs yet.
    pub fn new(lab: &Lab, install: &Install, rendered: &Rendered, archive: &Path) -> Result<Pods> {
        let work = lab.dir().join("pods");
        let engine = Engine::start(&work)?;
        let loaded = engine.load(archive)?;
        engine.import_pause(&work)?;
        let speaker_pod = rendered.speaker_pod()?;
        let controller_pod = rendered.controller_pod()?;
        let image = the_image(&speaker_pod, &controller_pod)?;
        if !loaded.contains(&image) {
            return Err(LabError::Spec(format!(
                "the chart names the image {image}, but {} holds {loaded:?}: build it with \
                 scripts/build-image (which tags it as the chart does)",
                archive.display()
            )));
        }
        let image_user = engine.stdout(["image", "inspect", "-f", "{{.Config.User}}", &image])?;
        let volumes = lay_out_volumes(&speaker_pod, rendered, &work.join("volumes"))?;
        let mut sandboxes = BTreeMap::new();
        for node in lab.nodes() {
            let sandbox = engine.sandbox(node.name())?;
            sandbox.adopt(node)?;
            sandboxes.insert(node.name().to_owned(), sandbox);
        }
        let controller_sandbox = engine.sandbox("controller")?;
        Ok(Pods {
            work,
            state_dir: install.dir().to_owned(),
            image_user,
            speaker_pod,
            controller_pod,
            speaker_name: rendered.name_of("DaemonSet")?,
            controller_name: rendered.name_of("Deployment")?,
            volumes,
            nodes: lab.nodes().to_vec(),
            sandboxes,
            controller_sandbox,
            speakers: BTreeMap::new(),
            controller: None,
            starts: 0,
            engine,
        })
    }

    /// The engine, for what the scenarios ask of it directly.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The speaker pods' spec, to change before a start (a capability taken away, say).
    pub fn speaker_pod_mut(&mut self) -> &mut PodSpec {
        &mut self.speaker_pod
    }

    /// Starts the speaker pod of `node`: a new pod (name, uid) in the node's sandbox.
    pub fn start_speaker(&mut self, node: &str) -> Result<()> {
        let host = self.host(node)?.clone();
        let sandbox = self.sandbox(node)?.id().to_owned();
        let facts = self.facts(&self.speaker_name.clone(), node, &host.ipv4().to_string());
        let mut run = kubelet::docker_run(
            &self.speaker_pod,
            "speaker",
            &facts,
            &Placement {
                sandbox: &sandbox,
                volumes: &self.volumes,
                image_user: &self.image_user,
            },
        )
        .map_err(|e| LabError::Spec(e.to_string()))?;
        self.standalone(&mut run, "status/l2")?;
        let seen_before = self.seen_by_peers(node);
        let container = self.engine.run(&run.arguments())?;
        self.speakers.insert(
            node.to_owned(),
            SpeakerPod {
                container,
                run,
                seen_before,
            },
        );
        Ok(())
    }

    /// Restarts the speaker container of `node` in the same pod (name, uid, every option), as
    /// the kubelet restarts a container that died.
    pub fn restart_speaker(&mut self, node: &str) -> Result<()> {
        let pod = self
            .speakers
            .get(node)
            .ok_or_else(|| LabError::Spec(format!("no speaker pod on {node}")))?;
        let run = pod.run.clone();
        let seen_before = self.seen_by_peers(node);
        let container = self.engine.run(&run.arguments())?;
        self.speakers.insert(
            node.to_owned(),
            SpeakerPod {
                container,
                run,
                seen_before,
            },
        );
        Ok(())
    }

    /// By peer: its container and how often it has logged `node` coming up.
    fn seen_by_peers(&self, node: &str) -> BTreeMap<String, (String, usize)> {
        self.speakers
            .iter()
            .filter(|(other, _)| *other != node)
            .map(|(other, pod)| {
                let log = pod.container.log().unwrap_or_default();
                let seen = (pod.container.id().to_owned(), member_up_count(&log, node));
                (other.clone(), seen)
            })
            .collect()
    }

    /// Starts a speaker pod on every node.
    pub fn start_speakers(&mut self) -> Result<()> {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.name().to_owned()).collect();
        nodes.iter().try_for_each(|node| self.start_speaker(node))
    }

    /// Starts the controller pod in its own sandbox (standalone: it needs no network).
    pub fn start_controller(&mut self) -> Result<()> {
        let sandbox = self.controller_sandbox.id().to_owned();
        let facts = self.facts(&self.controller_name.clone(), "n1", "127.0.0.1");
        let mut run = kubelet::docker_run(
            &self.controller_pod,
            "controller",
            &facts,
            &Placement {
                sandbox: &sandbox,
                volumes: &self.volumes,
                image_user: &self.image_user,
            },
        )
        .map_err(|e| LabError::Spec(e.to_string()))?;
        self.standalone(&mut run, "status")?;
        let container = self.engine.run(&run.arguments())?;
        self.controller = Some((container, run));
        Ok(())
    }

    /// The speaker container of `node`, if one was started.
    pub fn speaker(&self, node: &str) -> Option<&Container> {
        self.speakers.get(node).map(|pod| &pod.container)
    }

    /// The `docker run` a speaker of `node` was started with.
    pub fn speaker_run(&self, node: &str) -> Option<&DockerRun> {
        self.speakers.get(node).map(|pod| &pod.run)
    }

    /// The controller container, if started.
    pub fn controller(&self) -> Option<&Container> {
        self.controller.as_ref().map(|(c, _)| c)
    }

    /// The `docker run` the controller was started with.
    pub fn controller_run(&self) -> Option<&DockerRun> {
        self.controller.as_ref().map(|(_, run)| run)
    }

    /// `docker kill -s KILL` of `node`'s speaker: a crash. The sandbox (the node) stays.
    pub fn kill_speaker(&mut self, node: &str) -> Result<()> {
        self.speaker(node)
            .ok_or_else(|| LabError::Spec(format!("no speaker pod on {node}")))?
            .kill()
    }

    /// `docker stop` of `node`'s speaker (SIGTERM, SIGKILL after the pod's grace period);
    /// returns how long it took.
    pub fn stop_speaker(&mut self, node: &str) -> Result<Duration> {
        self.speaker(node)
            .ok_or_else(|| LabError::Spec(format!("no speaker pod on {node}")))?
            .stop()
    }

    /// Waits until every running speaker has logged `member up` for every other, and each
    /// speaker's peers have logged it once more than when that speaker's latest pod started
    /// (a restarted speaker has been taken back), or fails after `timeout` with the logs.
    pub fn wait_membership(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<(&String, &SpeakerPod, String)> = self
                .speakers
                .iter()
                .filter(|(_, pod)| pod.container.is_running().unwrap_or(false))
                .map(|(node, pod)| (node, pod, pod.container.log().unwrap_or_default()))
                .collect();
            let met = running.iter().all(|(me, pod, my_log)| {
                running
                    .iter()
                    .filter(|(other, ..)| other != me)
                    .all(|(other, peer, log)| {
                        // A peer started after this speaker has not said anything of it before.
                        let before = match pod.seen_before.get(*other) {
                            Some((id, count)) if id == peer.container.id() => *count,
                            _ => 0,
                        };
                        member_up_count(log, me) > before && member_up_count(my_log, other) > 0
                    })
            });
            if met {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: "ferrolb-speaker (containers)".to_owned(),
                    namespace: "(pods)".to_owned(),
                    reason: format!(
                        "the speakers did not all meet within {timeout:?}:\n{}",
                        self.speaker_logs()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The result of one of `node`'s speaker probes, done as the kubelet does it: an HTTP GET
    /// of the probe's path and port (named ports resolved) to the pod's IP, 2xx or 3xx passing.
    pub fn probe_speaker(&self, node: &str, kind: ProbeKind) -> Result<bool> {
        let pod = self
            .speakers
            .get(node)
            .ok_or_else(|| LabError::Spec(format!("no speaker pod on {node}")))?;
        let ip = self.host(node)?.ipv4().to_string();
        probe(&self.speaker_pod, "speaker", kind, &pod.container, &ip)
    }

    /// The result of one of the controller's probes.
    pub fn probe_controller(&self, kind: ProbeKind) -> Result<bool> {
        let (container, _) = self
            .controller
            .as_ref()
            .ok_or_else(|| LabError::Spec("no controller pod".to_owned()))?;
        probe(
            &self.controller_pod,
            "controller",
            kind,
            container,
            "127.0.0.1",
        )
    }

    /// Probes until `done` holds for the probe's answer, or fails after `timeout`.
    pub fn wait_probe(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Pods) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !probe(self)? {
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: what.to_owned(),
                    namespace: "(pods)".to_owned(),
                    reason: format!("not passing within {timeout:?}:\n{}", self.speaker_logs()),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Every speaker's log, for failure messages.
    pub fn speaker_logs(&self) -> String {
        self.speakers
            .iter()
            .map(|(node, pod)| {
                format!(
                    "--- speaker {node}:\n{}",
                    pod.container.log().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn host(&self, node: &str) -> Result<&Host> {
        self.nodes
            .iter()
            .find(|n| n.name() == node)
            .ok_or_else(|| LabError::Spec(format!("no node {node} in this lab")))
    }

    fn sandbox(&self, node: &str) -> Result<&Sandbox> {
        self.sandboxes
            .get(node)
            .ok_or_else(|| LabError::Spec(format!("no sandbox for node {node}")))
    }

    /// What the API server would have given a new pod of `owner` on `node`.
    fn facts(&mut self, owner: &str, node: &str, ip: &str) -> PodFacts {
        self.starts += 1;
        let n = self.starts;
        PodFacts {
            name: format!("{owner}-{}", pod_suffix(n)),
            namespace: NAMESPACE.to_owned(),
            uid: format!("00000000-0000-4000-8000-{n:012}"),
            node_name: node.to_owned(),
            host_ip: ip.to_owned(),
            pod_ip: ip.to_owned(),
        }
    }

    /// The standalone backend: the state directory mounted and named, its `writes` directory
    /// (`status`, `status/l2`) owned by the container's user. Without `CAP_DAC_OVERRIDE`, root
    /// writes only where the permission bits let it, as any other user.
    fn standalone(&self, run: &mut DockerRun, writes: &str) -> Result<()> {
        let dir = self.state_dir.join(writes);
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let (uid, gid) = user_of(run, &self.image_user)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|source| LabError::Io {
            context: format!("chown {uid}:{gid} {}", dir.display()),
            source,
        })?;
        run.option("-e", format!("FERROLB_STATE_DIR={STATE_DIR_IN_POD}"));
        run.option(
            "-v",
            format!("{}:{STATE_DIR_IN_POD}", self.state_dir.display()),
        );
        Ok(())
    }
}

impl Drop for Pods {
    /// Keeps every container's log in the lab's directory (kept when a test fails), before the
    /// engine goes with them.
    fn drop(&mut self) {
        let dir = &self.work;
        let speakers = self
            .speakers
            .iter()
            .map(|(node, pod)| (format!("speaker-{node}"), &pod.container));
        let controller = self
            .controller
            .iter()
            .map(|(c, _)| ("controller".to_owned(), c));
        for (name, container) in speakers.chain(controller) {
            if let Ok(log) = container.log() {
                let _ = std::fs::write(dir.join(format!("{name}.log")), log);
            }
        }
    }
}

/// The one image both pods name.
fn the_image(speaker: &PodSpec, controller: &PodSpec) -> Result<String> {
    let images: Vec<String> = speaker
        .containers
        .iter()
        .chain(&controller.containers)
        .filter_map(|c| c.image.clone())
        .collect();
    match images.as_slice() {
        [first, rest @ ..] if rest.iter().all(|i| i == first) => Ok(first.clone()),
        _ => Err(LabError::Spec(format!(
            "the pods name different images (or none): {images:?}"
        ))),
    }
}

/// The uid and gid a run's `--user` gives (the image's user without one).
fn user_of(run: &DockerRun, image_user: &str) -> Result<(u32, u32)> {
    let user = run
        .options
        .windows(2)
        .filter(|pair| pair[0] == "--user")
        .map(|pair| pair[1].as_str())
        .next_back()
        .unwrap_or(image_user);
    let mut parts = user.split(':');
    let number = |part: Option<&str>| part.filter(|p| !p.is_empty()).map(str::parse::<u32>);
    match (number(parts.next()), number(parts.next())) {
        (Some(Ok(uid)), Some(Ok(gid))) => Ok((uid, gid)),
        (Some(Ok(uid)), None) => Ok((uid, uid)),
        _ => Err(LabError::Spec(format!(
            "user `{user}` is not numeric uid[:gid]"
        ))),
    }
}

/// Five lower-case letters and digits from a counter, like a pod name's random suffix.
fn pod_suffix(n: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(2_654_435_761);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u32) as usize];
            x /= ALPHABET.len() as u32;
            c as char
        })
        .collect()
}

/// Writes each Secret volume of `pod` from the render into `root/<volume>/` as the kubelet
/// would: the items (or every key), each file with the item's mode or the volume's
/// defaultMode (0644 without one), owned by root.
fn lay_out_volumes(
    pod: &PodSpec,
    rendered: &Rendered,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut laid = BTreeMap::new();
    for volume in pod.volumes.iter().flatten() {
        let Some(source) = &volume.secret else {
            return Err(LabError::Spec(format!(
                "volume {}: only Secret volumes are laid out by the test's kubelet",
                volume.name
            )));
        };
        let name = source.secret_name.clone().unwrap_or_default();
        let data = rendered.secret(&name)?.data.unwrap_or_default();
        let dir = root.join(&volume.name);
        let io = |context: String| move |source| LabError::Io { context, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let default_mode = source.default_mode.unwrap_or(0o644);
        let items: Vec<(String, String, i32)> = match &source.items {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i.key.clone(),
                        i.path.clone(),
                        i.mode.unwrap_or(default_mode),
                    )
                })
                .collect(),
            None => data
                .keys()
                .map(|k| (k.clone(), k.clone(), default_mode))
                .collect(),
        };
        for (key, path, mode) in items {
            let bytes = data.get(&key).ok_or_else(|| {
                LabError::Spec(format!(
                    "Secret {name} has no key {key} (volume {})",
                    volume.name
                ))
            })?;
            let file = dir.join(&path);
            std::fs::write(&file, &bytes.0).map_err(io(format!("writing {}", file.display())))?;
            let mode = u32::try_from(mode).map_err(|_| {
                LabError::Spec(format!("volume {}: mode {mode} is negative", volume.name))
            })?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("chmod {}", file.display())))?;
        }
        laid.insert(volume.name.clone(), dir);
    }
    Ok(laid)
}

/// One probe of `container` (`name` in `pod`) at `ip`, run in the container's own network
/// namespace; `Ok(false)` for a failing answer or none.
fn probe(
    pod: &PodSpec,
    name: &str,
    kind: ProbeKind,
    container: &Container,
    ip: &str,
) -> Result<bool> {
    let spec = pod
        .containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| LabError::Spec(format!("no container {name} in the pod")))?;
    let definition: Option<&Probe> = match kind {
        ProbeKind::Liveness => spec.liveness_probe.as_ref(),
        ProbeKind::Readiness => spec.readiness_probe.as_ref(),
    };
    let get = definition
        .and_then(|p| p.http_get.as_ref())
        .ok_or_else(|| LabError::Spec(format!("container {name} has no {kind:?} httpGet probe")))?;
    let port = match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(named) => spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(named.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| LabError::Spec(format!("container {name} has no port named {named}")))?,
    };
    let timeout = definition.and_then(|p| p.timeout_seconds).unwrap_or(1);
    let url = format!("http://{ip}:{port}{}", get.path.as_deref().unwrap_or("/"));
    let pid = container.pid()?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m"])
        .arg(timeout.to_string())
        .arg(&url)
        .output()
        .map_err(|source| LabError::Io {
            context: format!("probing {url}"),
            source,
        })?;
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((200..400).contains(&code))
}

/// How many times a speaker's log says `member` came up, in the text or the JSON log format.
pub fn member_up_count(log: &str, member: &str) -> usize {
    let text = format!("member=\"{member}\"");
    log.lines()
        .filter(|line| line.contains("member up"))
        .filter(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(json) => {
                    json.get("message").and_then(|m| m.as_str()) == Some("member up")
                        && json.get("member").and_then(|m| m.as_str()) == Some(member)
                }
                Err(_) => line.contains(&text),
            },
        )
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_up_in_both_log_formats() {
        let log = concat!(
            "2026-12-02T10:00:00Z  INFO membership{node=\"n1\"}: ferrolb_speaker::membership::shell: member up node=\"n1\" member=\"n2\" address=10.250.0.2:7946\n",
            "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"member up\",\"node\":\"n1\",\"member\":\"n3\"}\n",
            "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"member up\",\"node\":\"n1\",\"member\":\"n3\"}\n",
            "member down node=\"n1\" member=\"n2\"\n",
        );
        assert_eq!(member_up_count(log, "n2"), 1);
        assert_eq!(member_up_count(log, "n3"), 2);
        assert_eq!(member_up_count(log, "n4"), 0);
    }

    #[test]
    fn users_and_suffixes() {
        let run = |options: &[&str]| DockerRun {
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            image: "i".to_owned(),
            args: Vec::new(),
        };
        assert_eq!(
            user_of(&run(&["--user", "0:0"]), "65532").ok(),
            Some((0, 0))
        );
        assert_eq!(user_of(&run(&[]), "65532:65532").ok(), Some((65532, 65532)));
        assert_eq!(user_of(&run(&["--user", "7"]), "").ok(), Some((7, 7)));
        assert!(user_of(&run(&[]), "nonroot").is_err());
        let suffixes: std::collections::BTreeSet<String> = (1..50).map(pod_suffix).collect();
        assert_eq!(suffixes.len(), 49, "unique");
        assert!(suffixes.iter().all(|s| s.len() == 5));
    }
}
