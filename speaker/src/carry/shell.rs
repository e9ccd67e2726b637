//! The thin shell of [`super`]: follows the node loop's owned set and keeps the kernel's
//! nftables ([`crate::nftables`]) carrying what [`Carries`] decides, off the loop's thread,
//! with a start-up probe per family, retries with backoff, a periodic check that the tables
//! still exist, and one log line per change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Carries, Step};
use crate::announcements::Decision;
use crate::metrics::Metrics;
use crate::nftables::{CarryRule, Family, Nftables, NftablesError};

/// How often the carrying tables are checked to still exist (something may have flushed the
/// node's ruleset: `nft flush ruleset`, a firewall reload), and written again if not.
const CARRY_CHECK: std::time::Duration = std::time::Duration::from_secs(30);
/// The first wait before writing again rules the kernel refused; doubled up to the maximum.
const CARRY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const CARRY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// This node's nftables carrying connections across moves, and what they hold.
#[derive(Debug)]
pub struct Carrier {
    nftables: Option<Nftables>,
    /// The families the kernel took the start-up probe in.
    families: Vec<Family>,
    carries: Carries,
    /// The rules the kernel holds; `None` when unknown (not written yet, or refused).
    applied: Option<Vec<CarryRule>>,
    /// The rules last reported (log line, gauge).
    reported: Vec<CarryRule>,
    /// When to look again without a change: a retry after a refusal, or the periodic check.
    again_at: Option<tokio::time::Instant>,
    retry: std::time::Duration,
    last_error: Option<String>,
}

impl Carrier {
    /// Enabled: checks at once, per family, that the kernel takes the rules (and loads their
    /// modules), so a refusal shows at start, not at the first takeover; a family it refuses
    /// is not carried. Disabled: touches nothing (the daemon removes a leftover table itself,
    /// see [`remove_tables`]).
    pub async fn new(enabled: bool, metrics: &Metrics) -> Self {
        let mut carrier = Carrier {
            nftables: None,
            families: Vec::new(),
            carries: Carries::default(),
            applied: None,
            reported: Vec::new(),
            again_at: None,
            retry: CARRY_RETRY,
            last_error: None,
        };
        if !enabled {
            return carrier;
        }
        // Netlink calls run off the loop's thread: the membership shares its runtime.
        let started = tokio::task::spawn_blocking(move || {
            let mut nftables = Nftables::open()?;
            let probes = Family::ALL.map(|family| (family, nftables.probe(family)));
            Ok((nftables, probes))
        })
        .await;
        match started {
            Ok(Ok((nftables, probes))) => {
                for (family, probe) in probes {
                    match probe {
                        Ok(()) => carrier.families.push(family),
                        Err(e) => carrier.refused(&e, family.name(), metrics),
                    }
                }
                if !carrier.families.is_empty() {
                    carrier.nftables = Some(nftables);
                }
            }
            Ok(Err(e)) => carrier.refused(&e, "", metrics),
            Err(e) => tracing::warn!("connections in flight across a move will be reset: {e}"),
        }
        carrier
    }

    /// Warns (once per distinct error) that connections of `family` (all when empty) will be
    /// reset at a move.
    fn refused(&mut self, e: &NftablesError, family: &str, metrics: &Metrics) {
        metrics.carry_failed();
        let mut text = e.to_string();
        if let Some(source) = std::error::Error::source(e) {
            text = format!("{text}: {source}");
        }
        if self.last_error.as_ref() != Some(&text) {
            let which = if family.is_empty() {
                String::new()
            } else {
                format!(" ({family})")
            };
            tracing::warn!("connections in flight across a move{which} will be reset: {text}");
        }
        self.last_error = Some(text);
    }

    /// When the loop must call [`Carrier::follow`] again without any change.
    pub fn again_at(&self) -> Option<tokio::time::Instant> {
        self.again_at
    }

    /// Follows the owned set (after self-fencing) with [`Carries::step`]; writes the rules when
    /// they change, after a refusal (with backoff), and when a periodic check finds a table
    /// gone. `reach` as for [`Carries::step`].
    pub async fn follow<W>(
        &mut self,
        owned: &BTreeSet<IpAddr>,
        step: Step<'_, W>,
        reach: impl Fn(&str, IpAddr) -> Option<IpAddr>,
        metrics: &Metrics,
    ) where
        W: FnOnce() -> Vec<Decision>,
    {
        if self.nftables.is_none() {
            return;
        }
        let families = self.families.clone();
        let rules: Vec<CarryRule> = self
            .carries
            .step(owned, step, reach)
            .into_iter()
            .filter(|r| families.contains(&Family::of(r.vip)))
            .collect();
        let due = self
            .again_at
            .is_some_and(|at| at <= tokio::time::Instant::now());
        match &self.applied {
            Some(applied) if *applied == rules => {
                if !due {
                    return;
                }
                // The periodic check: rewrite only a table that went missing.
                let used: Vec<Family> = families
                    .iter()
                    .copied()
                    .filter(|f| rules.iter().any(|r| Family::of(r.vip) == *f))
                    .collect();
                let intact = self
                    .blocking(move |n| used.iter().all(|f| n.exists(*f).unwrap_or(false)))
                    .await
                    .unwrap_or(false);
                if intact {
                    self.again_at = Some(tokio::time::Instant::now() + CARRY_CHECK);
                    return;
                }
                tracing::warn!(
                    "the nftables table that carries connections went missing (a flushed ruleset?): writing it again"
                );
            }
            // Refused lately: wait for the retry, whatever changed.
            None if self.again_at.is_some() && !due => return,
            _ => {}
        }
        let writing = rules.clone();
        let result = self
            .blocking(move |n| {
                families
                    .iter()
                    .map(|f| n.apply_family(*f, &writing))
                    .find(Result::is_err)
                    .unwrap_or(Ok(()))
            })
            .await;
        let now = tokio::time::Instant::now();
        match result {
            Some(Ok(())) => {
                log_carries(&self.reported, &rules, &self.carries);
                metrics.set_carried(rules.len());
                self.again_at = (!rules.is_empty()).then(|| now + CARRY_CHECK);
                self.reported = rules.clone();
                self.applied = Some(rules);
                self.retry = CARRY_RETRY;
                self.last_error = None;
            }
            Some(Err(e)) => {
                self.refused(&e, "", metrics);
                self.applied = None;
                self.again_at = Some(now + self.retry);
                self.retry = (self.retry * 2).min(CARRY_RETRY_MAX);
            }
            // The blocking task panicked, and took the socket with it: carrying stops.
            None => {
                tracing::warn!(
                    "connections in flight across a move will be reset: the nftables writer failed"
                );
                self.again_at = None;
            }
        }
    }

    /// Runs `f` on the nftables socket off the loop's thread (a batch of thousands of rules
    /// takes milliseconds, and the membership shares the runtime). `None` if it panicked.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Nftables) -> T + Send + 'static,
    ) -> Option<T> {
        let mut nftables = self.nftables.take()?;
        let (nftables, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut nftables);
            (nftables, out)
        })
        .await
        .ok()?;
        self.nftables = Some(nftables);
        Some(out)
    }
}

/// One line per change of the carried set.
fn log_carries(before: &[CarryRule], after: &[CarryRule], carries: &Carries) {
    let ips = |rules: &[CarryRule]| rules.iter().map(|r| r.vip).collect::<BTreeSet<_>>();
    let (was, is) = (ips(before), ips(after));
    let started: Vec<String> = is
        .difference(&was)
        .map(|ip| match carries.carried().get(ip) {
            Some(node) => format!("{ip} to {node}"),
            None => ip.to_string(),
        })
        .collect();
    let ended: Vec<&IpAddr> = was.difference(&is).collect();
    if started.is_empty() && ended.is_empty() {
        return;
    }
    const SHOWN: usize = 8;
    tracing::info!(
        carried = is.len(),
        started = ?started.iter().take(SHOWN).collect::<Vec<_>>(),
        ended = ?ended.iter().take(SHOWN).collect::<Vec<_>>(),
        more = started.len().saturating_sub(SHOWN) + ended.len().saturating_sub(SHOWN),
        "connections in flight through an IP's previous owner go on to it"
    );
}

/// Removes FerroLB's nftables tables from this node: at a graceful exit (nothing is carried
/// once the speaker is gone), and at a start without carrying (a crashed run may have left
/// them; a start with carrying replaces them anyway).
pub fn remove_tables() -> Result<(), NftablesError> {
    Nftables::open().and_then(|mut n| n.apply(&[]))
}
