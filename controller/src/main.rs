//! The `ferrolb-controller` binary: flags, logging, the operations endpoint, then the backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferrolb_controller::metrics::Metrics;
use ferrolb_controller::{
    kubernetes, leader, standalone,
    status::{self, View},
};
use ferrolb_daemon::endpoint::{self, Readiness};
use ferrolb_daemon::statedir::StateDir;
use ferrolb_daemon::{shutdown, telemetry};
use ferrolb_proto::api::state::{CONTROLLER_RECORD_PATH, SPEAKERS_STATUS_DIR};

/// FerroLB controller: assigns external IP addresses to LoadBalancer Services from
/// IPAddressPools, MetalLB-compatible.
///
/// With --state-dir it runs standalone on a directory of manifests (IPAddressPools, Services,
/// Namespaces) and writes each Service's allocation to <dir>/status/.
/// `ferrolb-controller status` shows what FerroLB is doing instead of running it.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: run the controller with these flags.
    #[command(flatten)]
    run: Flags,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show each LoadBalancer Service (IPs, pool, announcing node, since when, problems) and pool
    /// usage, from a state directory (--state-dir) or the cluster in KUBECONFIG.
    Status(StatusFlags),
}

#[derive(Debug, clap::Args)]
struct StatusFlags {
    /// Read this standalone state directory instead of a Kubernetes cluster.
    #[arg(long, env = "FERROLB_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Show Services of this spec.loadBalancerClass (default: Services without one).
    #[arg(long, env = "FERROLB_LB_CLASS", value_name = "CLASS")]
    lb_class: Option<String>,

    /// Namespace holding the IPAddressPools, ServiceL2Statuses and leader Lease (cluster only).
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,

    /// Name of the controller's leader-election Lease (cluster only; default as the
    /// controller's).
    #[arg(long, env = "FERROLB_LEASE_NAME")]
    lease_name: Option<String>,
}

/// The controller's flags.
#[derive(Debug, clap::Args)]
struct Flags {
    /// Run standalone on this directory of manifests instead of a Kubernetes cluster.
    #[arg(long, env = "FERROLB_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Serve only Services with this spec.loadBalancerClass (default: Services without one).
    #[arg(long, env = "FERROLB_LB_CLASS", value_name = "CLASS")]
    lb_class: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    metrics_addr: SocketAddr,

    /// Log line format.
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,

    /// Log filter, e.g. `info` or `ferrolb_controller=debug` (RUST_LOG wins when set).
    #[arg(long, env = "FERROLB_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Namespace holding the IPAddressPools, the leader Lease and (MetalLB's) install.
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,

    /// Elect a leader over a Lease so only one of several replicas writes (Kubernetes only).
    #[arg(long, env = "FERROLB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader-election Lease. Default: `ferrolb-controller`, or
    /// `ferrolb-controller-<class>` with --lb-class, so installs of two classes never share one.
    #[arg(long, env = "FERROLB_LEASE_NAME")]
    lease_name: Option<String>,

    /// Seconds a leader's Lease lasts without renewal: how long a standby waits after the
    /// leader crashed (a leader that stops cleanly releases it at once). It renews every
    /// 2/15 of this and steps down after 2/3 without a renewal (client-go's 15 s, 2 s, 10 s).
    #[arg(long, env = "FERROLB_LEASE_DURATION_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_duration_secs: u64,

    /// This replica's identity in the election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = match cli.command {
        Some(Command::Status(flags)) => return status(flags),
        None => cli.run,
    };
    telemetry::init(flags.log_format, &flags.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ferrolb-controller: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("ferrolb-controller: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> Result<(), String> {
    let metrics = Metrics::new().map_err(|err| format!("cannot register metrics: {err}"))?;
    let readiness = Readiness::default();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        if let Err(err) = trigger.on_signals().await {
            tracing::error!("cannot listen for signals: {err}");
        }
    });
    let bound = endpoint::serve(
        flags.metrics_addr,
        metrics.registry.clone(),
        readiness.clone(),
        stop.clone(),
    )
    .await
    .map_err(|err| format!("cannot serve metrics on {}: {err}", flags.metrics_addr))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");

    match flags.state_dir {
        Some(dir) => {
            let dir = StateDir::open(&dir).map_err(|err| err.to_string())?;
            standalone::run(dir, flags.lb_class, metrics, readiness, stop)
                .await
                .map_err(|err| err.to_string())
        }
        None => run_kubernetes(flags, metrics, readiness, stop).await,
    }
}

/// The API client, sending `User-Agent: ferrolb-controller/<version>`.
async fn connect() -> Result<kube::Client, kube::Error> {
    ferrolb_daemon::kubernetes::connect("ferrolb-controller", env!("CARGO_PKG_VERSION")).await
}

async fn run_kubernetes(
    flags: Flags,
    metrics: Metrics,
    readiness: Readiness,
    stop: shutdown::Shutdown,
) -> Result<(), String> {
    let client = connect().await.map_err(|err| {
        format!(
            "cannot reach the Kubernetes API (in a pod: its service account; outside: KUBECONFIG): \
             {err}; to run without Kubernetes, use --state-dir DIR"
        )
    })?;
    // One name per replica: its Lease identity and the reportingInstance of its Events.
    let identity = flags
        .identity
        .clone()
        .filter(|id| !id.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("ferrolb-controller-{}", std::process::id()));
    let (leading_tx, leading) = tokio::sync::watch::channel(!flags.leader_election);
    let election = if flags.leader_election {
        let lease = flags
            .lease_name
            .clone()
            .unwrap_or_else(|| leader::default_lease_name(flags.lb_class.as_deref()));
        let leases = kube::Api::namespaced(client.clone(), &flags.namespace);
        let timings = leader::LeaseTimings::lasting(std::time::Duration::from_secs(
            flags.lease_duration_secs,
        ));
        let candidate = leader::Candidate::new(identity.clone(), timings);
        let gauge = metrics.leader.clone();
        let mut watched = leading.clone();
        tokio::spawn(async move {
            while watched.changed().await.is_ok() {
                gauge.set(i64::from(*watched.borrow()));
            }
        });
        Some(tokio::spawn(leader::run(
            leases,
            lease,
            candidate,
            leading_tx,
            stop.clone(),
        )))
    } else {
        metrics.leader.set(1);
        None
    };
    let settings = kubernetes::Settings {
        namespace: flags.namespace,
        lb_class: flags.lb_class,
        instance: identity,
    };
    kubernetes::run(client, settings, metrics, readiness, leading, stop).await;
    // The election releases the Lease on the same stop: wait for it, or the process would exit
    // first and the standby wait out the whole lease.
    if let Some(election) = election
        && let Err(err) = election.await
    {
        tracing::warn!("the leader election task failed: {err}");
    }
    Ok(())
}

/// `ferrolb-controller status`: prints the view once.
fn status(flags: StatusFlags) -> ExitCode {
    let inputs = match flags.state_dir {
        Some(dir) => StateDir::open(&dir)
            .and_then(|dir| {
                let mut speakers = Vec::new();
                for file in dir.files_under(SPEAKERS_STATUS_DIR)? {
                    speakers.extend(dir.read_file(&file)?);
                }
                Ok((
                    dir.read()?,
                    dir.read_file(CONTROLLER_RECORD_PATH)?,
                    speakers,
                ))
            })
            .map_err(|err| format!("cannot read the state directory {}: {err}", dir.display()))
            .map(|(snapshot, record, speakers)| {
                status::from_state_dir(snapshot, record.as_deref(), &speakers, flags.lb_class)
            }),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the async runtime: {err}"))
            .and_then(|runtime| {
                runtime.block_on(async {
                    let client = connect().await.map_err(|err| {
                        format!(
                            "cannot reach the Kubernetes API (KUBECONFIG): {err}; for a standalone \
                             install, use --state-dir DIR"
                        )
                    })?;
                    let lease = flags
                        .lease_name
                        .clone()
                        .unwrap_or_else(|| leader::default_lease_name(flags.lb_class.as_deref()));
                    status::from_cluster(client, &flags.namespace, &lease, flags.lb_class)
                        .await
                        .map_err(|err| format!("cannot list from the cluster: {err}"))
                })
            }),
    };
    match inputs {
        Ok(inputs) => {
            print!(
                "{}",
                View::build(inputs).render(k8s_openapi::jiff::Timestamp::now())
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ferrolb-controller status: {err}");
            ExitCode::FAILURE
        }
    }
}
