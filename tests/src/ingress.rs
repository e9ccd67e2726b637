//! The ingress proxy of the lab: nginx in its own namespace, with its own configuration, pid and
//! log files in the lab's directory, answering every request with a page that names itself and
//! the address the request came from (after kube-proxy's masquerade: the node it came through).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::lab::Host;
use crate::process::Background;

/// How long nginx may take to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// nginx running as the ingress proxy; stopped when dropped (and at lab teardown).
#[derive(Debug)]
pub struct IngressProxy {
    process: Background,
    dir: PathBuf,
}

/// The first line of every page the ingress proxy serves, for checks.
pub const GREETING: &str = "ingress proxy";

/// nginx's configuration: foreground, one worker, every path under `dir`, port 80 on IPv4 and
/// IPv6, and a page naming `name` and `$remote_addr`.
pub fn config(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  keepalive_timeout 0;\n  \
         server {{\n    listen 80 default_server;\n    listen [::]:80 ipv6only=on default_server;\n    \
         default_type text/plain;\n    \
         location / {{ return 200 \"{GREETING} {name} (nginx) answered; request came through $remote_addr\\n\"; }}\n  }}\n}}\n"
    )
}

impl IngressProxy {
    /// Starts nginx on `host` with its files in `dir` (created), and returns once it answers on
    /// its own loopback.
    pub fn start(host: &Host, dir: &Path) -> Result<IngressProxy> {
        let io = |context: String| move |source| LabError::Io { context, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, host.name()))
            .map_err(io(format!("writing {}", conf.display())))?;
        let process = host.ns().spawn([
            "nginx",
            "-p",
            &dir.to_string_lossy(),
            "-c",
            &conf.to_string_lossy(),
        ])?;
        let proxy = IngressProxy {
            process,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = host.ns().exec_within(
                ["curl", "-s", "-m", "1", "http://127.0.0.1/"],
                Duration::from_secs(3),
            )?;
            if String::from_utf8_lossy(&out.stdout).starts_with(GREETING) {
                return Ok(proxy);
            }
            if Instant::now() >= deadline || !proxy.process.is_running()? {
                let error_log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(LabError::Output {
                    command: "nginx (ingress proxy)".to_owned(),
                    namespace: host.namespace().to_owned(),
                    reason: format!(
                        "not answering on 127.0.0.1:80 within {START_TIMEOUT:?}; log: {} {error_log}",
                        proxy.process.log().unwrap_or_default()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nginx master process.
    pub fn process(&self) -> &Background {
        &self.process
    }

    /// The directory holding its configuration and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
