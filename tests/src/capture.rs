//! Packet captures with tcpdump inside a lab namespace, read back as timestamped frames.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::netns::Namespace;
use crate::pcap::{self, CapturedFrame};
use crate::process::Background;

/// How long [`Capture::stop`] gives tcpdump to flush and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running tcpdump writing every frame it sees on one interface to a pcap file.
///
/// Started by [`Namespace::capture`], which returns only once tcpdump is listening: frames sent
/// after that are in the capture.
#[derive(Debug)]
pub struct Capture {
    process: Background,
    iface: String,
    namespace: String,
    path: PathBuf,
    stderr: Receiver<String>,
}

impl Capture {
    pub(crate) fn start(
        ns: &Namespace,
        iface: &str,
        filter: &str,
        timeout: Duration,
    ) -> Result<Capture> {
        let path = ns
            .registry()
            .next_path(&format!("{}-{iface}", ns.name()), "pcap");
        let mut argv: Vec<std::ffi::OsString> = vec![
            "tcpdump".into(),
            "-i".into(),
            iface.into(),
            "-w".into(),
            path.clone().into(),
            // Without these, frames still buffered are lost when tcpdump is stopped.
            "--immediate-mode".into(),
            "-U".into(),
            "--time-stamp-precision=nano".into(),
            "-n".into(),
            // tcpdump would drop to its own user, which may not write into the lab directory.
            "-Z".into(),
            "root".into(),
        ];
        if !filter.is_empty() {
            argv.push(filter.into());
        }
        let (process, stderr) = Background::spawn(ns, &argv, true)?;
        let lines = forward_lines(stderr);
        let not_listening = |reason: &str, seen: &[String]| LabError::CaptureNotListening {
            iface: iface.to_owned(),
            namespace: ns.name().to_owned(),
            timeout,
            reason: reason.to_owned(),
            stderr: seen.join("\n"),
        };
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(not_listening("timed out", &seen));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = process.wait_within(Duration::from_secs(1));
                    let reason = match status {
                        Ok(Some(status)) => format!("tcpdump exited ({status})"),
                        _ => "tcpdump closed its stderr".to_owned(),
                    };
                    return Err(not_listening(&reason, &seen));
                }
            }
        }
        Ok(Capture {
            process,
            iface: iface.to_owned(),
            namespace: ns.name().to_owned(),
            path,
            stderr: lines,
        })
    }

    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tcpdump process.
    pub fn process(&self) -> &Background {
        &self.process
    }

    /// The frames written so far, while tcpdump keeps running.
    pub fn frames(&self) -> Result<Vec<CapturedFrame>> {
        read_frames(&self.path, true)
    }

    /// Waits until `done` holds for the frames captured so far, up to `timeout`, and returns
    /// them; `what` names the awaited frames in the error.
    ///
    /// Polls the file (tcpdump writes each frame as it comes; there is no event to wait on).
    /// Use it before [`stop`](Self::stop) so that no awaited frame is still in flight.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[CapturedFrame]) -> bool,
    ) -> Result<Vec<CapturedFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let frames = self.frames()?;
            if done(&frames) {
                return Ok(frames);
            }
            if Instant::now() >= deadline {
                return Err(LabError::CaptureWait {
                    iface: self.iface.clone(),
                    namespace: self.namespace.clone(),
                    what: what.to_owned(),
                    timeout,
                    frames: frames.len(),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops tcpdump (it flushes on SIGTERM) and returns every frame it captured.
    pub fn stop(self) -> Result<Vec<CapturedFrame>> {
        let status = self.process.stop_within(STOP_GRACE)?;
        read_frames(&self.path, false).map_err(|error| match error {
            LabError::Pcap { path, reason } => {
                let said: Vec<String> = self.stderr.try_iter().collect();
                LabError::Pcap {
                    path,
                    reason: format!("{reason} (tcpdump {status}: {})", said.join("; ")),
                }
            }
            other => other,
        })
    }
}

/// Reads the pcap file; `running` tolerates a file tcpdump has not created or filled yet.
fn read_frames(path: &Path, running: bool) -> Result<Vec<CapturedFrame>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if running && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LabError::Pcap {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if !running && bytes.len() < 24 {
        return Err(LabError::Pcap {
            path: path.to_owned(),
            reason: format!("only {} bytes: tcpdump never wrote its header", bytes.len()),
        });
    }
    pcap::parse(&bytes).map_err(|reason| LabError::Pcap {
        path: path.to_owned(),
        reason,
    })
}

/// Forwards each line of tcpdump's stderr over a channel, until tcpdump closes it.
fn forward_lines(stderr: Option<std::process::ChildStderr>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = stderr {
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}
