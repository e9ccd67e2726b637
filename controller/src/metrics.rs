//! The controller's Prometheus metrics: MetalLB's allocator figures under the `ferrolb_` prefix,
//! plus failures by cause and how long each reconcile takes.

use std::collections::BTreeMap;

use ferrolb_proto::api::{ManifestError, PoolProblem};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::ipam::{FamilyStats, PoolStats};

/// Every metric the controller exports, registered in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    addresses_total: GaugeVec,
    addresses_in_use: GaugeVec,
    failures: IntCounterVec,
    pub reconcile_seconds: Histogram,
    pub leader: IntGauge,
    manifest_errors: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let addresses_total = GaugeVec::new(
            Opts::new(
                "ferrolb_allocator_addresses_total",
                "Usable addresses per pool and family (MetalLB: metallb_allocator_addresses_total)",
            ),
            &["pool", "family"],
        )?;
        let addresses_in_use = GaugeVec::new(
            Opts::new(
                "ferrolb_allocator_addresses_in_use_total",
                "Addresses assigned to Services per pool and family (MetalLB: metallb_allocator_addresses_in_use_total)",
            ),
            &["pool", "family"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "ferrolb_allocation_failures_total",
                "Allocation failures by cause, e.g. NoAvailableIPs, SharingConflict",
            ),
            &["cause"],
        )?;
        let reconcile_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ferrolb_controller_reconcile_duration_seconds",
                "Time to decide and write one batch of changes",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let leader = IntGauge::new(
            "ferrolb_controller_leader",
            "1 while this replica is the leader and writes",
        )?;
        let manifest_errors = IntGaugeVec::new(
            Opts::new(
                "ferrolb_manifest_errors",
                "Problems in each file of the state directory as last read (standalone)",
            ),
            &["file"],
        )?;
        registry.register(Box::new(addresses_total.clone()))?;
        registry.register(Box::new(manifest_errors.clone()))?;
        registry.register(Box::new(addresses_in_use.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(reconcile_seconds.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            addresses_total,
            addresses_in_use,
            failures,
            reconcile_seconds,
            leader,
            manifest_errors,
        })
    }

    /// Counts a failure the reconciler reported (an event with a cause).
    pub fn count_failure(&self, cause: Option<&str>) {
        if let Some(cause) = cause {
            self.failures.with_label_values(&[cause]).inc();
        }
    }

    /// Replaces the per-file problem counts (files without problems disappear).
    pub fn set_manifest_errors(&self, problems: &[ManifestError]) {
        let mut by_file: BTreeMap<&str, i64> = BTreeMap::new();
        for problem in problems {
            *by_file.entry(problem.source.as_str()).or_default() += 1;
        }
        self.manifest_errors.reset();
        for (file, count) in by_file {
            self.manifest_errors.with_label_values(&[file]).set(count);
        }
    }

    /// Replaces the per-pool figures (pools that vanished disappear from the output). A pool
    /// with problems (`invalid`: refused, or the younger of an overlapping pair) hands out
    /// nothing: its addresses are not counted as usable, only those its Services still hold.
    pub fn set_pools(&self, stats: &[PoolStats], invalid: &[PoolProblem]) {
        self.addresses_total.reset();
        self.addresses_in_use.reset();
        for pool in stats {
            let frozen = invalid
                .iter()
                .any(|p| p.pool.rsplit('/').next() == Some(pool.pool.as_str()));
            for (family, figures) in [("ipv4", &pool.ipv4), ("ipv6", &pool.ipv6)] {
                let FamilyStats {
                    capacity, assigned, ..
                } = *figures;
                if capacity == 0 {
                    continue;
                }
                // f64 keeps the magnitude of a /64 (2^64) where an integer gauge would overflow.
                if !frozen {
                    self.addresses_total
                        .with_label_values(&[&pool.pool, family])
                        .set(capacity as f64);
                }
                self.addresses_in_use
                    .with_label_values(&[&pool.pool, family])
                    .set(assigned as f64);
            }
        }
    }
}
