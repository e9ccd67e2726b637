//! The user's journey end to end, in the network lab with the real binaries: the controller and a
//! speaker per node in standalone mode on one state directory, the harness playing kube-proxy on
//! every node, nginx as the ingress proxy, and the client checking with arping, ndisc6 and curl.
//!
//! Needs `ferrolb-controller` and `ferrolb-speaker` built beside this test
//! (`cargo build -p ferrolb-controller -p ferrolb-speaker`; scripts/test does it).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::{Journey, Lab, LabBuilder, lab_or_skip};

/// Tools every scenario drives.
const TOOLS: [&str; 4] = ["arping", "curl", "nginx", "nft"];

/// Generous bounds for a loaded 2-core machine; the measured figures are printed.
const ALLOCATE: Duration = Duration::from_secs(10);
const ANSWER: Duration = Duration::from_secs(15);
const TAKEOVER: Duration = Duration::from_secs(1);

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("expected an IPv4 address, got {v6}"),
    }
}

/// At most this many labs at once: each runs 3 speakers, a controller and nginx, and the
/// takeover bounds are about FerroLB, not about 2 cores shared by a dozen of them.
const PARALLEL_LABS: usize = 4;

struct Slot;
static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

impl Slot {
    fn take() -> Slot {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= PARALLEL_LABS {
            running = FREED.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// A stage with the pool `addresses`, an L2Advertisement (limited to `interfaces` if any), and
/// FerroLB running. The slot is held for the test's lifetime.
fn stage(builder: LabBuilder, addresses: &[&str], interfaces: &[&str]) -> (Slot, Journey) {
    let slot = Slot::take();
    let mut journey = Journey::new(builder).unwrap();
    journey
        .install
        .write("pool.yaml", &manifests::pool("lan", addresses))
        .unwrap();
    journey
        .install
        .write("l2.yaml", &manifests::l2_advertisement("l2", interfaces))
        .unwrap();
    journey.install.start_all().unwrap();
    (slot, journey)
}

fn add_service(journey: &mut Journey, manifest: &manifests::ServiceManifest) -> IpAddr {
    journey
        .install
        .write(&format!("apps/{}.yaml", manifest.name), &manifest.yaml())
        .unwrap();
    let ip = journey
        .install
        .wait_ip(&manifest.namespace, &manifest.name, ALLOCATE)
        .unwrap();
    journey.expose(ip).unwrap();
    ip
}

fn web() -> manifests::ServiceManifest {
    manifests::service("demo", "web")
}

#[test]
fn pool_and_service_give_an_ip_that_arping_and_curl_reach() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let ip = add_service(&mut journey, &web());
    assert_eq!(ip, IpAddr::from([10, 250, 0, 100]), "the pool's first IP");

    let owner = journey
        .arp_owner("eth0", v4(ip), ANSWER)
        .unwrap()
        .name()
        .to_owned();
    let macs = journey.arp_answers("eth0", v4(ip), 5).unwrap();
    let owner_mac = journey
        .lab
        .nodes()
        .iter()
        .find(|n| n.name() == owner)
        .unwrap()
        .mac();
    assert_eq!(macs, vec![owner_mac; 5], "five answers, all from {owner}");
    assert_eq!(
        journey.install.recorded_owners("demo", "web"),
        std::slice::from_ref(&owner)
    );

    let page = journey.curl_until(ip, ANSWER).unwrap();
    assert!(page.starts_with("ingress proxy ing"), "{page}");
    assert_eq!(
        journey.came_through(&page).map(|n| n.name().to_owned()),
        Some(owner),
        "the request went through the owner: {page}"
    );
    let _ = TOOLS;
    let _ = (Instant::now(), Ipv6Addr::LOCALHOST, TAKEOVER);
}
