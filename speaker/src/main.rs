//! The `ferrolb-speaker` binary: flags, logging, and the wiring of the library's parts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferrolb_daemon::endpoint::{self, Readiness};
use ferrolb_daemon::shutdown;
use ferrolb_daemon::statedir::StateDir;
use ferrolb_daemon::telemetry;
use ferrolb_proto::gossip::KeyRing;
use ferrolb_proto::wire::mark::Marker;
use ferrolb_speaker::conflict::ProbePlan;
use ferrolb_speaker::gratuitous::GratuitousPlan;
use ferrolb_speaker::interfaces::{self, DEFAULT_EXCLUDE, ExcludePatterns};
use ferrolb_speaker::lifecycle::CheckPlan;
use ferrolb_speaker::local_vips::{self, LocalVips};
use ferrolb_speaker::membership::{Config as ProtocolConfig, Membership, MembershipConfig};
use ferrolb_speaker::metrics::Metrics;
use ferrolb_speaker::node::{self, Feeds, NodeSettings};
use ferrolb_speaker::{Announcer, AnnouncerConfig, Event, Intent, Start};
use ferrolb_speaker::{kubernetes, standalone};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "ferrolb-speaker",
    version,
    about = "FerroLB speaker: answers ARP and NDP for the Service IPs this node owns."
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "FERROLB_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: telemetry::LogFormat,
    /// Log filter, e.g. `info` or `ferrolb_speaker=debug` (RUST_LOG wins when set).
    #[arg(
        long = "log-level",
        alias = "log",
        env = "FERROLB_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The speaker daemon: join the membership, elect an owner per Service IP with the other
    /// speakers, and answer ARP/NDP for this node's share.
    ///
    /// With --state-dir it runs standalone on the directory the controller writes to (Nodes,
    /// IPAddressPools, L2Advertisements and Services as manifests); otherwise on Kubernetes.
    Run(Box<RunArgs>),
    /// Static announce: answer ARP/NDP for the given IPs from this host until SIGTERM.
    ///
    /// No Kubernetes, no election: this host owns the IPs. Useful on plain Linux hosts and to
    /// test the announcer. The IPs must not be configured on the interface itself (the kernel
    /// would answer too); with --local-vip-interface the speaker holds them on an interface of
    /// its own, ARP suppressed, so local software receives their traffic.
    Announce(AnnounceArgs),
}

#[derive(Debug, Args)]
struct AnnounceArgs {
    /// An IP to announce (repeat, or comma-separate).
    #[arg(
        long = "ip",
        env = "FERROLB_IPS",
        value_delimiter = ',',
        required = true
    )]
    ips: Vec<IpAddr>,
    /// Announce only on this interface (repeat, or comma-separate). Default: every eligible one
    /// (up, broadcast, ARP on, not enslaved, not excluded).
    #[arg(
        long = "interface",
        short = 'i',
        env = "FERROLB_INTERFACES",
        value_delimiter = ','
    )]
    interfaces: Vec<String>,
    /// Probe first (RFC 5227 ARP probe / IPv6 DAD) and announce nothing if another host
    /// answers; probe again every --recheck-secs.
    #[arg(long, env = "FERROLB_PROBE")]
    probe: bool,
    #[command(flatten)]
    announcer: AnnouncerArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// This node's name: its identity in the membership and in elections.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This speaker's pod (in a pod, from the downward API): the owner of its ServiceL2Status
    /// objects, which Kubernetes then removes with the pod. Used only when all three are known
    /// and the records live in the pod's own namespace (owners cannot cross namespaces).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Run standalone on this state directory instead of a Kubernetes cluster.
    #[arg(long, env = "FERROLB_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Announce only Services with this spec.loadBalancerClass (default: Services without one).
    #[arg(long, env = "FERROLB_LB_CLASS", value_name = "CLASS")]
    lb_class: Option<String>,
    /// Namespace holding the IPAddressPools, L2Advertisements and ServiceL2Statuses.
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,
    /// Label selector of the speaker pods in --namespace (e.g.
    /// `app.kubernetes.io/component=speaker`): the nodes they run on are the speakers a quorum
    /// counts. Without it every Node counts, so a DaemonSet limited to some nodes never holds a
    /// majority. Not used standalone, where every Node manifest is a speaker's host.
    #[arg(long, env = "FERROLB_SPEAKER_SELECTOR", value_name = "SELECTOR")]
    speaker_selector: Option<String>,
    /// UDP address the membership protocol listens on.
    #[arg(long, env = "FERROLB_MEMBERSHIP_BIND", default_value = "0.0.0.0:7946")]
    membership_bind: SocketAddr,
    /// Address peers reach this node's membership at (default: the node's address from its
    /// Node object, with the bind port).
    #[arg(long, env = "FERROLB_MEMBERSHIP_ADVERTISE")]
    membership_advertise: Option<SocketAddr>,
    /// The cluster's membership key file: one key per line, 32 bytes as 64 hex digits (or
    /// base64); the first line signs, the others are still accepted (rotation).
    #[arg(
        long,
        env = "FERROLB_MEMBERSHIP_KEY_FILE",
        default_value = "/etc/ferrolb/membership/key"
    )]
    membership_key_file: PathBuf,
    /// Extra membership peers to join through (repeat, or comma-separate); by default the
    /// addresses of the Node objects.
    #[arg(long = "peer", env = "FERROLB_PEERS", value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7473")]
    metrics_addr: SocketAddr,
    /// After taking an IP over from a node that is still up, send the packets of TCP
    /// connections made through that node on to it, so a move resets none (nftables table
    /// `ferrolb`; needs CAP_NET_ADMIN). Off with --local-vip-interface, whose connections end
    /// on the previous owner's own interface.
    #[arg(
        long,
        env = "FERROLB_CARRY_CONNECTIONS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    carry_connections: bool,
    #[command(flatten)]
    announcer: AnnouncerArgs,
    #[command(flatten)]
    membership: MembershipArgs,
}

// --- membership and fencing knobs (issue 5) ---

/// The membership protocol's timing and the self-fencing hold; defaults and why in
/// `speaker::membership` and `speaker::fencing`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Membership")]
struct MembershipArgs {
    /// Milliseconds between two probes of this node (each probes one member per interval).
    #[arg(long, env = "FERROLB_MEMBERSHIP_PROBE_INTERVAL_MS", default_value_t = ms(MEMBERSHIP.probe_interval))]
    membership_probe_interval_ms: u64,
    /// Milliseconds to wait for a direct ack before asking others to probe.
    #[arg(long, env = "FERROLB_MEMBERSHIP_PROBE_TIMEOUT_MS", default_value_t = ms(MEMBERSHIP.probe_timeout))]
    membership_probe_timeout_ms: u64,
    /// Members asked to probe indirectly (also the confirmations that shorten a suspicion).
    #[arg(long, env = "FERROLB_MEMBERSHIP_INDIRECT_CHECKS", default_value_t = MEMBERSHIP.indirect_checks)]
    membership_indirect_checks: usize,
    /// Minimum suspicion timeout, in probe intervals (scaled up by log10 beyond 100 members).
    #[arg(long, env = "FERROLB_MEMBERSHIP_SUSPICION_MULT", default_value_t = MEMBERSHIP.suspicion_mult)]
    membership_suspicion_mult: u32,
    /// Timeout of an unconfirmed suspicion, as a multiple of the minimum.
    #[arg(long, env = "FERROLB_MEMBERSHIP_SUSPICION_MAX_MULT", default_value_t = MEMBERSHIP.suspicion_max_mult)]
    membership_suspicion_max_mult: u32,
    /// Each update is piggybacked this many times log10(members).
    #[arg(long, env = "FERROLB_MEMBERSHIP_RETRANSMIT_MULT", default_value_t = MEMBERSHIP.retransmit_mult)]
    membership_retransmit_mult: u32,
    /// Milliseconds between gossip rounds while updates are queued.
    #[arg(long, env = "FERROLB_MEMBERSHIP_GOSSIP_INTERVAL_MS", default_value_t = ms(MEMBERSHIP.gossip_interval))]
    membership_gossip_interval_ms: u64,
    /// Members each gossip round goes to.
    #[arg(long, env = "FERROLB_MEMBERSHIP_GOSSIP_NODES", default_value_t = MEMBERSHIP.gossip_nodes)]
    membership_gossip_nodes: usize,
    /// Milliseconds between full state exchanges (push-pull) with a random member.
    #[arg(long, env = "FERROLB_MEMBERSHIP_PUSH_PULL_INTERVAL_MS", default_value_t = ms(MEMBERSHIP.push_pull_interval))]
    membership_push_pull_interval_ms: u64,
    /// Milliseconds between attempts to reach a member believed dead (partition healing) and
    /// between join attempts while alone.
    #[arg(long, env = "FERROLB_MEMBERSHIP_RECONNECT_INTERVAL_MS", default_value_t = ms(MEMBERSHIP.reconnect_interval))]
    membership_reconnect_interval_ms: u64,
    /// Milliseconds a stopping speaker keeps answering (ARP and membership) after saying it
    /// leaves, so its successors announce before it goes quiet (make-before-break).
    #[arg(
        long,
        env = "FERROLB_MEMBERSHIP_LEAVE_LINGER_MS",
        default_value_t = 300
    )]
    membership_leave_linger_ms: u64,
    /// Milliseconds a node that lost a link and is alone in the membership
    /// waits, with every link up, for a peer before serving alone.
    #[arg(long, env = "FERROLB_FENCE_HOLD_MS", default_value_t = ms(ferrolb_speaker::fencing::DEFAULT_HOLD))]
    fence_hold_ms: u64,
}

const MEMBERSHIP: ProtocolDefaults = ProtocolDefaults::new();

/// `membership::Config::default()` is not const; these mirror it and a test keeps them equal.
struct ProtocolDefaults {
    probe_interval: Duration,
    probe_timeout: Duration,
    indirect_checks: usize,
    suspicion_mult: u32,
    suspicion_max_mult: u32,
    retransmit_mult: u32,
    gossip_interval: Duration,
    gossip_nodes: usize,
    push_pull_interval: Duration,
    reconnect_interval: Duration,
}

impl ProtocolDefaults {
    const fn new() -> Self {
        ProtocolDefaults {
            probe_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(20),
            indirect_checks: 3,
            suspicion_mult: 2,
            suspicion_max_mult: 3,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(50),
            gossip_nodes: 3,
            push_pull_interval: Duration::from_secs(10),
            reconnect_interval: Duration::from_millis(500),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl MembershipArgs {
    fn protocol(&self) -> ProtocolConfig {
        let reconnect = Duration::from_millis(self.membership_reconnect_interval_ms);
        ProtocolConfig {
            probe_interval: Duration::from_millis(self.membership_probe_interval_ms),
            probe_timeout: Duration::from_millis(self.membership_probe_timeout_ms),
            indirect_checks: self.membership_indirect_checks,
            suspicion_mult: self.membership_suspicion_mult,
            suspicion_max_mult: self.membership_suspicion_max_mult,
            retransmit_mult: self.membership_retransmit_mult,
            gossip_interval: Duration::from_millis(self.membership_gossip_interval_ms),
            gossip_nodes: self.membership_gossip_nodes,
            push_pull_interval: Duration::from_millis(self.membership_push_pull_interval_ms),
            reconnect_interval: reconnect,
            join_retry_interval: reconnect,
            ..ProtocolConfig::default()
        }
    }
}

// --- end of membership and fencing knobs ---

/// How the announcer answers, announces and probes; shared by `run` and `announce`.
#[derive(Debug, Args)]
struct AnnouncerArgs {
    /// Interface name patterns never announced on (exact, or prefix then `*`).
    #[arg(long, env = "FERROLB_EXCLUDE_INTERFACES", value_delimiter = ',', default_values_t = DEFAULT_EXCLUDE.iter().map(|p| (*p).to_owned()))]
    exclude_interfaces: Vec<String>,
    /// Gratuitous announcements after taking an IP.
    #[arg(long, env = "FERROLB_GRATUITOUS_COUNT", default_value_t = 5)]
    gratuitous_count: u32,
    /// Milliseconds between them.
    #[arg(long, env = "FERROLB_GRATUITOUS_INTERVAL_MS", default_value_t = 1100)]
    gratuitous_interval_ms: u64,
    /// Keep announcing every N seconds after the burst (for switches whose tables age out).
    #[arg(long, env = "FERROLB_GRATUITOUS_REFRESH_SECS")]
    gratuitous_refresh_secs: Option<u64>,
    /// Probes sent before announcing an IP for the first time (`run` probes every IP no speaker
    /// announced before; `announce` only with --probe).
    #[arg(long, env = "FERROLB_PROBE_COUNT", default_value_t = 3)]
    probe_count: u32,
    /// Milliseconds between probes.
    #[arg(long, env = "FERROLB_PROBE_INTERVAL_MS", default_value_t = 100)]
    probe_interval_ms: u64,
    /// Milliseconds to listen for an answer after the last probe.
    #[arg(long, env = "FERROLB_PROBE_WAIT_MS", default_value_t = 200)]
    probe_wait_ms: u64,
    /// Seconds before probing again an IP found taken.
    #[arg(long, env = "FERROLB_RECHECK_SECS", default_value_t = 10)]
    recheck_secs: u64,
    /// Milliseconds to listen, after one probe, before taking over an IP another speaker
    /// announced: a speaker of this cluster still answering for it with a better standing (one
    /// cut off from the membership) keeps it, so no two nodes ever answer. 0 takes over at once.
    #[arg(long, env = "FERROLB_TAKEOVER_CHECK_MS", default_value_t = ms(CheckPlan::DEFAULT_WAIT))]
    takeover_check_ms: u64,
    /// Also hold each owned IP on this dummy interface (created at start, deleted at exit,
    /// ARP suppressed) so listeners on this node receive its traffic: for hosts without
    /// kube-proxy. Sets net.ipv4.conf.{all,NAME}.arp_ignore=1 and arp_announce=2.
    #[arg(long, env = "FERROLB_LOCAL_VIP_INTERFACE", value_name = "NAME")]
    local_vip_interface: Option<String>,
    /// Let the kernel skip the ARP requests this node answers: drop them at its ARP input
    /// (after the speaker's socket has them) instead of after a route lookup, so replies leave
    /// sooner (nftables table `arp ferrolb`; needs CAP_NET_ADMIN, else the kernel keeps its
    /// usual path).
    #[arg(
        long,
        env = "FERROLB_KERNEL_ARP_SKIP",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    kernel_arp_skip: bool,
}

impl AnnouncerArgs {
    fn config(&self) -> AnnouncerConfig {
        AnnouncerConfig {
            // Never announce on our own dummy (it is NOARP anyway; this says so in the logs).
            exclude: ExcludePatterns::new(
                self.exclude_interfaces
                    .iter()
                    .chain(&self.local_vip_interface)
                    .cloned(),
            ),
            gratuitous: GratuitousPlan {
                count: self.gratuitous_count,
                interval: Duration::from_millis(self.gratuitous_interval_ms),
                refresh: self.gratuitous_refresh_secs.map(Duration::from_secs),
            },
            probe: ProbePlan {
                probes: self.probe_count,
                interval: Duration::from_millis(self.probe_interval_ms),
                wait: Duration::from_millis(self.probe_wait_ms),
                recheck: Duration::from_secs(self.recheck_secs),
            },
            check: CheckPlan {
                wait: Duration::from_millis(self.takeover_check_ms),
                ..CheckPlan::default()
            },
            kernel_arp: self.kernel_arp_skip,
            marker: None,
        }
    }
}

/// How long the exit waits, once everything has stopped, for blocking work still in flight (a
/// netlink call of the nftables writers): an orchestrator's restart must not wait on it.
const EXIT_GRACE: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Announce(args) => announce(args).await,
        }
    });
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn announce(args: AnnounceArgs) -> anyhow::Result<()> {
    require_packet_sockets()?;
    let config = args.announcer.config();
    let mut links = interfaces::watch()
        .await
        .context("watching network links over netlink (needs a Linux network namespace)")?;
    for wanted in &args.interfaces {
        match links.borrow().iter().find(|link| link.name == *wanted) {
            None => {
                warn!(iface = %wanted, "no such interface (yet): nothing announced on it until it appears")
            }
            Some(link) => {
                if let Err(why) = interfaces::check(link, &config.exclude) {
                    warn!(iface = %wanted, reason = %why, "interface not eligible: nothing announced on it while this holds");
                }
            }
        }
    }
    let (announcer, mut events) =
        Announcer::start(config).context("starting the announcer thread")?;
    let local_vips =
        hold_local_vips(args.announcer.local_vip_interface.as_deref(), &announcer).await?;
    announcer.set_links(links.borrow_and_update().clone());
    let intent = Intent {
        interfaces: args.interfaces.clone(),
        start: if args.probe { Start::Probe } else { Start::Now },
        standing: None,
    };
    let owned: BTreeMap<IpAddr, Intent> = args.ips.iter().map(|ip| (*ip, intent.clone())).collect();
    info!(ips = ?args.ips, interfaces = ?args.interfaces, probe = args.probe, "static announce");
    announcer.set_owned(owned);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = links.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the netlink link watcher stopped");
                }
                announcer.set_links(links.borrow_and_update().clone());
            }
            Some(event) = events.recv() => match event {
                // The announcer logs each of these itself; the static mode has no API to tell.
                Event::Ip(_) | Event::ResponderFailed { .. } => debug!(?event, "announcer event"),
            },
        }
    }
    info!("stopping: no longer answering");
    tokio::task::spawn_blocking(move || announcer.shutdown())
        .await
        .context("stopping the announcer")?;
    release_local_vips(local_vips).await;
    Ok(())
}

/// Starts holding the owned IPs on the local VIP interface, when one is configured.
async fn hold_local_vips(
    name: Option<&str>,
    announcer: &Announcer,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(name) = name else {
        return Ok(None);
    };
    let vips = LocalVips::create(name)
        .await
        .context("setting up --local-vip-interface (needs CAP_NET_ADMIN)")?;
    Ok(Some(tokio::spawn(local_vips::follow(
        vips,
        announcer.owned(),
    ))))
}

/// Waits until the local VIP interface is gone (the announcer has stopped, so its owned set
/// is closed).
async fn release_local_vips(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = task
        && let Err(error) = task.await
    {
        warn!(%error, "the local VIP task failed");
    }
}

/// Fails when this process may not open packet sockets: the speaker could answer no ARP or NDP,
/// and a speaker that joined the membership anyway would be elected and leave its IPs dark.
fn require_packet_sockets() -> anyhow::Result<()> {
    ferrolb_speaker::socket::may_open_packet_sockets().context(
        "this speaker may not open packet sockets, so it could answer no ARP or NDP: it needs \
         CAP_NET_RAW (the chart grants it in the speaker's securityContext); exiting before \
         joining the membership, so the other nodes answer for this node's IPs",
    )
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    require_packet_sockets()?;
    let metrics = Metrics::new().context("registering metrics")?;
    let readiness = Readiness::default();
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        if let Err(err) = trigger.on_signals().await {
            warn!("cannot listen for signals: {err}");
        }
    });
    let bound = endpoint::serve(
        args.metrics_addr,
        metrics.registry.clone(),
        readiness.clone(),
        stop.clone(),
    )
    .await
    .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    info!(%bound, "serving /metrics, /healthz, /readyz");

    let key_text = std::fs::read_to_string(&args.membership_key_file).with_context(|| {
        format!(
            "reading the membership key file {} (create one with: openssl rand -hex 32 > FILE)",
            args.membership_key_file.display()
        )
    })?;
    let keys = KeyRing::parse(&key_text)
        .with_context(|| format!("membership key file {}", args.membership_key_file.display()))?;
    let marks = Marker::new(&keys);

    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let (first, cluster, recorder) = match &args.state_dir {
        Some(state_dir) => {
            let dir = StateDir::open(state_dir)?;
            let (first, cluster) = standalone::follow(&dir, &args.node_name, stop.clone())?;
            let recorder = tokio::spawn(standalone::record(dir, args.node_name.clone(), reports));
            (first, cluster, recorder)
        }
        None => {
            let client = ferrolb_daemon::kubernetes::connect(
                "ferrolb-speaker",
                env!("CARGO_PKG_VERSION"),
            )
            .await
            .context(
                "reaching the Kubernetes API (in a pod: its service account; outside: KUBECONFIG); \
                 to run without Kubernetes, use --state-dir DIR",
            )?;
            info!(namespace = %args.namespace, "listing Services, pools, advertisements, nodes and endpoints");
            let Some((first, cluster)) = kubernetes::follow(
                client.clone(),
                &args.namespace,
                args.speaker_selector.as_deref(),
                stop.clone(),
            )
            .await
            else {
                return Ok(());
            };
            let exists = node_exists(&first, &args.node_name);
            if !exists {
                warn!(node = %args.node_name, "{}", missing_node(&args.node_name));
            }
            tokio::spawn(own_node_watch(
                args.node_name.clone(),
                exists,
                cluster.clone(),
            ));
            let pod = kubernetes::Pod::owner_of_records(
                args.pod_name.clone(),
                args.pod_uid.clone(),
                args.pod_namespace.as_deref(),
                &args.namespace,
            );
            let recorder = tokio::spawn(kubernetes::record(
                client,
                args.namespace.clone(),
                args.node_name.clone(),
                pod,
                reports,
            ));
            (first, cluster, recorder)
        }
    };

    let port = args.membership_bind.port();
    let mut config = MembershipConfig::new(&args.node_name, args.membership_bind, keys);
    config.protocol = args.membership.protocol();
    config.leave_linger = Duration::from_millis(args.membership.membership_leave_linger_ms);
    config.advertise = args.membership_advertise.or_else(|| {
        first
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(args.node_name.as_str()))
            .and_then(standalone::node_address)
            .map(|ip| SocketAddr::new(ip, port))
    });
    if config.advertise.is_none()
        && args.membership_bind.ip().is_unspecified()
        && !node_exists(&first, &args.node_name)
    {
        anyhow::bail!(
            "{} Its address is the membership's, so this speaker cannot join either: create the Node, or set --membership-advertise",
            missing_node(&args.node_name)
        );
    }
    config.seeds = args.peers.clone();
    config
        .seeds
        .extend(standalone::seeds(&first, &args.node_name, port));
    // Only for set-up: the feed holds the current cluster, and a second copy of every Service
    // for the daemon's lifetime would cost memory.
    drop(first);
    let membership = Membership::start(config).await?;
    info!(node = %args.node_name, advertise = %membership.advertise(), seeds = ?args.peers, "joined the membership");

    let links = interfaces::watch()
        .await
        .context("watching network links over netlink (needs a Linux network namespace)")?;
    let mut announcer_config = args.announcer.config();
    announcer_config.marker = Some(marks);
    let membership_link = match interfaces::holding(membership.advertise().ip()).await {
        Ok(Some(link)) => Some(link),
        Ok(None) => {
            info!(address = %membership.advertise().ip(), "the membership address is on no local link (NAT?): losing a link fences this node only once it is alone");
            None
        }
        Err(error) => {
            warn!(%error, "cannot find the link the membership runs over");
            None
        }
    };
    let fencing = node::Fencing {
        hold: Duration::from_millis(args.membership.fence_hold_ms),
        exclude: announcer_config.exclude.clone(),
        membership_link,
        rejoin: Some(membership.rejoiner()),
    };
    let (announcer, events) =
        Announcer::start(announcer_config).context("starting the announcer")?;
    let local_vips =
        hold_local_vips(args.announcer.local_vip_interface.as_deref(), &announcer).await?;
    let settings = NodeSettings {
        node_name: args.node_name.clone(),
        lb_class: args.lb_class.clone(),
        // In a cluster a Service without EndpointSlices has no endpoints; in a directory,
        // endpoints are optional and their absence means every node serves.
        endpoints_required: args.state_dir.is_none(),
        carry_connections: args.carry_connections && local_vips.is_none(),
    };
    if args.carry_connections && local_vips.is_some() {
        info!(
            "not carrying connections across moves: with --local-vip-interface they end on the previous owner's interface"
        );
    }
    let carrying = settings.carry_connections;
    let feeds = Feeds {
        cluster,
        live: membership.live(),
        links,
        events,
        membership: Some(membership.metrics().clone()),
    };
    let announcer = node::run_fenced(
        settings,
        feeds,
        fencing,
        announcer,
        reports_tx,
        metrics,
        readiness.clone(),
        stop,
    )
    .await;

    // Make-before-break: tell the others we leave and keep answering while they take over
    // and announce; only then stop answering.
    readiness.not_ready("shutting down");
    info!("leaving the membership; answering until the successors have taken over");
    announcer.leaving();
    membership.leave().await;
    tokio::task::spawn_blocking(move || announcer.shutdown())
        .await
        .context("stopping the announcer")?;
    if carrying && let Err(e) = ferrolb_speaker::carry::remove_tables() {
        warn!("removing the nftables tables that carried connections: {e}");
    }
    release_local_vips(local_vips).await;
    let _ = recorder.await;
    info!("stopped");
    Ok(())
}

/// Says, loudly and whenever it changes, whether this node's Node object exists: without it the
/// speaker joins the membership but is never elected (no Node, no candidate), which would
/// otherwise look like a healthy speaker announcing nothing.
async fn own_node_watch(
    node: String,
    mut known: bool,
    mut cluster: tokio::sync::watch::Receiver<std::sync::Arc<node::Cluster>>,
) {
    while cluster.changed().await.is_ok() {
        let exists = node_exists(&cluster.borrow_and_update(), &node);
        if exists != known {
            if exists {
                info!(%node, "Node {node} exists now: this speaker can be elected");
            } else {
                warn!(%node, "{}", missing_node(&node));
            }
            known = exists;
        }
    }
}

fn node_exists(cluster: &node::Cluster, node: &str) -> bool {
    cluster
        .nodes
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(node))
}

fn missing_node(node: &str) -> String {
    format!(
        "Node {node} does not exist: this speaker is never elected, so it announces nothing until a Node of that name exists (is NODE_NAME / --node-name the Node's name?)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_flag_defaults_are_the_protocol_defaults() {
        let cli = Cli::parse_from([
            "ferrolb-speaker",
            "run",
            "--node-name",
            "n1",
            "--state-dir",
            "/nonexistent",
        ]);
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(args.membership.protocol(), ProtocolConfig::default());
    }
}
