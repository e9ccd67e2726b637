//! Leader election against a Kubernetes-speaking API server: one leader at a time, takeover
//! after a crash within the lease duration, and at once after a graceful release.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use ferrolb_controller::leader::{Candidate, LeaseTimings, run};
use ferrolb_e2e::ApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const TIMINGS: LeaseTimings = LeaseTimings {
    duration: Duration::from_millis(1500),
    renew_deadline: Duration::from_millis(1000),
    retry: Duration::from_millis(100),
};

struct Replica {
    leading: watch::Receiver<bool>,
    stop: ferrolb_daemon::shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
}

fn start(leases: &Api<Lease>, identity: &str) -> Replica {
    let (tx, leading) = watch::channel(false);
    let (stop, shutdown) = ferrolb_daemon::shutdown::channel();
    let task = tokio::spawn(run(
        leases.clone(),
        "ferrolb-controller".into(),
        Candidate::new(identity, TIMINGS),
        tx,
        shutdown,
    ));
    Replica {
        leading,
        stop,
        task,
    }
}

async fn becomes_leader(replica: &mut Replica, within: Duration) -> Duration {
    let start = Instant::now();
    timeout(within, replica.leading.wait_for(|l| *l))
        .await
        .expect("became leader in time")
        .unwrap();
    start.elapsed()
}

#[tokio::test]
async fn one_leader_then_takeover_after_crash_and_after_release() {
    let server = ApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client().unwrap(), "metallb-system");

    let mut a = start(&leases, "a");
    becomes_leader(&mut a, Duration::from_secs(2)).await;
    let mut b = start(&leases, "b");
    // b stays a follower while a renews.
    assert!(
        timeout(Duration::from_millis(2500), b.leading.wait_for(|l| *l))
            .await
            .is_err()
    );
    assert!(*a.leading.borrow());

    // a crashes (its task is gone, the lease is not released): b takes over after the lease
    // expires by b's own clock, and not before.
    a.task.abort();
    let took = becomes_leader(&mut b, Duration::from_secs(4)).await;
    assert!(
        took >= Duration::from_millis(1000),
        "took over after {took:?}, before the lease could expire"
    );
    let lease = leases
        .get("ferrolb-controller")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));

    // c waits; b shuts down gracefully and releases: c takes over within a few retries.
    let mut c = start(&leases, "c");
    assert!(
        timeout(Duration::from_millis(500), c.leading.wait_for(|l| *l))
            .await
            .is_err()
    );
    b.stop.trigger();
    b.task.await.unwrap();
    let took = becomes_leader(&mut c, Duration::from_secs(1)).await;
    assert!(
        took < Duration::from_millis(800),
        "release handed over in {took:?}"
    );
    c.stop.trigger();
    c.task.await.unwrap();
}
