//! A container engine of the test's own: `dockerd` with its own data root, exec root and
//! socket, no bridge and no iptables (the lab owns the networking), driven through the docker
//! CLI and stopped by PID at teardown, with every container it ran. Pod sandboxes hold a pod's
//! network namespace, as the kubelet's pause container does; [`Sandbox::adopt`] makes that
//! namespace a lab node, as a CNI plugin would.
//!
//! Nothing is ever pulled: images come from `docker load` of the archive `scripts/build-image`
//! writes ([`IMAGE_ARCHIVE_ENV`]), and the sandbox image is imported from the static busybox
//! (Debian's `busybox-static`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::lab::Host;
use crate::netns::host_ip;

/// Environment variable naming the image archive (`docker save` output) the tests load.
pub const IMAGE_ARCHIVE_ENV: &str = "FERROLB_IMAGE_ARCHIVE";

/// The sandbox image, made from [`PAUSE_BINARY`] by `docker import`.
pub const PAUSE_IMAGE: &str = "ferrolb-lab/pause:1";

/// A static binary that can sleep forever: the sandbox's only process.
pub const PAUSE_BINARY: &str = "/bin/busybox";

/// How long the engine may take to answer after start, and a CLI call to finish.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// How long dockerd gets to stop its containers and itself before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The docker client packaged with the engine (a newer one elsewhere on PATH may want
/// plugins, like buildx, that this engine's package lacks); `docker` on PATH otherwise.
pub fn docker_cli() -> PathBuf {
    let packaged = Path::new("/usr/bin/docker");
    if packaged.is_file() {
        packaged.to_owned()
    } else {
        PathBuf::from("docker")
    }
}

/// The image archive to load: `FERROLB_IMAGE_ARCHIVE`, which must name a file newer than the
/// sources of both binaries (a stale image would test yesterday's code).
pub fn image_archive() -> Result<PathBuf> {
    let Some(path) = std::env::var_os(IMAGE_ARCHIVE_ENV) else {
        return Err(LabError::Spec(format!(
            "{IMAGE_ARCHIVE_ENV} is not set: build the image with scripts/build-image and set \
             {IMAGE_ARCHIVE_ENV} to the archive it prints (scripts/test does both)"
        )));
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(LabError::Spec(format!(
            "{IMAGE_ARCHIVE_ENV}={}: no such file; build it with scripts/build-image",
            path.display()
        )));
    }
    for name in ["ferrolb-controller", "ferrolb-speaker"] {
        crate::install::refuse_stale(
            &path,
            &crate::install::sources_of(name),
            "scripts/build-image",
        )?;
    }
    Ok(path)
}

/// What the engine shares with its containers' handles: how to reach it, and the containers
/// to remove at teardown.
#[derive(Debug)]
struct Shared {
    cli: PathBuf,
    host: String,
    started: Mutex<Vec<String>>,
}

impl Shared {
    fn docker<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = Command::new(&self.cli);
        cmd.env("DOCKER_HOST", &self.host).args(&args);
        let shown: Vec<String> = std::iter::once("docker".to_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        crate::netns::run_command(
            cmd,
            &crate::netns::display_argv(&shown),
            "(host)",
            CLI_TIMEOUT,
            true,
        )
    }

    fn stdout<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.docker(args)
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A running dockerd of the test's own. Dropping it removes every container it ran, stops the
/// daemon by PID and deletes its data.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    daemon: Child,
    log: PathBuf,
    root: Option<tempfile::TempDir>,
}

impl Engine {
    /// Starts dockerd with everything under a fresh directory, its log in `log_dir`, and waits
    /// until it answers.
    pub fn start(log_dir: &Path) -> Result<Engine> {
        let io = |context: String| move |source| LabError::Io { context, source };
        let root = tempfile::Builder::new()
            .prefix("ferrolb-engine-")
            .tempdir()
            .map_err(io("creating the engine's directory".to_owned()))?;
        let path = root.path();
        let socket = path.join("docker.sock");
        let config = path.join("daemon.json");
        // An empty configuration of its own: a daemon.json of the host changes nothing here.
        std::fs::write(&config, "{}\n").map_err(io(format!("writing {}", config.display())))?;
        std::fs::create_dir_all(log_dir).map_err(io(format!("creating {}", log_dir.display())))?;
        let log = log_dir.join("dockerd.log");
        let out = File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(path.join("data"))
            .arg("--exec-root")
            .arg(path.join("exec"))
            .arg("--pidfile")
            .arg(path.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            // The lab owns the networking: no docker0, no NAT or filter rules on the host.
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--shutdown-timeout", "5"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let daemon = cmd.spawn().map_err(|source| LabError::Spawn {
            command: "dockerd".to_owned(),
            namespace: "(host)".to_owned(),
            source,
        })?;
        let mut engine = Engine {
            shared: Arc::new(Shared {
                cli: docker_cli(),
                host: format!("unix://{}", socket.display()),
                started: Mutex::new(Vec::new()),
            }),
            daemon,
            log,
            root: Some(root),
        };
        engine.wait_answering()?;
        Ok(engine)
    }

    /// Polls `docker version` until the daemon answers: it says nothing else when it is ready.
    fn wait_answering(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self
                .shared
                .stdout(["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            let exited = self.daemon.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let why = exited.map_or_else(
                    || format!("not answering within {START_TIMEOUT:?}"),
                    |status| format!("exited ({status})"),
                );
                return Err(LabError::Output {
                    command: "dockerd".to_owned(),
                    namespace: "(host)".to_owned(),
                    reason: format!("{why}; its log:\n{}", self.log_tail()),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of dockerd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `docker ARGS...` against this engine; a non-zero exit is an error with stderr.
    pub fn docker<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.shared.docker(args)
    }

    /// `docker ARGS...`'s standard output, trimmed.
    pub fn stdout<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.shared.stdout(args)
    }

    /// `docker load -i ARCHIVE`; returns the image references it loaded.
    pub fn load(&self, archive: &Path) -> Result<Vec<String>> {
        let archive = archive.to_string_lossy();
        let out = self.stdout(["load", "-i", &archive])?;
        Ok(out
            .lines()
            .filter_map(|line| line.strip_prefix("Loaded image: "))
            .map(str::to_owned)
            .collect())
    }

    /// Imports [`PAUSE_IMAGE`]: the static busybox as `/sleep` (busybox runs the applet its
    /// name says), sleeping as its entrypoint.
    pub fn import_pause(&self, work: &Path) -> Result<()> {
        let staging = work.join("pause-image");
        let io = |context: String| move |source| LabError::Io { context, source };
        std::fs::create_dir_all(&staging).map_err(io(format!("creating {}", staging.display())))?;
        std::fs::copy(PAUSE_BINARY, staging.join("sleep")).map_err(io(format!(
            "copying {PAUSE_BINARY} (Debian package busybox-static) for the sandbox image"
        )))?;
        let tar = work.join("pause.tar");
        let status = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&staging)
            .arg("sleep")
            .status()
            .map_err(io("running tar".to_owned()))?;
        if !status.success() {
            return Err(LabError::Spec(format!(
                "tar of the pause image failed: {status}"
            )));
        }
        let tar = tar.to_string_lossy();
        let entrypoint = r#"ENTRYPOINT ["/sleep", "2147483647"]"#;
        self.docker(["import", "--change", entrypoint, &tar, PAUSE_IMAGE])
            .map(drop)
    }

    /// `docker run -d ARGS...`: the container, registered for removal at teardown.
    pub fn run(&self, args: &[String]) -> Result<Container> {
        let argv: Vec<&str> = ["run", "-d"]
            .into_iter()
            .chain(args.iter().map(String::as_str))
            .collect();
        let id = self.stdout(&argv)?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(LabError::Spec(format!(
                "docker {} printed no container id: `{id}`",
                argv.join(" ")
            )));
        }
        crate::process::lock(&self.shared.started).push(id.clone());
        Container::attach(Arc::clone(&self.shared), id)
    }

    /// Starts a pod sandbox: [`PAUSE_IMAGE`] with no network of its own (`--network none`, a
    /// loopback only), whose namespace the pod's containers share.
    pub fn sandbox(&self, pod: &str) -> Result<Sandbox> {
        let container = self.run(&[
            "--network".to_owned(),
            "none".to_owned(),
            "--label".to_owned(),
            format!("io.kubernetes.pod.name={pod}"),
            "--label".to_owned(),
            "io.kubernetes.container.name=POD".to_owned(),
            PAUSE_IMAGE.to_owned(),
        ])?;
        let pid = container.pid()?;
        if pid == 0 {
            return Err(LabError::Spec(format!(
                "the sandbox of pod {pod} stopped at once: {}",
                container.log().unwrap_or_default()
            )));
        }
        for (key, value) in NODE_SYSCTLS {
            set_sysctl(pid, key, value)?;
        }
        Ok(Sandbox {
            pod: pod.to_owned(),
            container,
        })
    }

    /// Removes every container it ran, stops the daemon (SIGTERM, SIGKILL after
    /// [`STOP_TIMEOUT`]) and deletes its data; returns what failed.
    fn shutdown(&mut self) -> Vec<LabError> {
        let mut errors = Vec::new();
        let started = std::mem::take(&mut *crate::process::lock(&self.shared.started));
        if !started.is_empty() {
            let mut argv = vec!["rm".to_owned(), "-f".to_owned(), "-v".to_owned()];
            argv.extend(started);
            if let Err(error) = self.shared.docker(&argv) {
                errors.push(error);
            }
        }
        if let Ok(pid) = i32::try_from(self.daemon.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.daemon.try_wait().ok().flatten().is_none() {
            errors.push(LabError::Spec(format!(
                "dockerd (pid {}) still ran {STOP_TIMEOUT:?} after SIGTERM: killed",
                self.daemon.id()
            )));
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        if let Some(root) = self.root.take() {
            // A daemon that died hard leaves its overlay mounts: detach them first.
            unmount_under(root.path());
            if let Err(source) = root.close() {
                errors.push(LabError::Io {
                    context: "removing the engine's directory".to_owned(),
                    source,
                });
            }
        }
        errors
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for error in self.shutdown() {
            eprintln!("ferrolb engine: teardown: {error}");
        }
    }
}

/// Writes a sysctl of the network namespace of process `pid` (from inside it: `/proc/sys/net`
/// shows the namespace of whoever reads it).
fn set_sysctl(pid: u32, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net")).args([
        "sh",
        "-c",
        "printf '%s\\n' \"$2\" > \"$1\"",
        "sysctl",
        &path,
        value,
    ]);
    crate::netns::run_command(
        cmd,
        &format!("nsenter --net=/proc/{pid}/ns/net: {key}={value}"),
        "(sandbox)",
        crate::netns::DEFAULT_COMMAND_TIMEOUT,
        true,
    )
    .map(drop)
}

/// Detaches every mount below `dir` (deepest first), from /proc/self/mountinfo.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}

/// One container of the engine, by id.
#[derive(Debug, Clone)]
pub struct Container {
    shared: Arc<Shared>,
    id: String,
    log_path: PathBuf,
}

impl Container {
    fn attach(shared: Arc<Shared>, id: String) -> Result<Container> {
        let log_path = PathBuf::from(shared.stdout(["inspect", "-f", "{{.LogPath}}", &id])?);
        Ok(Container {
            shared,
            id,
            log_path,
        })
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `docker inspect -f FORMAT`, trimmed.
    pub fn inspect(&self, format: &str) -> Result<String> {
        self.shared.stdout(["inspect", "-f", format, &self.id])
    }

    /// The host PID of its process (0 once it has stopped).
    pub fn pid(&self) -> Result<u32> {
        let text = self.inspect("{{.State.Pid}}")?;
        text.parse()
            .map_err(|_| LabError::Spec(format!("container {}: pid `{text}`", self.short())))
    }

    /// Whether its process runs.
    pub fn is_running(&self) -> Result<bool> {
        Ok(self.inspect("{{.State.Running}}")? == "true")
    }

    /// Its exit code once stopped.
    pub fn exit_code(&self) -> Result<i32> {
        let text = self.inspect("{{.State.ExitCode}}")?;
        text.parse()
            .map_err(|_| LabError::Spec(format!("container {}: exit code `{text}`", self.short())))
    }

    /// What it wrote to stdout and stderr so far, from the engine's json-file log.
    pub fn log(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.log_path).map_err(|source| LabError::Io {
            context: format!("reading the log of container {}", self.short()),
            source,
        })?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|entry| entry.get("log")?.as_str().map(str::to_owned))
            .collect())
    }

    /// `docker kill -s KILL`: a crash.
    pub fn kill(&self) -> Result<()> {
        self.shared
            .docker(["kill", "-s", "KILL", &self.id])
            .map(drop)
    }

    /// `docker stop`: SIGTERM, then SIGKILL after the container's stop timeout (the pod's
    /// grace period). Returns how long the stop took.
    pub fn stop(&self) -> Result<Duration> {
        let started = Instant::now();
        self.shared.docker(["stop", &self.id])?;
        Ok(started.elapsed())
    }

    /// Waits up to `timeout` for it to stop by itself; its exit code, or `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running()? {
                return self.exit_code().map(Some);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the kernel says of its main process (`/proc/PID/status`, `/proc/PID/mountinfo`).
    pub fn process(&self) -> Result<ProcessFacts> {
        let pid = self.pid()?;
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| LabError::Io {
                context: format!("reading /proc/{pid}/{file} of container {}", self.short()),
                source,
            })
        };
        ProcessFacts::parse(&read("status")?, &read("mountinfo")?).ok_or_else(|| {
            LabError::Spec(format!(
                "/proc/{pid}/status of container {} lacks Uid, Gid or capability lines",
                self.short()
            ))
        })
    }

    fn short(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// A node's settings where the engine changes them for the namespaces of its sandboxes: IPv6
/// on (dockerd without `--ipv6` turns it off), and the kernel's defaults for unprivileged
/// ports and ping sockets (the engine opens both to every user), so that what a pod may do
/// there is what it may do on a node, or in a dual-stack cluster's pod network.
const NODE_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv6.conf.all.disable_ipv6", "0"),
    ("net.ipv6.conf.default.disable_ipv6", "0"),
    ("net.ipv4.ip_unprivileged_port_start", "1024"),
    ("net.ipv4.ping_group_range", "1 0"),
];

/// A pod's sandbox: the container holding its network namespace.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pod: String,
    container: Container,
}

impl Sandbox {
    /// The sandbox container's id, for `--network container:ID`.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The pod it belongs to.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Makes the sandbox's network namespace the lab node `host`, as a CNI plugin sets up a
    /// pod's: the node's interfaces move into it (the kernel keeps their MACs, drops their
    /// addresses), get their addresses back and come up; then the node's namespace name
    /// points at the sandbox's namespace, so every tool the lab runs "on the node" runs there.
    /// The node's own namespace must run nothing yet.
    pub fn adopt(&self, host: &Host) -> Result<()> {
        let pid = self.container.pid()?.to_string();
        let name = host.namespace();
        let nics: Vec<crate::lab::Nic> = std::iter::once(host.eth0().clone())
            .chain(host.eth1().cloned())
            .collect();
        for nic in &nics {
            host.ns().ip(["link", "set", &nic.name, "netns", &pid])?;
        }
        host_ip(&["netns", "del", name], name)?;
        host_ip(&["netns", "attach", name, &pid], name)?;
        let ns = host.ns();
        for iface in std::iter::once("lo").chain(nics.iter().map(|n| n.name.as_str())) {
            ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0")?;
        }
        ns.ip(["link", "set", "lo", "up"])?;
        for nic in &nics {
            ns.ip(["addr", "add", &format!("{}/24", nic.ipv4), "dev", &nic.name])?;
            ns.ip([
                "addr",
                "add",
                &format!("{}/64", nic.ipv6),
                "dev",
                &nic.name,
                "nodad",
            ])?;
            ns.ip(["link", "set", &nic.name, "up"])?;
            let mac = ns.mac(&nic.name)?;
            if mac != nic.mac {
                return Err(LabError::Spec(format!(
                    "{} of {name} came into the sandbox with MAC {mac}, not {}",
                    nic.name, nic.mac
                )));
            }
        }
        Ok(())
    }
}

/// A process's identity and privileges, as `/proc/PID/status` and `mountinfo` give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    pub uid: u32,
    pub gid: u32,
    /// Effective, permitted, bounding and ambient capability sets, as bit masks.
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// Whether its root (`/`) is mounted read-only.
    pub read_only_root: bool,
}

impl ProcessFacts {
    /// Reads the two files; `None` when a line the facts need is missing.
    pub fn parse(status: &str, mountinfo: &str) -> Option<ProcessFacts> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let first_id = |name: &str| field(name)?.split_whitespace().next()?.parse().ok();
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        let read_only_root = mountinfo.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(4) == Some(&"/")
                && fields
                    .get(5)
                    .is_some_and(|options| options.split(',').any(|o| o == "ro"))
        });
        Some(ProcessFacts {
            uid: first_id("Uid")?,
            gid: first_id("Gid")?,
            effective: mask("CapEff")?,
            permitted: mask("CapPrm")?,
            bounding: mask("CapBnd")?,
            ambient: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
            seccomp: field("Seccomp")?.parse().ok()?,
            read_only_root,
        })
    }
}

/// Linux capability names by bit (capability.h), without the `CAP_` prefix.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability names set in `mask`, lowest bit first (unknown bits as `bit<N>`).
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            CAPABILITIES
                .get(bit)
                .map_or_else(|| format!("bit{bit}"), |name| (*name).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tferrolb-speaker\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\nCapBnd:\t0000000000003000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
    const MOUNTINFO: &str = "1021 1003 0:95 / / ro,relatime master:1 - overlay overlay rw,lowerdir=/x\n1022 1021 0:98 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";

    #[test]
    fn process_facts_from_proc() {
        let facts = ProcessFacts::parse(STATUS, MOUNTINFO).unwrap_or_else(|| panic!("parsed"));
        assert_eq!((facts.uid, facts.gid), (0, 0));
        assert_eq!(capability_names(facts.effective), ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(facts.bounding, facts.effective);
        assert_eq!(facts.ambient, 0);
        assert!(facts.no_new_privs && facts.read_only_root);
        assert_eq!(facts.seccomp, 2);
        let writable = MOUNTINFO.replacen(" / ro,", " / rw,", 1);
        let facts = ProcessFacts::parse(STATUS, &writable).unwrap_or_else(|| panic!("parsed"));
        assert!(!facts.read_only_root);
        assert!(
            ProcessFacts::parse("Uid:\t0\n", MOUNTINFO).is_none(),
            "missing lines"
        );
    }

    #[test]
    fn capability_bits_have_their_names() {
        assert_eq!(capability_names(0), Vec::<String>::new());
        assert_eq!(capability_names(1 << 13), ["NET_RAW"]);
        assert_eq!(
            capability_names(1 << 40 | 1),
            ["CHOWN", "CHECKPOINT_RESTORE"]
        );
        assert_eq!(capability_names(1 << 50), ["bit50"]);
    }
}
