//! The `ferrolb-speaker` binary: flags, logging, and the wiring of the library's parts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrolb_speaker::conflict::ProbePlan;
use ferrolb_speaker::gratuitous::GratuitousPlan;
use ferrolb_speaker::interfaces::{self, DEFAULT_EXCLUDE, ExcludePatterns};
use ferrolb_speaker::{Announcer, AnnouncerConfig, Event, Intent};
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
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter, in tracing-subscriber's EnvFilter syntax (e.g. `info`, `ferrolb_speaker=debug`).
    #[arg(long, env = "FERROLB_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Static announce: answer ARP/NDP for the given IPs from this host until SIGTERM.
    ///
    /// No Kubernetes, no election: this host owns the IPs. Useful on plain Linux hosts and to
    /// test the announcer. The IPs must not be configured on the interface itself (the kernel
    /// would answer too); put them on a dummy interface with arp_ignore=1/arp_announce=2 if
    /// local software must receive their traffic.
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
    /// Probes sent before announcing (with --probe).
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
}

impl AnnounceArgs {
    fn config(&self) -> AnnouncerConfig {
        AnnouncerConfig {
            exclude: ExcludePatterns::new(self.exclude_interfaces.iter().cloned()),
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
        }
    }
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .with_context(|| format!("invalid --log filter {:?}", cli.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli)?;
    match cli.command {
        Command::Announce(args) => announce(args).await,
    }
}

async fn announce(args: AnnounceArgs) -> anyhow::Result<()> {
    let config = args.config();
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
    announcer.set_links(links.borrow_and_update().clone());
    let intent = Intent {
        interfaces: args.interfaces.clone(),
        probe_first: args.probe,
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
                Event::Conflict { .. } | Event::NoInterface { .. } | Event::ResponderFailed { .. }
                | Event::Announcing { .. } => debug!(?event, "announcer event"),
            },
        }
    }
    info!("stopping: no longer answering");
    tokio::task::spawn_blocking(move || announcer.shutdown())
        .await
        .context("stopping the announcer")?;
    Ok(())
}
