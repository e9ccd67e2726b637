//! Lets the node's kernel skip the ARP requests the speaker answers (table `arp ferrolb`, see
//! [`crate::nftables`]).
//!
//! The kernel handles every ARP request too. For a Service IP it does not hold it only drops
//! the request, but after a route lookup, in the softirq that the responder thread (pinned to
//! the same CPU) waits for before it can run: dropped at the ARP input hook instead, the
//! request costs the kernel a set lookup, and the speaker's reply leaves sooner
//! (docs/benchmarks.md). The speaker's packet socket has the request by then (packet taps run
//! before protocol handlers), so answering and conflict detection see every frame as before.
//!
//! Best effort and off the announcer's thread: without CAP_NET_ADMIN it says so once and the
//! kernel keeps its usual path. The table is checked every 30 s (a firewall reload may flush
//! it), written again after a refusal with backoff, and removed when the announcer stops.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::nftables::{Nftables, NftablesError};

/// How often the table is checked to still exist.
const CHECK: Duration = Duration::from_secs(30);
/// The first wait before writing again a set the kernel refused; doubled up to the maximum.
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The handle of the thread that keeps table `arp ferrolb` listing the answered IPv4
/// addresses. Dropping it removes the table and waits for the thread.
#[derive(Debug)]
pub struct KernelArp {
    tx: Option<mpsc::Sender<BTreeSet<Ipv4Addr>>>,
    thread: Option<JoinHandle<()>>,
}

impl KernelArp {
    /// Enabled: a thread that first probes the table (which also removes one a crashed run
    /// left) and then follows [`set`](Self::set). Disabled: removes a leftover table, if it
    /// may, and does nothing else.
    pub fn start(enabled: bool) -> KernelArp {
        if !enabled {
            if let Ok(mut nftables) = Nftables::open()
                && matches!(nftables.arp_exists(), Ok(true))
            {
                let removed = nftables.apply_arp(&BTreeSet::new());
                debug!(
                    ?removed,
                    "removing the table arp ferrolb a previous run left"
                );
            }
            return KernelArp {
                tx: None,
                thread: None,
            };
        }
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("ferrolb-kernel-arp".to_owned())
            .spawn(move || follow(&rx));
        match thread {
            Ok(thread) => KernelArp {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(error) => {
                warn!(%error, "cannot start the thread that writes table arp ferrolb");
                KernelArp {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// The IPv4 addresses answered now (replacing the previous set).
    pub fn set(&self, answered: BTreeSet<Ipv4Addr>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(answered);
        }
    }
}

impl Drop for KernelArp {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: writes the latest set whenever it differs from what the kernel holds.
fn follow(rx: &mpsc::Receiver<BTreeSet<Ipv4Addr>>) {
    let mut nftables = match Nftables::open().and_then(|mut n| n.probe_arp().map(|()| n)) {
        Ok(nftables) => nftables,
        Err(error) => {
            info!(
                error = %describe(&error),
                "ARP requests for the IPs this node answers also take the kernel's ARP path (the replies leave a little later)"
            );
            // Still drain the channel until the announcer stops, so sets do not pile up.
            while rx.recv().is_ok() {}
            return;
        }
    };
    info!(
        "the kernel leaves ARP requests for the IPs this node answers to the speaker (nftables table arp ferrolb)"
    );
    let mut wanted = BTreeSet::new();
    // The probe left no table: the kernel holds the empty set.
    let mut applied: Option<BTreeSet<Ipv4Addr>> = Some(BTreeSet::new());
    let mut again_at: Option<Instant> = None;
    let mut retry = RETRY;
    let mut last_error: Option<String> = None;
    loop {
        let received = match again_at {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(set) => wanted = rx.try_iter().last().unwrap_or(set),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let due = again_at.is_some_and(|at| at <= Instant::now());
        if applied.as_ref() == Some(&wanted) {
            if !due {
                continue;
            }
            // The periodic check: write again only a table that went missing.
            if wanted.is_empty() || nftables.arp_exists().unwrap_or(false) {
                again_at = (!wanted.is_empty()).then(|| Instant::now() + CHECK);
                continue;
            }
            warn!("table arp ferrolb went missing (a flushed ruleset?): writing it again");
        } else if applied.is_none() && again_at.is_some() && !due {
            continue; // refused lately: wait for the retry
        }
        match nftables.apply_arp(&wanted) {
            Ok(()) => {
                debug!(answered = wanted.len(), "table arp ferrolb written");
                again_at = (!wanted.is_empty()).then(|| Instant::now() + CHECK);
                applied = Some(wanted.clone());
                retry = RETRY;
                last_error = None;
            }
            Err(error) => {
                let text = describe(&error);
                if last_error.as_ref() != Some(&text) {
                    warn!(error = %text, "writing table arp ferrolb; retrying");
                }
                last_error = Some(text);
                applied = None;
                again_at = Some(Instant::now() + retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    if applied.as_ref().is_none_or(|set| !set.is_empty())
        && let Err(error) = nftables.apply_arp(&BTreeSet::new())
    {
        warn!(error = %describe(&error), "removing table arp ferrolb");
    }
}

/// The error with its cause, on one line.
fn describe(error: &NftablesError) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
