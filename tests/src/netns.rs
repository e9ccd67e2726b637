//! A network namespace of the lab, and running commands inside it with bounded time and clear errors.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ferrolb_proto::wire::MacAddr;

use crate::capture::Capture;
use crate::error::{LabError, Result};
use crate::process::{Background, ProcessRegistry};

/// How long a command run to completion may take unless the caller says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Namespace::capture`] waits for tcpdump to say it is listening.
pub const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace the lab created. Cloning it clones the handle, not the namespace.
///
/// Every background process or capture started through it is registered with its lab, which
/// stops them at teardown.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
    registry: Arc<ProcessRegistry>,
}

impl Namespace {
    pub(crate) fn new(name: String, registry: Arc<ProcessRegistry>) -> Self {
        Namespace { name, registry }
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that entered this namespace (threads it spawns inherit it), for
    /// library code under test that must see the namespace's links and tables.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics (test code: a failed test).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let name = self.name.clone();
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("the thread in {name} panicked"))
    }

    pub(crate) fn registry(&self) -> &Arc<ProcessRegistry> {
        &self.registry
    }

    /// A [`Command`] that runs `program` inside this namespace (`ip netns exec NAME program`).
    ///
    /// For callers that need full control over stdio; prefer [`run`](Self::run) and
    /// [`spawn`](Self::spawn), which bound the time and register the process with the lab.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `argv` in the namespace and returns its output; a non-zero exit is an error that
    /// names the command, the namespace, the exit status and stderr.
    pub fn run<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_within(argv, DEFAULT_COMMAND_TIMEOUT)
    }

    /// [`run`](Self::run) with a timeout of the caller's choice.
    pub fn run_within<I, S>(&self, argv: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_argv(collect_argv(argv, &self.name)?, timeout, true)
    }

    /// Runs `argv` in the namespace and returns its output whatever its exit status, for
    /// commands that are expected to fail (a ping that must not be answered). Still bounded in
    /// time: a command running past [`DEFAULT_COMMAND_TIMEOUT`] is killed and is an error.
    pub fn exec<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_within(argv, DEFAULT_COMMAND_TIMEOUT)
    }

    /// [`exec`](Self::exec) with a timeout of the caller's choice.
    pub fn exec_within<I, S>(&self, argv: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_argv(collect_argv(argv, &self.name)?, timeout, false)
    }

    fn exec_argv(&self, argv: Vec<OsString>, timeout: Duration, checked: bool) -> Result<Output> {
        let command = display_argv(&argv);
        let Some((program, args)) = argv.split_first() else {
            return Err(LabError::Spec(format!(
                "empty command line for {}",
                self.name
            )));
        };
        let mut cmd = self.command(program);
        cmd.args(args);
        run_command(cmd, &command, &self.name, timeout, checked)
    }

    /// Runs `ip -n NAME args...`: iproute2 acting on this namespace from outside it.
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv: Vec<OsString> = vec!["-n".into(), (&self.name).into()];
        argv.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        host_ip(&argv, &self.name)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.conf.eth0.arp_ignore`, `1`) by writing
    /// its file under `/proc/sys`, which `ip netns exec` shows for this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run([
            "sh",
            "-c",
            "printf '%s\\n' \"$1\" > \"$2\"",
            "sysctl",
            value,
            &path,
        ])?;
        Ok(())
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> Result<MacAddr> {
        let output = self.ip(["-j", "link", "show", "dev", iface])?;
        let command = format!("ip -n {} -j link show dev {iface}", self.name);
        let bad = |reason: String| LabError::Output {
            command: command.clone(),
            namespace: self.name.clone(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| bad(format!("not JSON: {e}")))?;
        let address = json
            .get(0)
            .and_then(|link| link.get("address"))
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("no `address` field".to_owned()))?;
        address
            .parse()
            .map_err(|e: ferrolb_proto::wire::ParseMacAddrError| bad(e.to_string()))
    }

    /// Starts `argv` in the background inside the namespace; stdout and stderr go to a log file
    /// in the lab's directory. The lab stops it at teardown if the caller has not.
    pub fn spawn<I, S>(&self, argv: I) -> Result<Background>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv, &self.name)?;
        Background::spawn(self, &argv, false).map(|(process, _)| process)
    }

    /// Starts a packet capture on `iface` with a pcap `filter` (may be empty) and returns once
    /// tcpdump is listening, or fails after [`CAPTURE_START_TIMEOUT`].
    pub fn capture(&self, iface: &str, filter: &str) -> Result<Capture> {
        Capture::start(self, iface, filter, CAPTURE_START_TIMEOUT)
    }
}

fn collect_argv<I, S>(argv: I, namespace: &str) -> Result<Vec<OsString>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
    if argv.is_empty() {
        return Err(LabError::Spec(format!(
            "empty command line for namespace {namespace}"
        )));
    }
    Ok(argv)
}

/// A command line as a person would type it, for error messages.
pub(crate) fn display_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.as_ref().to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ip args...` in the host's namespace (creating and deleting lab namespaces and veths);
/// `subject` is the lab namespace the command is about, for the error message.
pub(crate) fn host_ip<S: AsRef<OsStr>>(args: &[S], subject: &str) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let mut argv: Vec<OsString> = vec!["ip".into()];
    argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
    run_command(
        cmd,
        &display_argv(&argv),
        subject,
        DEFAULT_COMMAND_TIMEOUT,
        true,
    )
}

/// Runs `cmd` to completion within `timeout`, collecting stdout and stderr. With `checked`, a
/// non-zero exit is a [`LabError::CommandFailed`].
///
/// Waits on the end of both output pipes (an event), then for the exit itself, polling with a
/// deadline only for a child that closed its pipes but keeps running.
pub(crate) fn run_command(
    mut cmd: Command,
    command: &str,
    namespace: &str,
    timeout: Duration,
    checked: bool,
) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        command: command.to_owned(),
        namespace: namespace.to_owned(),
        source,
    })?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let timed_out = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
        LabError::Timeout {
            command: command.to_owned(),
            namespace: namespace.to_owned(),
            timeout,
        }
    };
    let Ok(stdout) = stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        return Err(timed_out(&mut child));
    };
    let Ok(stderr) = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        return Err(timed_out(&mut child));
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => return Err(timed_out(&mut child)),
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(source) => {
                return Err(LabError::Io {
                    context: format!("waiting for `{command}` in namespace {namespace}"),
                    source,
                });
            }
        }
    };
    let output = Output {
        status,
        stdout,
        stderr,
    };
    if checked && !output.status.success() {
        return Err(LabError::CommandFailed {
            command: command.to_owned(),
            namespace: namespace.to_owned(),
            status: output.status.to_string(),
            stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// Reads a pipe to its end on a thread; the receiver gets the bytes once the writer closed it.
fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output early; the exit status still tells the story.
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}
