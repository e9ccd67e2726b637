//! The lab's error type: every failure names the command, the namespace and what went wrong.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Something in the lab failed; the message says which command, in which namespace, and why.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab's shape was asked for in a way the lab cannot build.
    #[error("invalid lab spec: {0}")]
    Spec(String),

    /// A program could not be started at all (not installed, not executable, ...).
    #[error("could not start `{command}` in namespace {namespace}: {source}")]
    Spawn {
        command: String,
        namespace: String,
        #[source]
        source: io::Error,
    },

    /// A command ran and exited unsuccessfully.
    #[error("`{command}` in namespace {namespace} failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        namespace: String,
        status: String,
        stdout: String,
        stderr: String,
    },

    /// A command did not finish in time; it was killed.
    #[error(
        "`{command}` in namespace {namespace} did not finish within {timeout:?}; it was killed"
    )]
    Timeout {
        command: String,
        namespace: String,
        timeout: Duration,
    },

    /// A command's output was not what the lab expected to read from it.
    #[error("unexpected output from `{command}` in namespace {namespace}: {reason}")]
    Output {
        command: String,
        namespace: String,
        reason: String,
    },

    /// Sending a signal to (or waiting for) a background process failed.
    #[error("{action} process {pid} (`{command}`) in namespace {namespace} failed: {reason}")]
    Process {
        action: &'static str,
        pid: u32,
        command: String,
        namespace: String,
        reason: String,
    },

    /// tcpdump did not report that it was listening in time, or exited before it did.
    #[error(
        "capture on {iface} in namespace {namespace} was not listening within {timeout:?}: {reason}; tcpdump said: {stderr}"
    )]
    CaptureNotListening {
        iface: String,
        namespace: String,
        timeout: Duration,
        reason: String,
        stderr: String,
    },

    /// A capture's frames did not satisfy the caller's condition in time.
    #[error(
        "capture on {iface} in namespace {namespace}: {what} not seen within {timeout:?} ({frames} frames captured)"
    )]
    CaptureWait {
        iface: String,
        namespace: String,
        what: String,
        timeout: Duration,
        frames: usize,
    },

    /// A capture file could not be read or is not a pcap file.
    #[error("capture file {}: {reason}", path.display())]
    Pcap { path: PathBuf, reason: String },

    /// A local file operation (the lab directory, a log file) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
