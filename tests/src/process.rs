//! Background processes inside lab namespaces: spawned by PID, paused, resumed, stopped and reaped.
//!
//! Each process is the leader of its own process group (`ip netns exec` execs the program, so
//! the PID is the program's), and signals go to the whole group: a daemon's children (keepalived
//! runs a parent and a VRRP child) are paused, resumed and killed together with it.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::netns::{Namespace, display_argv};

/// How long [`Background::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for a process to die after SIGKILL before giving up on it.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The processes a lab started, so that teardown can stop the ones still running.
#[derive(Debug)]
pub(crate) struct ProcessRegistry {
    dir: PathBuf,
    next_log: AtomicU32,
    slots: Mutex<Vec<Arc<Mutex<Slot>>>>,
}

impl ProcessRegistry {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ProcessRegistry {
            dir,
            next_log: AtomicU32::new(0),
            slots: Mutex::new(Vec::new()),
        }
    }

    /// The lab's directory, for logs and capture files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh file name in the lab's directory: `<seq>-<stem>.<ext>`.
    pub(crate) fn next_path(&self, stem: &str, ext: &str) -> PathBuf {
        let seq = self.next_log.fetch_add(1, Ordering::Relaxed);
        let stem: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join(format!("{seq:03}-{stem}.{ext}"))
    }

    fn register(&self, slot: Arc<Mutex<Slot>>) {
        lock(&self.slots).push(slot);
    }

    /// PIDs of every process started in the lab, running or not.
    pub(crate) fn pids(&self) -> Vec<u32> {
        lock(&self.slots)
            .iter()
            .map(|slot| lock(slot).pid)
            .collect()
    }

    /// Kills every process still running and reaps it; returns what went wrong.
    pub(crate) fn kill_all(&self) -> Vec<LabError> {
        let slots = std::mem::take(&mut *lock(&self.slots));
        slots
            .iter()
            .filter_map(|slot| lock(slot).terminate(Signal::SIGKILL, Duration::ZERO).err())
            .collect()
    }
}

/// Locks a mutex, carrying on past a poisoned one: the data is a process table, still valid.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One spawned process, shared between its handle and the lab's registry so that exactly one of
/// them reaps it, and nobody signals its PID after that (when the PID may belong to another).
#[derive(Debug)]
struct Slot {
    pid: u32,
    command: String,
    namespace: String,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Slot {
    fn error(&self, action: &'static str, reason: impl ToString) -> LabError {
        LabError::Process {
            action,
            pid: self.pid,
            command: self.command.clone(),
            namespace: self.namespace.clone(),
            reason: reason.to_string(),
        }
    }

    /// Signals the process group; an already gone group is not an error.
    fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.is_some() {
            return Err(self.error("signalling", "it has already exited and was reaped"));
        }
        let pid = i32::try_from(self.pid).map_err(|e| self.error("signalling", e))?;
        match killpg(Pid::from_raw(pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(self.error("signalling", format!("{signal}: {errno}"))),
        }
    }

    /// Whether the process has exited (it is then a zombie, not yet reaped, so its PID and
    /// process group stay reserved).
    fn has_exited(&self) -> Result<bool> {
        if self.exit.is_some() {
            return Ok(true);
        }
        let pid = i32::try_from(self.pid).map_err(|e| self.error("waiting for", e))?;
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) => Ok(true),
            Err(errno) => Err(self.error("waiting for", errno)),
        }
    }

    /// Polls for the exit until `deadline`: there is no event to wait on for a process that is
    /// not ours to block on while holding the lock.
    fn wait_exit_until(&self, deadline: Instant) -> Result<bool> {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.has_exited()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Reaps an exited process after killing whatever is left of its group.
    fn reap(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // The leader is a zombie, so its group id cannot have been reused: safe to signal.
        let _ = self.signal(Signal::SIGKILL);
        let status = self.child.wait().map_err(|e| self.error("reaping", e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Sends `signal` (then SIGCONT, so a paused process can act on it), waits up to `grace`,
    /// then SIGKILLs the group and reaps the leader.
    fn terminate(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        if signal != Signal::SIGKILL {
            self.signal(signal)?;
            self.signal(Signal::SIGCONT)?;
            if self.wait_exit_until(Instant::now() + grace)? {
                return self.reap();
            }
        }
        self.signal(Signal::SIGKILL)?;
        if !self.wait_exit_until(Instant::now() + KILL_TIMEOUT)? {
            return Err(self.error(
                "killing",
                format!("still running {KILL_TIMEOUT:?} after SIGKILL (uninterruptible sleep?)"),
            ));
        }
        self.reap()
    }
}

/// A process running in the background inside a lab namespace.
///
/// Dropping the handle kills the process group by PID and reaps it; so does the lab's teardown
/// for handles still alive then.
#[derive(Debug)]
pub struct Background {
    pid: u32,
    command: String,
    namespace: String,
    log: Option<PathBuf>,
    slot: Arc<Mutex<Slot>>,
}

impl Background {
    /// Spawns `argv` in `ns` as its own process group. Stdout (and stderr unless
    /// `pipe_stderr`) go to a log file in the lab's directory.
    pub(crate) fn spawn(
        ns: &Namespace,
        argv: &[OsString],
        pipe_stderr: bool,
    ) -> Result<(Background, Option<ChildStderr>)> {
        let command = display_argv(argv);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Spec(format!("empty command line for {}", ns.name())))?;
        let stem = Path::new(program)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let registry = ns.registry();
        let log = registry.next_path(&format!("{}-{stem}", ns.name()), "log");
        let io_error = |source| LabError::Io {
            context: format!("creating log file {}", log.display()),
            source,
        };
        let out = File::create(&log).map_err(io_error)?;
        let err = if pipe_stderr {
            Stdio::piped()
        } else {
            Stdio::from(out.try_clone().map_err(io_error)?)
        };
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: command.clone(),
            namespace: ns.name().to_owned(),
            source,
        })?;
        let stderr = child.stderr.take();
        let pid = child.id();
        let slot = Arc::new(Mutex::new(Slot {
            pid,
            command: command.clone(),
            namespace: ns.name().to_owned(),
            child,
            exit: None,
        }));
        registry.register(Arc::clone(&slot));
        let process = Background {
            pid,
            command,
            namespace: ns.name().to_owned(),
            log: Some(log),
            slot,
        };
        Ok((process, stderr))
    }

    /// The process ID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line, as typed.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The name of the namespace it runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// What it has written to its log so far.
    pub fn log(&self) -> Result<String> {
        let Some(path) = &self.log else {
            return Ok(String::new());
        };
        std::fs::read(path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|source| LabError::Io {
                context: format!("reading log {}", path.display()),
                source,
            })
    }

    /// Whether it is still running (a paused process is running).
    pub fn is_running(&self) -> Result<bool> {
        lock(&self.slot).has_exited().map(|exited| !exited)
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        lock(&self.slot).signal(signal)
    }

    /// Freezes it (SIGSTOP to the group): a crashed node that still holds its addresses.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a paused process go on (SIGCONT to the group).
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, then SIGKILL if it has not exited after [`STOP_GRACE`]; reaps it and returns
    /// its exit status. Stopping an exited process returns the status it had.
    pub fn stop(&self) -> Result<ExitStatus> {
        self.stop_within(STOP_GRACE)
    }

    /// [`stop`](Self::stop) with a grace period of the caller's choice.
    pub fn stop_within(&self, grace: Duration) -> Result<ExitStatus> {
        lock(&self.slot).terminate(Signal::SIGTERM, grace)
    }

    /// SIGKILL at once, then reap.
    pub fn kill(&self) -> Result<ExitStatus> {
        lock(&self.slot).terminate(Signal::SIGKILL, Duration::ZERO)
    }

    /// Waits up to `timeout` for it to exit by itself; `None` if it is still running.
    pub fn wait_within(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let mut slot = lock(&self.slot);
        if slot.wait_exit_until(Instant::now() + timeout)? {
            slot.reap().map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Err(error) = lock(&self.slot).terminate(Signal::SIGKILL, Duration::ZERO) {
            eprintln!("ferrolb lab: {error}");
        }
    }
}
