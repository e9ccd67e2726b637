//! The membership loop: one tokio task owning the UDP socket, sealing and opening datagrams with
//! the key ring, feeding [`Swim`] and sending what it asks, and publishing the live set, events
//! and metrics.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrolb_proto::gossip::{GossipError, Inbox, KeyRing, MemberState, NONCE_LEN, Reason};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Config, Event, Member, Metrics, Output, Swim};

/// The live members (alive or suspect, this node included) by name: the election's candidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSet {
    pub members: BTreeMap<String, Member>,
    /// Members that left gracefully and are still remembered, with their address: their
    /// speaker stopped, but nothing says their node did (connections through them are
    /// carried to them).
    pub departed: BTreeMap<String, SocketAddr>,
}

impl LiveSet {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// What the membership loop needs to start.
#[derive(Debug)]
pub struct MembershipConfig {
    /// This node's name (the Kubernetes node name): its identity in the cluster.
    pub node_name: String,
    /// Where to bind the UDP socket, e.g. `0.0.0.0:7946`.
    pub bind: SocketAddr,
    /// The address peers reach this node at; the bound address when `None` (which then must
    /// not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// Peers to join through.
    pub seeds: Vec<SocketAddr>,
    pub keys: KeyRing,
    pub protocol: Config,
    /// Boot epoch for replay protection; unix time in milliseconds when `None`.
    pub epoch: Option<u64>,
    /// How often one kind of rejected datagram from one source is logged.
    pub log_interval: Duration,
    /// How long a leaving node keeps answering and gossiping after saying it leaves.
    pub leave_linger: Duration,
}

impl MembershipConfig {
    /// A configuration with protocol defaults.
    pub fn new(node_name: impl Into<String>, bind: SocketAddr, keys: KeyRing) -> Self {
        MembershipConfig {
            node_name: node_name.into(),
            bind,
            advertise: None,
            seeds: Vec::new(),
            keys,
            protocol: Config::default(),
            epoch: None,
            log_interval: Duration::from_secs(10),
            leave_linger: Duration::from_millis(200),
        }
    }
}

/// Why the membership loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "membership: cannot bind UDP {addr}: {source} (is another speaker or memberlist on that port?)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "membership: advertise address {0} is unspecified: peers cannot reach it; set the node's address explicitly"
    )]
    UnspecifiedAdvertise(SocketAddr),
    #[error("membership: node name {0:?} must be 1-253 bytes")]
    NodeName(String),
    #[error("membership: no randomness from the operating system: {0}")]
    Random(String),
}

/// The membership socket's receive buffer: a few thousand datagrams of the largest size.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

#[derive(Debug)]
enum Command {
    Leave(oneshot::Sender<()>),
    Rejoin,
}

/// See [`Membership::rejoiner`].
#[derive(Debug, Clone)]
pub struct Rejoin(mpsc::Sender<Command>);

impl Rejoin {
    /// Asks the loop to rejoin now (dropped if the loop is busy with an earlier request).
    pub fn now(&self) {
        let _ = self.0.try_send(Command::Rejoin);
    }
}

/// A running membership loop. Dropping it stops the loop abruptly (as a crash would); call
/// [`Membership::leave`] for a graceful exit.
#[derive(Debug)]
pub struct Membership {
    live: watch::Receiver<LiveSet>,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    local_addr: SocketAddr,
    advertise: SocketAddr,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Binds the socket and starts the loop.
    pub async fn start(config: MembershipConfig) -> Result<Self, MembershipError> {
        let name_ok = !config.node_name.is_empty()
            && config.node_name.len() <= ferrolb_proto::gossip::MAX_NAME_LEN;
        if !name_ok {
            return Err(MembershipError::NodeName(config.node_name));
        }
        let socket =
            UdpSocket::bind(config.bind)
                .await
                .map_err(|source| MembershipError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: config.bind,
                source,
            })?;
        // A burst (a rejoining node's push-pulls, every member's gossip at once) must not
        // overflow the kernel's default ~200 KB; what still overflows is counted.
        if let Err(error) = crate::socket::size_receive_buffer(&socket, RECEIVE_BUFFER) {
            tracing::debug!(%error, "membership: the receive buffer keeps its default size");
        }
        let advertise = config.advertise.unwrap_or(local_addr);
        if advertise.ip().is_unspecified() {
            return Err(MembershipError::UnspecifiedAdvertise(advertise));
        }
        let epoch = config.epoch.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| MembershipError::Random(e.to_string()))?;
        let swim = Swim::new(
            config.node_name.clone(),
            advertise,
            epoch,
            config.seeds,
            config.protocol,
            u64::from_le_bytes(seed),
            Instant::now(),
        );
        let (live_tx, live) = watch::channel(live_set(&swim.members()));
        let (events, _) = broadcast::channel(1024);
        let (commands, command_rx) = mpsc::channel(4);
        let metrics = Arc::new(Metrics::default());
        metrics.set_members(&swim.members());
        metrics.set_socket(super::drops::inode(&socket));
        let inbox = Inbox::new(config.node_name, config.keys);
        let shell = Shell {
            socket,
            inbox,
            swim,
            live: live_tx,
            events: events.clone(),
            metrics: metrics.clone(),
            log_limiter: LogLimiter::new(config.log_interval),
            leave_linger: config.leave_linger,
        };
        let task = tokio::spawn(shell.run(command_rx));
        Ok(Membership {
            live,
            events,
            metrics,
            commands,
            task,
            local_addr,
            advertise,
        })
    }

    /// The live set, updated on every membership change.
    pub fn live(&self) -> watch::Receiver<LiveSet> {
        self.live.clone()
    }

    /// Membership events from now on. A receiver that falls more than 1024 events behind
    /// skips ahead (and is told so by `RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address peers know this node by.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// A handle that makes the loop reach out to every seed and every member believed dead at
    /// once (a push-pull each): for when this node's link comes back after being cut, so it
    /// rejoins in one round trip.
    pub fn rejoiner(&self) -> Rejoin {
        Rejoin(self.commands.clone())
    }

    /// Says goodbye to every member, keeps answering for the linger time, then stops.
    pub async fn leave(self) {
        let (done_tx, done) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn live_set(members: &[Member]) -> LiveSet {
    LiveSet {
        members: members
            .iter()
            .filter(|m| m.is_live())
            .map(|m| (m.name.clone(), m.clone()))
            .collect(),
        departed: members
            .iter()
            .filter(|m| m.state == MemberState::Left)
            .map(|m| (m.name.clone(), m.address))
            .collect(),
    }
}

/// Logs one kind of rejection from one source at most once per interval, with the number of
/// rejections it stands for.
struct LogLimiter {
    interval: Duration,
    last: HashMap<(Reason, SocketAddr), (Instant, u64)>,
}

impl LogLimiter {
    fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when this rejection should be logged now.
    fn allow(&mut self, reason: Reason, from: SocketAddr, now: Instant) -> Option<u64> {
        if self.last.len() > 4096 {
            // A flood from many sources: forget old entries rather than grow without bound.
            let interval = self.interval;
            self.last
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < interval);
        }
        match self.last.get_mut(&(reason, from)) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert((reason, from), (now, 0));
                Some(0)
            }
        }
    }
}

struct Shell {
    socket: UdpSocket,
    inbox: Inbox,
    swim: Swim,
    live: watch::Sender<LiveSet>,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
    log_limiter: LogLimiter,
    leave_linger: Duration,
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let node = self.swim.name().to_owned();
        tracing::info!(node, address = %self.swim.address(), "membership started");
        // Large enough for any UDP datagram: a bigger one from a newer peer must be read whole
        // to be refused by version, not truncated into an authentication failure.
        let mut buf = vec![0u8; 65_536];
        let mut leaving: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        let mut commands_open = true;
        loop {
            let wake = tokio::time::Instant::from_std(self.swim.poll_at());
            let linger_end = leaving.as_ref().map(|(end, _)| *end);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = buf.get(..len).unwrap_or_default();
                        self.receive(datagram, from);
                    }
                    // ICMP errors from earlier sends surface here on some systems: not fatal.
                    Err(error) => tracing::debug!(%error, "membership: receive error"),
                },
                _ = tokio::time::sleep_until(wake) => {
                    let outputs = self.swim.tick(Instant::now());
                    self.dispatch(outputs);
                }
                command = commands.recv(), if commands_open && leaving.is_none() => match command {
                    Some(Command::Leave(done)) => {
                        tracing::info!(node, "membership: leaving");
                        let outputs = self.swim.leave(Instant::now());
                        self.dispatch(outputs);
                        leaving = Some((tokio::time::Instant::now() + self.leave_linger, done));
                    }
                    Some(Command::Rejoin) => {
                        tracing::info!(node, "membership: rejoining (link back)");
                        let outputs = self.swim.rejoin(Instant::now());
                        self.dispatch(outputs);
                    }
                    None => commands_open = false,
                },
                _ = sleep_until_opt(linger_end) => {
                    if let Some((_, done)) = leaving.take() {
                        let _ = done.send(());
                    }
                    tracing::info!(node, "membership stopped after leaving");
                    return;
                }
            }
        }
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        self.metrics
            .datagrams_received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        match self.inbox.open(datagram) {
            Ok(packet) => {
                let outputs = self.swim.handle(from, packet, now);
                self.metrics.set_last_answer(self.swim.last_answer());
                // Sends are fire-and-forget on a UDP socket: try_send keeps receive synchronous.
                self.dispatch(outputs);
            }
            Err(error) => self.reject(&error, from, now),
        }
    }

    fn reject(&mut self, error: &GossipError, from: SocketAddr, now: Instant) {
        let reason = error.reason();
        self.metrics.count_rejected(reason);
        if let Some(suppressed) = self.log_limiter.allow(reason, from, now) {
            tracing::warn!(
                peer = %from,
                reason = reason.as_str(),
                suppressed,
                "membership: refused a datagram claiming to come from {from}: {error}"
            );
        }
    }

    fn dispatch(&mut self, outputs: Vec<Output>) {
        let mut changed = false;
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    let mut nonce = [0u8; NONCE_LEN];
                    if getrandom::fill(&mut nonce).is_err() {
                        // Never send with a predictable nonce.
                        self.metrics
                            .send_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    let sealed = packet.seal(self.inbox.keys(), nonce);
                    match self.socket.try_send_to(&sealed, to) {
                        Ok(_) => {
                            self.metrics
                                .datagrams_sent
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(error) => {
                            self.metrics
                                .send_errors
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(%error, peer = %to, "membership: send failed");
                        }
                    }
                }
                Output::Event(event) => {
                    changed = true;
                    log_event(self.swim.name(), &event);
                    self.metrics.count_event(&event);
                    // No subscriber is fine: events are also reflected in the live set.
                    let _ = self.events.send(event);
                }
            }
        }
        if changed {
            let members = self.swim.members();
            self.metrics.set_members(&members);
            let live = live_set(&members);
            self.live.send_if_modified(|current| {
                if *current == live {
                    false
                } else {
                    *current = live;
                    true
                }
            });
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_event(local: &str, event: &Event) {
    match event {
        Event::MemberUp(m) => {
            tracing::info!(node = local, member = m.name, address = %m.address, incarnation = m.incarnation, "member up")
        }
        Event::MemberSuspect {
            name,
            incarnation,
            by,
        } => tracing::info!(
            node = local,
            member = name,
            incarnation,
            by,
            "member suspect"
        ),
        Event::MemberAlive { name, incarnation } => {
            tracing::info!(
                node = local,
                member = name,
                incarnation,
                "member refuted suspicion"
            )
        }
        Event::MemberDead {
            name,
            incarnation,
            suspected_for,
        } => tracing::warn!(
            node = local,
            member = name,
            incarnation,
            suspected_ms = suspected_for.map(|d| d.as_millis() as u64),
            "member dead"
        ),
        Event::MemberLeft { name, incarnation } => {
            tracing::info!(node = local, member = name, incarnation, "member left")
        }
        Event::MemberForgotten { name } => {
            tracing::debug!(node = local, member = name, "member forgotten")
        }
        Event::Refuted { incarnation } => {
            tracing::warn!(
                node = local,
                incarnation,
                "refuted a suspicion of this node"
            )
        }
    }
}
