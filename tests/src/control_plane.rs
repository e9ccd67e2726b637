//! A real Kubernetes control plane for the tier that runs FerroLB against it: etcd,
//! kube-apiserver (RBAC on, an audit log of every request) and kube-controller-manager (garbage
//! collection, namespaces, EndpointSlice mirroring) on loopback ports this process picked, with a
//! PKI made per run by openssl. Stopped by PID on drop; started with `setpriv --pdeathsig KILL`
//! from a thread that lives as long as the process, so they die with the test process too,
//! however it ends (a shared control plane in a `static` is never dropped).
//!
//! The servers are found the envtest way: `KUBEBUILDER_ASSETS` names the directory holding
//! `kube-apiserver` and `kube-controller-manager`, else `../shared/kube/install` (beside the
//! repository) unpacks them and prints it. etcd is Debian's (`etcd-server`), on PATH.
//!
//! Lab namespaces reach the API server through a [`Relay`]: a listener on `127.0.0.1:6443`
//! inside the namespace, forwarding to the server's loopback port, as a cluster's
//! `kubernetes` Service does; the serving certificate names 127.0.0.1.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::netns::Namespace;

/// Environment variable naming the directory of `kube-apiserver` and `kube-controller-manager`
/// (the envtest convention).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// Where a relay listens inside a lab namespace.
pub const RELAY_ADDR: &str = "127.0.0.1:6443";

/// The Kubernetes version of the test servers (`../shared/kube/README.md`).
pub const KUBE_VERSION: &str = "1.33.13";

/// How long the API server may take to become ready on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Prefix of the per-run directories (in /dev/shm: etcd fsyncs less there, and a crashed run's
/// directory is found and removed by the next).
const DIR_PREFIX: &str = "ferrolb-kcp-";

/// The control plane's programs: etcd from PATH, the two servers from the assets directory.
#[derive(Debug, Clone)]
pub struct Assets {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
}

impl Assets {
    /// `KUBEBUILDER_ASSETS`, else what `../shared/kube/install` prints; etcd from PATH. The
    /// error says what is missing and how to get it.
    pub fn find() -> Result<Assets> {
        let dir = match std::env::var_os(ASSETS_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let install =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kube/install");
                if !install.is_file() {
                    return Err(LabError::Spec(format!(
                        "no Kubernetes test servers: {ASSETS_ENV} is not set and {} does not exist",
                        install.display()
                    )));
                }
                let out = Command::new(&install)
                    .stderr(Stdio::piped())
                    .output()
                    .map_err(|source| LabError::Spawn {
                        command: install.display().to_string(),
                        namespace: "host".to_owned(),
                        source,
                    })?;
                let text = String::from_utf8_lossy(&out.stdout);
                match text.lines().last().map(str::trim) {
                    Some(dir) if out.status.success() && !dir.is_empty() => PathBuf::from(dir),
                    _ => {
                        return Err(LabError::Output {
                            command: install.display().to_string(),
                            namespace: "host".to_owned(),
                            reason: format!(
                                "did not print the servers' directory ({}): {}",
                                out.status,
                                String::from_utf8_lossy(&out.stderr)
                            ),
                        });
                    }
                }
            }
        };
        let apiserver = dir.join("kube-apiserver");
        let controller_manager = dir.join("kube-controller-manager");
        for path in [&apiserver, &controller_manager] {
            if !path.is_file() {
                return Err(LabError::Spec(format!(
                    "{} is missing ({ASSETS_ENV} or ../shared/kube/install must provide it)",
                    path.display()
                )));
            }
        }
        let etcd = which("etcd").ok_or_else(|| {
            LabError::Spec("etcd is not on PATH (Debian package etcd-server)".to_owned())
        })?;
        Ok(Assets {
            etcd,
            apiserver,
            controller_manager,
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// One server process, stopped by PID.
#[derive(Debug)]
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts programs from one thread that never ends, so `--pdeathsig` (sent when the thread that
/// forked dies) fires only when the whole test process does.
fn spawn_kept(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("control-plane-keeper".to_owned())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The channel lives in a static: this loop never ends before the process.
            })
            .ok();
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the control plane's keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the control plane's keeper thread did not answer"))?
}

/// A free loopback TCP port (bound and released: the servers bind it a moment later).
fn free_port() -> Result<u16> {
    let listener = StdListener::bind("127.0.0.1:0").map_err(|source| LabError::Io {
        context: "finding a free loopback port".to_owned(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| LabError::Io {
            context: "reading a bound port".to_owned(),
            source,
        })
}

/// The running control plane.
pub struct ControlPlane {
    dir: PathBuf,
    port: u16,
    servers: Vec<Server>,
    runtime: tokio::runtime::Runtime,
    admin: kube::Client,
}

impl ControlPlane {
    /// The control plane this test process shares between its tests, started on first use.
    pub fn shared() -> Result<&'static ControlPlane> {
        static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| ControlPlane::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| LabError::Spec(format!("the test control plane did not start: {e}")))
    }

    /// Makes the PKI, starts etcd, the API server and the controller manager, and returns once
    /// the API server is ready and the controller manager has made the `default` namespace's
    /// ServiceAccount.
    pub fn start() -> Result<ControlPlane> {
        let assets = Assets::find()?;
        reap_stale_dirs();
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("control-plane-client")
            .build()
            .map_err(|source| LabError::Io {
                context: "starting the control plane's client runtime".to_owned(),
                source,
            })?;
        let port = free_port()?;
        pki(&dir)?;
        write_kubeconfig(&dir, "admin", port)?;
        write_kubeconfig(&dir, "kcm", port)?;
        write_file(&dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        let mut servers = Vec::new();
        let result = (|| {
            let etcd_port = free_port()?;
            let peer_port = free_port()?;
            let client_url = format!("http://127.0.0.1:{etcd_port}");
            servers.push(server(
                &dir,
                "etcd",
                &assets.etcd,
                &[
                    "--name=ferrolb-test".into(),
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-cluster=ferrolb-test=http://127.0.0.1:{peer_port}"),
                    // Test data in /dev/shm: durability buys nothing, fsync costs seconds.
                    "--unsafe-no-fsync".into(),
                ],
            )?);
            let d = |name: &str| dir.join(name).display().to_string();
            servers.push(server(
                &dir,
                "kube-apiserver",
                &assets.apiserver,
                &[
                    format!("--etcd-servers={client_url}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    format!("--cert-dir={}", d("apiserver")),
                    format!("--tls-cert-file={}", d("serving.crt")),
                    format!("--tls-private-key-file={}", d("serving.key")),
                    format!("--client-ca-file={}", d("ca.crt")),
                    "--authorization-mode=Node,RBAC".into(),
                    "--service-account-issuer=https://kubernetes.default.svc".into(),
                    format!("--service-account-key-file={}", d("sa.pub")),
                    format!("--service-account-signing-key-file={}", d("sa.key")),
                    "--api-audiences=https://kubernetes.default.svc".into(),
                    "--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112".into(),
                    "--endpoint-reconciler-type=none".into(),
                    format!("--audit-policy-file={}", d("audit-policy.yaml")),
                    format!("--audit-log-path={}", d("audit.log")),
                    "--audit-log-maxsize=0".into(),
                ],
            )?);
            wait_ready(&dir, port, &mut servers)?;
            servers.push(server(
                &dir,
                "kube-controller-manager",
                &assets.controller_manager,
                &[
                    format!("--kubeconfig={}", d("kcm.kubeconfig")),
                    format!("--authentication-kubeconfig={}", d("kcm.kubeconfig")),
                    format!("--authorization-kubeconfig={}", d("kcm.kubeconfig")),
                    format!("--service-account-private-key-file={}", d("sa.key")),
                    format!("--root-ca-file={}", d("ca.crt")),
                    "--use-service-account-credentials=true".into(),
                    // No kubelet posts node heartbeats: hand-made Nodes would turn unreachable.
                    "--controllers=*,-nodelifecycle".into(),
                    "--bind-address=127.0.0.1".into(),
                    "--secure-port=0".into(),
                    "--leader-elect=false".into(),
                ],
            )?);
            Ok(())
        })();
        if let Err(err) = result {
            servers.iter_mut().rev().for_each(Server::stop);
            return Err(err);
        }
        let admin = runtime.block_on(client_from(&dir.join("admin.kubeconfig")));
        let mut plane = match admin {
            Ok(admin) => ControlPlane {
                dir,
                port,
                servers,
                runtime,
                admin,
            },
            Err(err) => {
                servers.iter_mut().rev().for_each(Server::stop);
                return Err(err);
            }
        };
        plane.wait_default_service_account()?;
        Ok(plane)
    }

    fn wait_default_service_account(&mut self) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.admin.clone(), "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(_)) = self.block_on(api.get_opt("default")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Output {
                    command: "kube-controller-manager".to_owned(),
                    namespace: "host".to_owned(),
                    reason: format!(
                        "made no ServiceAccount default/default within {READY_TIMEOUT:?}; log:\n{}",
                        self.log("kube-controller-manager")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a future on the control plane's client runtime (the admin client and relays live
    /// there).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A client with the cluster-admin certificate (`system:masters`): for the test's own
    /// set-up and checks, never for FerroLB.
    pub fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    /// The admin kubeconfig, for kubectl.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The cluster CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The API server's loopback address, in this (the host's) network namespace.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The audit log: one JSON object per request (who, verb, resource, response code).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The directory of this run (PKI, kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PIDs of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.servers.iter().map(|s| (s.name, s.pid())).collect()
    }

    /// What a server has logged (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log(&self, name: &str) -> String {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| std::fs::read(&s.log).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Makes the API server reachable at [`RELAY_ADDR`] inside `ns`, until the relay is dropped.
    pub fn relay_into(&self, ns: &Namespace) -> Result<Relay> {
        let path = format!("/run/netns/{}", ns.name());
        let listener = std::thread::spawn(move || -> std::io::Result<StdListener> {
            // A thread of its own enters the namespace: the listener's socket belongs to it
            // from then on, and the thread ends there.
            let file = File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let listener = StdListener::bind(RELAY_ADDR)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| LabError::Spec(format!("the relay thread for {} panicked", ns.name())))?
        .map_err(|source| LabError::Io {
            context: format!("listening on {RELAY_ADDR} in namespace {}", ns.name()),
            source,
        })?;
        let target = self.address();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Connections are made by the runtime's threads, which are in the host's namespace.
        let task = self.runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let mut connections = tokio::task::JoinSet::new();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            connections.abort_all();
        });
        Ok(Relay {
            namespace: ns.name().to_owned(),
            stop: Some(stop),
            task,
        })
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.servers.iter_mut().rev().for_each(Server::stop);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The API server reachable from inside a lab namespace; stops forwarding when dropped.
#[derive(Debug)]
pub struct Relay {
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// The namespace it listens in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Every request, at metadata level: who asked for what, and what the server answered. The tier
/// reads it for FerroLB's service accounts: no 403, and no grant left unused.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";

fn server(dir: &Path, name: &'static str, program: &Path, args: &[String]) -> Result<Server> {
    let log = dir.join(format!("{name}.log"));
    let out = File::create(&log).map_err(|source| LabError::Io {
        context: format!("creating {}", log.display()),
        source,
    })?;
    let err = out.try_clone().map_err(|source| LabError::Io {
        context: format!("opening {}", log.display()),
        source,
    })?;
    let mut command = Command::new("setpriv");
    command
        .args(["--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let argv: Vec<OsString> = std::iter::once(program.as_os_str().to_owned())
        .chain(args.iter().map(OsString::from))
        .collect();
    let child = spawn_kept(command).map_err(|source| LabError::Spawn {
        command: crate::netns::display_argv(&argv),
        namespace: "host".to_owned(),
        source,
    })?;
    Ok(Server { name, child, log })
}

fn wait_ready(dir: &Path, port: u16, servers: &mut [Server]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("https://127.0.0.1:{port}/readyz");
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
            .arg(dir.join("ca.crt"))
            .arg("--cert")
            .arg(dir.join("admin.crt"))
            .arg("--key")
            .arg(dir.join("admin.key"))
            .arg(&url)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        let read = |name: &str| {
            std::fs::read(dir.join(format!("{name}.log")))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let exited = servers
            .iter_mut()
            .find_map(|s| matches!(s.child.try_wait(), Ok(Some(_))).then_some(s.name));
        if exited.is_some() || Instant::now() >= deadline {
            return Err(LabError::Output {
                command: "kube-apiserver".to_owned(),
                namespace: "host".to_owned(),
                reason: format!(
                    "not ready at {url} within {READY_TIMEOUT:?}{}; etcd log tail:\n{}\napiserver log tail:\n{}",
                    exited
                        .map(|name| format!(" ({name} exited)"))
                        .unwrap_or_default(),
                    tail(&read("etcd"), 20),
                    tail(&read("kube-apiserver"), 40)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The run's PKI: a CA, the API server's serving certificate (127.0.0.1, localhost), client
/// certificates for the admin (`system:masters`) and the controller manager, and the service
/// account signing key pair.
fn pki(dir: &Path) -> Result<()> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|source| LabError::Spawn {
                command: format!("openssl {}", args.join(" ")),
                namespace: "host".to_owned(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::CommandFailed {
                command: format!("openssl {}", args.join(" ")),
                namespace: "host".to_owned(),
                status: out.status.to_string(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    write_file(
        &dir.join("serving.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    write_file(
        &dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )?;
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=ferrolb-test-ca",
    ])?;
    for (name, subject, ext) in [
        ("serving", "/CN=kube-apiserver", "serving.ext"),
        (
            "admin",
            "/O=system:masters/CN=ferrolb-test-admin",
            "client.ext",
        ),
        ("kcm", "/CN=system:kube-controller-manager", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            ext,
        ])?;
    }
    openssl(&["genrsa", "-out", "sa.key", "2048"])?;
    openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn write_kubeconfig(dir: &Path, who: &str, port: u16) -> Result<()> {
    let d = |name: &str| dir.join(name).display().to_string();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: {who}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {who}}}\ncurrent-context: test\n",
        ca = d("ca.crt"),
        crt = d(&format!("{who}.crt")),
        key = d(&format!("{who}.key")),
    );
    write_file(&dir.join(format!("{who}.kubeconfig")), &text)
}

/// A kubeconfig naming `server` with a bearer token, for a FerroLB daemon.
pub fn token_kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n",
        ca.display()
    )
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let bad = |reason: String| LabError::Output {
        command: format!("kube client from {}", path.display()),
        namespace: "host".to_owned(),
        reason,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

/// Removes the directories of earlier runs whose process is gone (a static control plane is
/// never dropped; its servers died with it, its directory stays).
fn reap_stale_dirs() {
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(DIR_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
