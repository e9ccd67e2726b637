//! Requests through a VIP at a steady rate from the lab's client, counted: what a rolling
//! restart must not lose. One HTTP/1.0 request per fresh connection, each held open a moment
//! before it is sent, so some are in flight whenever an IP moves.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lab::Host;
use crate::process::Background;

/// The client, in Python (the lab's client has python3). It prints `sent failed reset
/// {errors}` when the stop file appears: `failed` is every request that did not get its 200
/// for any reason, `reset` the part of them whose connection was established and then reset.
const CLIENT: &str = r#"
import socket, sys, time, os
ip, rate, hold, stop = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sent = failed = reset = 0
period = 1.0 / rate
next_at = time.monotonic()
errors = {}
while not os.path.exists(stop):
    now = time.monotonic()
    if now < next_at:
        time.sleep(next_at - now)
    next_at += period
    sent += 1
    connected = False
    try:
        s = socket.create_connection((ip, 80), timeout=1.0)
        connected = True
        s.settimeout(1.0)
        time.sleep(hold)
        s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.0 200"):
            raise OSError("status " + data[:20].decode(errors="replace"))
    except OSError as e:
        failed += 1
        if connected and isinstance(e, (ConnectionResetError, BrokenPipeError)):
            reset += 1
        errors[str(e)] = errors.get(str(e), 0) + 1
print(sent, failed, reset, errors, flush=True)
"#;

/// What the client counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
    pub reset: u64,
    /// The client's own line, errors by message included.
    pub line: String,
}

impl LoadReport {
    /// Reads the client's `sent failed reset {errors}` line.
    pub fn parse(line: &str) -> Option<LoadReport> {
        let mut fields = line.split_whitespace();
        let mut number = || fields.next()?.parse::<u64>().ok();
        Some(LoadReport {
            sent: number()?,
            failed: number()?,
            reset: number()?,
            line: line.trim().to_owned(),
        })
    }
}

/// The client running in the background.
#[derive(Debug)]
pub struct RequestLoad {
    process: Background,
    stop_file: PathBuf,
}

impl RequestLoad {
    /// Starts `rate` requests a second to `ip:80` from `client`, each connection held `hold`
    /// before its request; the script and its stop file live in `dir`.
    pub fn start(
        client: &Host,
        dir: &std::path::Path,
        ip: Ipv4Addr,
        rate: u32,
        hold: Duration,
    ) -> Result<RequestLoad> {
        let script = dir.join("load.py");
        let stop_file = dir.join("load.stop");
        std::fs::write(&script, CLIENT).map_err(|source| LabError::Io {
            context: format!("writing {}", script.display()),
            source,
        })?;
        let process = client.ns().spawn([
            "python3".to_owned(),
            script.to_string_lossy().into_owned(),
            ip.to_string(),
            rate.to_string(),
            format!("{:.3}", hold.as_secs_f64()),
            stop_file.to_string_lossy().into_owned(),
        ])?;
        Ok(RequestLoad { process, stop_file })
    }

    /// Tells the client to stop, waits for its count (bounded) and reads it.
    pub fn finish(self) -> Result<LoadReport> {
        std::fs::write(&self.stop_file, "").map_err(|source| LabError::Io {
            context: format!("writing {}", self.stop_file.display()),
            source,
        })?;
        self.process.wait_within(Duration::from_secs(5))?;
        let log = self.process.log()?;
        LoadReport::parse(&log).ok_or_else(|| LabError::Output {
            command: self.process.command().to_owned(),
            namespace: self.process.namespace().to_owned(),
            reason: format!("no `sent failed reset` line: {log}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LoadReport;

    #[test]
    fn the_clients_line_reads() {
        let report = LoadReport::parse("2301 0 0 {}\n").unwrap_or_else(|| panic!("parsed"));
        assert_eq!((report.sent, report.failed, report.reset), (2301, 0, 0));
        let report =
            LoadReport::parse("10 2 1 {'timed out': 1}").unwrap_or_else(|| panic!("parsed"));
        assert_eq!((report.failed, report.reset), (2, 1));
        assert!(LoadReport::parse("Traceback (most recent call last):").is_none());
        assert!(LoadReport::parse("").is_none());
    }
}
