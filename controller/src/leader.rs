//! Leader election over a `coordination.k8s.io/v1` Lease, so two controller replicas can run and
//! only one writes. The decision is a pure function of what this candidate has observed; the
//! loop around it reads and writes the Lease.
//!
//! Expiry is judged by this candidate's own clock: a lease counts as expired when its record has
//! not changed for the lease duration since this candidate first saw it, never by comparing the
//! holder's `renewTime` with the local clock, so clock skew between nodes cannot cause two
//! leaders. A leader that cannot renew within the renew deadline steps down before its lease can
//! expire for others.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use ferrolb_daemon::shutdown::Shutdown;

/// Timings, as client-go's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops acting as leader.
    pub renew_deadline: Duration,
    /// How often candidates try, and leaders renew.
    pub retry: Duration,
}

impl LeaseTimings {
    /// Timings for a lease of `duration`, in client-go's proportions (15 s, 10 s, 2 s): renew
    /// every 2/15 of it, step down after 2/3 without a renewal.
    pub fn lasting(duration: Duration) -> Self {
        LeaseTimings {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: duration * 2 / 15,
        }
    }
}

/// The Lease a controller elects its leader over unless told: one per loadBalancerClass, so
/// two installs of different classes never share one (a name is a DNS subdomain: the class's
/// other characters become `-`).
pub fn default_lease_name(lb_class: Option<&str>) -> String {
    match lb_class {
        None => "ferrolb-controller".to_owned(),
        Some(class) => {
            let mut name: String = format!("ferrolb-controller-{class}")
                .to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            name.truncate(253);
            name.trim_end_matches(['-', '.']).to_owned()
        }
    }
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The part of a Lease the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub resource_version: String,
    pub duration: Duration,
}

impl Record {
    fn from_lease(lease: &Lease, default_duration: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs),
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds it.
    Follow { leader: Option<String> },
}

/// One candidate's memory of the lease.
#[derive(Clone, Debug)]
pub struct Candidate {
    identity: String,
    timings: LeaseTimings,
    /// The record last seen and when (our clock) it last changed.
    seen: Option<(Record, Instant)>,
    /// When we last renewed successfully, while leading.
    renewed: Option<Instant>,
}

impl Candidate {
    pub fn new(identity: impl Into<String>, timings: LeaseTimings) -> Self {
        Candidate {
            identity: identity.into(),
            timings,
            seen: None,
            renewed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Decides from the current record (None: no Lease object).
    pub fn decide(&mut self, record: Option<&Record>, now: Instant) -> Step {
        let Some(record) = record else {
            self.seen = None;
            return Step::Create;
        };
        let changed_at = match &self.seen {
            Some((old, at)) if old.resource_version == record.resource_version => *at,
            _ => now,
        };
        self.seen = Some((record.clone(), changed_at));
        match &record.holder {
            Some(holder) if *holder == self.identity => Step::Renew,
            None => Step::Acquire,
            Some(_) if now.duration_since(changed_at) >= record.duration => Step::Acquire,
            Some(holder) => Step::Follow {
                leader: Some(holder.clone()),
            },
        }
    }

    /// Records a successful create, renew or acquire.
    pub fn succeeded(&mut self, now: Instant) {
        self.renewed = Some(now);
    }

    /// Records losing the lease (a write refused, or someone else holds it).
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// Whether we may act as leader now.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.duration_since(at) < self.timings.renew_deadline)
    }
}

fn lease_body(name: &str, identity: &str, timings: LeaseTimings, transitions: i32) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: i32::try_from(timings.duration.as_secs()).ok(),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

/// Runs the election until shutdown, publishing leadership on `leading`. On shutdown a leader
/// releases the lease, so a standby takes over within one retry period instead of a lease
/// duration.
pub async fn run(
    leases: Api<Lease>,
    name: String,
    mut candidate: Candidate,
    leading: watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    let timings = candidate.timings;
    loop {
        let now = Instant::now();
        let current = match leases.get_opt(&name).await {
            Ok(lease) => Ok(lease),
            Err(err) => Err(err.to_string()),
        };
        let result = match current {
            Err(err) => Err(format!("cannot read Lease {name}: {err}")),
            Ok(lease) => {
                let record = lease
                    .as_ref()
                    .map(|l| Record::from_lease(l, timings.duration));
                let step = candidate.decide(record.as_ref(), now);
                act(&leases, &name, &candidate, step, lease).await
            }
        };
        match result {
            Ok(true) => candidate.succeeded(now),
            Ok(false) => candidate.lost(),
            Err(err) => tracing::warn!(lease = %name, "leader election: {err}"),
        }
        let is_leader = candidate.is_leader(Instant::now());
        leading.send_if_modified(|was| {
            let changed = *was != is_leader;
            if changed {
                tracing::info!(lease = %name, identity = candidate.identity(), leader = is_leader, "leadership changed");
            }
            *was = is_leader;
            changed
        });
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(timings.retry) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        release(&leases, &name, candidate.identity()).await;
    }
}

/// Carries out a step; `Ok(true)` when we hold the lease afterwards.
async fn act(
    leases: &Api<Lease>,
    name: &str,
    candidate: &Candidate,
    step: Step,
    current: Option<Lease>,
) -> Result<bool, String> {
    let timings = candidate.timings;
    let identity = candidate.identity();
    let write = |lease: Lease| async move {
        match leases.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else wrote first: not ours this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(format!("cannot write Lease {name}: {err}")),
        }
    };
    match (step, current) {
        (Step::Create, _) => match leases
            .create(
                &PostParams::default(),
                &lease_body(name, identity, timings, 0),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(format!("cannot create Lease {name}: {err}")),
        },
        (Step::Renew, Some(mut lease)) => {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(MicroTime(Timestamp::now()));
            }
            write(lease).await
        }
        (Step::Acquire, Some(lease)) => {
            let transitions = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0);
            let mut body = lease_body(name, identity, timings, transitions.saturating_add(1));
            body.metadata.resource_version = lease.metadata.resource_version;
            write(body).await
        }
        (Step::Follow { .. }, _) | (_, None) => Ok(false),
    }
}

async fn release(leases: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = leases.get_opt(name).await else {
        return;
    };
    let ours = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(identity);
    if !ours {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "released the lease"),
        Err(err) => tracing::warn!(lease = %name, "cannot release the lease: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, rv: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            resource_version: rv.to_owned(),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn timings_keep_client_gos_proportions_and_classes_get_their_own_lease() {
        assert_eq!(
            LeaseTimings::lasting(Duration::from_secs(15)),
            LeaseTimings::default()
        );
        assert_eq!(default_lease_name(None), "ferrolb-controller");
        assert_eq!(
            default_lease_name(Some("example.com/Foo")),
            "ferrolb-controller-example.com-foo"
        );
    }

    #[test]
    fn creates_renews_and_follows() {
        let t0 = Instant::now();
        let mut a = Candidate::new("a", LeaseTimings::default());
        assert_eq!(a.decide(None, t0), Step::Create);
        assert_eq!(a.decide(Some(&record(Some("a"), "1")), t0), Step::Renew);
        assert_eq!(
            a.decide(Some(&record(Some("b"), "2")), t0),
            Step::Follow {
                leader: Some("b".into())
            }
        );
        assert_eq!(a.decide(Some(&record(None, "3")), t0), Step::Acquire);
    }

    #[test]
    fn expiry_is_judged_by_our_own_clock_since_the_record_last_changed() {
        let t0 = Instant::now();
        let mut b = Candidate::new("b", LeaseTimings::default());
        let held = record(Some("a"), "7");
        assert!(matches!(b.decide(Some(&held), t0), Step::Follow { .. }));
        // Unchanged for 14 s: still a's.
        assert!(matches!(
            b.decide(Some(&held), t0 + Duration::from_secs(14)),
            Step::Follow { .. }
        ));
        // Renewed (new resourceVersion) at 14 s: the clock restarts.
        let renewed = record(Some("a"), "8");
        assert!(matches!(
            b.decide(Some(&renewed), t0 + Duration::from_secs(14)),
            Step::Follow { .. }
        ));
        assert!(matches!(
            b.decide(Some(&renewed), t0 + Duration::from_secs(28)),
            Step::Follow { .. }
        ));
        // Unchanged for the whole duration: expired.
        assert_eq!(
            b.decide(Some(&renewed), t0 + Duration::from_secs(29)),
            Step::Acquire
        );
    }

    #[test]
    fn a_leader_steps_down_before_its_lease_can_expire_for_others() {
        let timings = LeaseTimings::default();
        let t0 = Instant::now();
        let mut a = Candidate::new("a", timings);
        assert!(!a.is_leader(t0));
        a.succeeded(t0);
        assert!(a.is_leader(t0 + Duration::from_secs(9)));
        assert!(!a.is_leader(t0 + timings.renew_deadline));
        assert!(timings.renew_deadline < timings.duration);
        a.succeeded(t0);
        a.lost();
        assert!(!a.is_leader(t0));
    }
}
