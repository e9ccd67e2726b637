//! The user's journey end to end, in the network lab with the real binaries: the controller and a
//! speaker per node in standalone mode on one state directory, the harness playing kube-proxy on
//! every node, nginx as the ingress proxy, and the client checking with arping, ndisc6 and curl.
//!
//! Needs `ferrolb-controller` and `ferrolb-speaker` built beside this test
//! (`cargo build -p ferrolb-controller -p ferrolb-speaker`; scripts/test does it).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::{Host, Journey, Lab, LabBuilder, MacAddr, lab_or_skip};

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

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => panic!("expected an IPv6 address, got {v4}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The owner of `ip` as the client sees it over ARP on eth0, checked against the speakers'
/// records, and reached by curl through it.
fn reach(journey: &Journey, service: &str, ip: IpAddr) -> Host {
    let owner = journey.arp_owner("eth0", v4(ip), ANSWER).unwrap().clone();
    let macs = journey.arp_answers("eth0", v4(ip), 3).unwrap();
    assert_eq!(
        macs,
        vec![owner.mac(); 3],
        "{ip}: every answer from {}",
        owner.name()
    );
    let (ns, name) = service.split_once('/').unwrap();
    assert_eq!(
        wait_records(journey, ns, name, |r| r.len() == 1),
        [owner.name().to_owned()],
        "{service}: the speakers' records name the node that answers"
    );
    let page = journey.curl_until(ip, ANSWER).unwrap();
    assert!(page.starts_with("ingress proxy ing"), "{page}");
    assert_eq!(
        journey.came_through(&page).map(Host::name),
        Some(owner.name()),
        "{ip}: the request went through the owner: {page}"
    );
    owner
}

/// Waits (bounded) until the ServiceL2Status records of `ns/name` satisfy `done`.
fn wait_records(
    journey: &Journey,
    ns: &str,
    name: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + ANSWER;
    loop {
        let records = journey.install.recorded_owners(ns, name);
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{name}: records {records:?} not as awaited within {ANSWER:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls single arpings (100 ms each) until nobody answers for `ip`; returns how long that took.
fn answers_stop(journey: &Journey, ip: IpAddr, within: Duration) -> Duration {
    let start = Instant::now();
    ferrolb_e2e::tools::arping_until(
        journey.client().ns(),
        "eth0",
        v4(ip),
        within + Duration::from_secs(2),
        |macs| macs.is_empty(),
    )
    .unwrap();
    let took = start.elapsed();
    assert!(
        took < within + Duration::from_millis(100),
        "answers for {ip} stopped only after {took:?}"
    );
    took
}

/// `ferrolb-controller status --state-dir DIR`, as the user would run it.
fn status_view(journey: &Journey) -> String {
    let out = std::process::Command::new(journey.install.controller_bin().unwrap())
        .args(["status", "--state-dir"])
        .arg(journey.install.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn pool_and_service_give_an_ip_that_arping_and_curl_reach() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let vip = add_service(&mut journey, &web());
    assert_eq!(vip, ip("10.250.0.100"), "the pool's first IP");
    let owner = reach(&journey, "demo/web", vip);
    let view = status_view(&journey);
    assert!(
        view.lines().any(|l| l.contains("demo/web")
            && l.contains("10.250.0.100")
            && l.contains("lan")
            && l.contains(owner.name())),
        "the status view shows the IP, pool and owner:\n{view}"
    );
    assert!(view.contains("IPv4 1 used, 10 free"), "{view}");
}

#[test]
fn a_second_service_gets_the_next_ip() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let first = add_service(&mut journey, &web());
    let second = add_service(&mut journey, &manifests::service("demo", "api"));
    assert_eq!((first, second), (ip("10.250.0.100"), ip("10.250.0.101")));
    reach(&journey, "demo/web", first);
    reach(&journey, "demo/api", second);
}

#[test]
fn a_requested_ip_is_honoured() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let vip = add_service(
        &mut journey,
        &web().annotation("metallb.io/loadBalancerIPs", "10.250.0.107"),
    );
    assert_eq!(vip, ip("10.250.0.107"));
    reach(&journey, "demo/web", vip);
}

#[test]
fn a_deleted_service_frees_its_ip_answers_stop_and_a_pending_service_gets_it() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100/32"], &[]);
    let vip = add_service(&mut journey, &web());
    reach(&journey, "demo/web", vip);

    // Deleted with nobody waiting: the IP is free and nobody answers for it within 1 s.
    journey.install.remove("apps/web.yaml").unwrap();
    let took = answers_stop(&journey, vip, Duration::from_secs(1));
    eprintln!("answers for a deleted Service stopped after {took:?}");
    journey
        .install
        .wait_ips("demo", "web", ALLOCATE, |ips| ips.is_empty())
        .unwrap();

    // One Service holds the only IP, another waits, and the status view says why.
    let api = add_service(&mut journey, &manifests::service("demo", "api"));
    assert_eq!(api, vip, "the freed IP is handed out again");
    journey
        .install
        .write("apps/late.yaml", &manifests::service("demo", "late").yaml())
        .unwrap();
    let deadline = Instant::now() + ALLOCATE;
    let view = loop {
        let view = status_view(&journey);
        if view.contains("demo/late") || Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        view.contains("demo/late  <pending>") && view.contains("! demo/late: AllocationFailed"),
        "the pending Service and why:\n{view}"
    );
    assert!(journey.install.service_ips("demo", "late").is_empty());

    journey.install.remove("apps/api.yaml").unwrap();
    let late = journey.install.wait_ip("demo", "late", ALLOCATE).unwrap();
    assert_eq!(late, vip, "the pending Service gets the freed IP");
    reach(&journey, "demo/late", late);
}

#[test]
fn a_deleted_pool_clears_its_services_and_answers_follow_the_new_pool() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.101"], &[]);
    let old = add_service(&mut journey, &web());
    reach(&journey, "demo/web", old);

    journey.install.remove("pool.yaml").unwrap();
    journey
        .install
        .wait_ips("demo", "web", ALLOCATE, |ips| ips.is_empty())
        .unwrap();
    let took = answers_stop(&journey, old, Duration::from_secs(1));
    eprintln!("answers for a deleted pool's IP stopped after {took:?}");

    journey
        .install
        .write(
            "pool.yaml",
            &manifests::pool("dmz", &["10.250.0.120-10.250.0.121"]),
        )
        .unwrap();
    let new = journey.install.wait_ip("demo", "web", ALLOCATE).unwrap();
    assert_eq!(new, ip("10.250.0.120"), "reallocated from the new pool");
    journey.expose(new).unwrap();
    reach(&journey, "demo/web", new);
    assert!(status_view(&journey).contains("dmz"));
}

#[test]
fn five_controller_restarts_change_no_ip_and_leave_no_gap_in_arp_answers() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let first = add_service(&mut journey, &web());
    let second = add_service(&mut journey, &manifests::service("demo", "api"));
    let owner = reach(&journey, "demo/web", first);
    let status_file = journey.install.dir().join("status/services/demo/web.yaml");
    let written = mtime(&status_file);

    // 400 probes 20 ms apart (8 s) while the controller is killed and restarted five times.
    let prober = journey
        .client()
        .ns()
        .spawn([
            "arping",
            "-i",
            "eth0",
            "-c",
            "400",
            "-W",
            "0.02",
            "-w",
            "30",
            &first.to_string(),
        ])
        .unwrap();
    for _ in 0..5 {
        journey.install.kill_controller().unwrap();
        journey.install.start_controller().unwrap();
        journey.install.wait_controller_ready(ALLOCATE).unwrap();
        assert_eq!(journey.install.service_ips("demo", "web"), [first]);
        assert_eq!(journey.install.service_ips("demo", "api"), [second]);
    }
    assert!(
        prober
            .wait_within(Duration::from_secs(30))
            .unwrap()
            .is_some(),
        "arping finished"
    );
    let log = prober.log().unwrap();
    let macs = ferrolb_e2e::tools::parse_arping(&log);
    assert!(
        log.contains("400 packets transmitted, 400 packets received"),
        "every probe answered during the restarts:\n{}",
        log.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(
        macs.iter().all(|m| *m == owner.mac()),
        "always {}",
        owner.name()
    );
    assert_eq!(
        mtime(&status_file),
        written,
        "no restart rewrote the allocation"
    );
    reach(&journey, "demo/web", first);
}

#[test]
fn a_crashed_speaker_is_taken_over_within_a_second_and_curl_recovers() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let vip = add_service(&mut journey, &web());
    let owner = reach(&journey, "demo/web", vip);
    let name = owner.name().to_owned();
    let takeover = journey
        .measure_takeover("eth0", v4(vip), owner.mac(), ANSWER, |install| {
            install.kill_speaker(&name)
        })
        .unwrap();
    eprintln!(
        "takeover after SIGKILL of {name}'s speaker: {:?}",
        takeover.elapsed
    );
    assert!(
        takeover.elapsed < TAKEOVER,
        "took over in {:?} (limit {TAKEOVER:?})",
        takeover.elapsed
    );
    let new_owner = journey.node_by_mac(takeover.mac).unwrap().name().to_owned();
    assert_ne!(new_owner, name);
    let start = Instant::now();
    let page = journey.curl_until(vip, ANSWER).unwrap();
    eprintln!(
        "curl answered again {:?} after the takeover was seen",
        start.elapsed()
    );
    assert_eq!(
        journey.came_through(&page).map(Host::name),
        Some(new_owner.as_str())
    );
}

#[test]
fn a_returning_node_gets_its_ip_back() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let vip = add_service(&mut journey, &web());
    let owner = reach(&journey, "demo/web", vip);
    let index: usize = owner.name().trim_start_matches('n').parse().unwrap();
    journey.install.kill_speaker(owner.name()).unwrap();
    journey
        .arp_until("eth0", v4(vip), ANSWER, |mac| mac != owner.mac())
        .unwrap();

    let start = Instant::now();
    journey.install.start_speaker(index).unwrap();
    journey
        .arp_until("eth0", v4(vip), ANSWER, |mac| mac == owner.mac())
        .unwrap();
    eprintln!(
        "{vip} back at {} {:?} after its speaker restarted",
        owner.name(),
        start.elapsed()
    );
    assert_eq!(reach(&journey, "demo/web", vip).name(), owner.name());
}

#[test]
fn a_cut_owner_link_moves_the_ip_and_it_comes_back_with_the_link() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let vip = add_service(&mut journey, &web());
    let owner = reach(&journey, "demo/web", vip);
    // The cable is pulled on the switch side: the node's eth0 loses its carrier.
    let peer = format!("p-{}", owner.name());
    let lan = journey.lab.lan().clone();
    let takeover = journey
        .measure_takeover("eth0", v4(vip), owner.mac(), ANSWER, |_| {
            lan.ip(["link", "set", &peer, "down"]).map(drop)
        })
        .unwrap();
    eprintln!(
        "takeover after cutting {}'s link: {:?}",
        owner.name(),
        takeover.elapsed
    );
    assert!(
        takeover.elapsed < Duration::from_secs(3),
        "took {:?}",
        takeover.elapsed
    );
    let new_owner = journey.node_by_mac(takeover.mac).unwrap().name().to_owned();
    assert_ne!(new_owner, owner.name());
    let page = journey.curl_until(vip, ANSWER).unwrap();
    assert_eq!(
        journey.came_through(&page).map(Host::name),
        Some(new_owner.as_str())
    );

    let start = Instant::now();
    lan.ip(["link", "set", &peer, "up"]).unwrap();
    journey
        .arp_until("eth0", v4(vip), ANSWER, |mac| mac == owner.mac())
        .unwrap();
    eprintln!(
        "{vip} back at {} {:?} after its link came back",
        owner.name(),
        start.elapsed()
    );
    assert_eq!(reach(&journey, "demo/web", vip).name(), owner.name());
}

#[test]
fn with_externaltrafficpolicy_local_only_the_endpoint_node_answers() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let backend = IpAddr::V4(journey.ingress_host().unwrap().ipv4());
    for endpoint_node in ["n3", "n2"] {
        journey
            .install
            .write(
                "apps/web-endpoints.yaml",
                &manifests::endpoint_slice("demo", "web", endpoint_node, backend),
            )
            .unwrap();
        let vip = add_service(&mut journey, &web().local());
        let owner = journey
            .arp_until("eth0", v4(vip), ANSWER, |mac| {
                journey.node_by_mac(mac).map(Host::name) == Some(endpoint_node)
            })
            .unwrap();
        assert_eq!(reach(&journey, "demo/web", vip).mac(), owner);
    }
}

#[test]
fn a_dual_stack_service_answers_arp_ndp_and_curl_on_both_ips() {
    lab_or_skip!("arping", "ndisc6", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(
        Lab::builder(),
        &["10.250.0.100-10.250.0.110", "fd00:250::100-fd00:250::110"],
        &[],
    );
    let manifest = web().dual_stack();
    journey
        .install
        .write("apps/web.yaml", &manifest.yaml())
        .unwrap();
    let ips = journey
        .install
        .wait_ips("demo", "web", ALLOCATE, |ips| ips.len() == 2)
        .unwrap();
    let (vip4, vip6) = (ips[0], ips[1]);
    assert_eq!((vip4, vip6), (ip("10.250.0.100"), ip("fd00:250::100")));
    journey.expose(vip4).unwrap();
    journey.expose(vip6).unwrap();
    let owner = reach(&journey, "demo/web", vip4);
    let ndp_owner = journey
        .ndp_owner("eth0", v6(vip6), ANSWER)
        .unwrap()
        .name()
        .to_owned();
    assert_eq!(ndp_owner, owner.name(), "both IPs elect one node");
    let page = journey.curl_until(vip6, ANSWER).unwrap();
    assert!(page.starts_with("ingress proxy ing"), "{page}");
    assert_eq!(
        journey.came_through(&page).map(Host::name),
        Some(owner.name())
    );
}

#[test]
fn an_interface_limited_advertisement_answers_only_on_eth1() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(
        Lab::builder().second_segment(),
        &["10.250.1.100-10.250.1.110"],
        &["eth1"],
    );
    let vip = add_service(&mut journey, &web());
    assert_eq!(vip, ip("10.250.1.100"));
    let owner = journey.arp_owner("eth1", v4(vip), ANSWER).unwrap().clone();
    let eth1_mac = owner.eth1().unwrap().mac;
    let macs = journey.arp_answers("eth1", v4(vip), 3).unwrap();
    assert_eq!(
        macs,
        vec![eth1_mac; 3],
        "answered with {}'s eth1 MAC",
        owner.name()
    );
    let on_eth0: Vec<MacAddr> = journey.arp_answers("eth0", v4(vip), 5).unwrap();
    assert!(on_eth0.is_empty(), "nobody answers on eth0: {on_eth0:?}");
    let page = journey.curl_until(vip, ANSWER).unwrap();
    assert_eq!(
        journey.came_through(&page).map(Host::name),
        Some(owner.name())
    );
}

/// The other hand-off: no kube-proxy, a listener on the owner node itself. The speaker holds
/// the IP on a dummy interface (ARP suppressed) while it owns it, so the node's own nginx
/// answers; the kernel never answers ARP for it.
#[test]
fn standalone_hands_traffic_to_a_listener_on_the_owner_node() {
    lab_or_skip!("arping", "curl", "nginx");
    let _slot = Slot::take();
    let mut journey = Journey::new(Lab::builder()).unwrap();
    let proxies: Vec<_> = journey
        .lab
        .nodes()
        .iter()
        .map(|node| {
            let dir = journey.lab.dir().join(format!("nginx-{}", node.name()));
            ferrolb_e2e::IngressProxy::start(node, &dir).unwrap()
        })
        .collect();
    journey
        .install
        .speaker_args(&["--local-vip-interface", "ferrolb0"]);
    journey
        .install
        .write(
            "pool.yaml",
            &manifests::pool("lan", &["10.250.0.100-10.250.0.110"]),
        )
        .unwrap();
    journey
        .install
        .write("l2.yaml", &manifests::l2_advertisement("l2", &[]))
        .unwrap();
    journey.install.start_all().unwrap();
    journey
        .install
        .write("apps/web.yaml", &web().yaml())
        .unwrap();
    let vip = journey.install.wait_ip("demo", "web", ALLOCATE).unwrap();

    // Round 0: as started; 1: after the owner crashed; 2: after it came back.
    let mut crashed: Option<(usize, Host)> = None;
    for round in 0..3 {
        let owner = journey.arp_owner("eth0", v4(vip), ANSWER).unwrap().clone();
        let macs = journey.arp_answers("eth0", v4(vip), 5).unwrap();
        assert_eq!(
            macs,
            vec![owner.mac(); 5],
            "only the speaker answers, never a kernel"
        );
        for node in journey.lab.nodes() {
            if journey.install.speaker(node.name()).is_none() {
                continue; // crashed: nobody removed its address (the restart does)
            }
            let held = journey.local_vips(node, "ferrolb0").unwrap();
            assert_eq!(
                held.contains(&vip),
                node.name() == owner.name(),
                "{}: the dummy holds {vip} only on the owner (round {round}): {held:?}",
                node.name()
            );
        }
        let page = journey.curl_until(vip, ANSWER).unwrap();
        assert!(
            page.starts_with(&format!("ingress proxy {} ", owner.name())),
            "the owner's own listener answered: {page}"
        );
        match round {
            0 => {
                let i = journey
                    .lab
                    .nodes()
                    .iter()
                    .position(|n| n.name() == owner.name())
                    .unwrap();
                journey.install.kill_speaker(owner.name()).unwrap();
                journey
                    .arp_until("eth0", v4(vip), ANSWER, |mac| mac != owner.mac())
                    .unwrap();
                crashed = Some((i + 1, owner));
            }
            1 => {
                // The node returns: its speaker replaces the leftover interface and, owner
                // again, holds the IP there once more.
                let (i, node) = crashed.take().unwrap();
                journey.install.start_speaker(i).unwrap();
                journey
                    .arp_until("eth0", v4(vip), ANSWER, |mac| mac == node.mac())
                    .unwrap();
            }
            _ => {}
        }
    }
    // A graceful stop deletes the interface, and the VIP with it.
    for node in journey.lab.nodes().to_vec() {
        let status = journey.install.stop_speaker(node.name()).unwrap();
        assert!(status.success(), "{}: {status}", node.name());
        let out = node
            .ns()
            .exec(["ip", "link", "show", "dev", "ferrolb0"])
            .unwrap();
        assert!(!out.status.success(), "{}: ferrolb0 is gone", node.name());
    }
    drop(proxies);
}

/// Issue 19: a pool added later that overlaps a serving one is the one refused, whatever the
/// names; the serving pool stays valid and its VIPs keep being answered.
#[test]
fn an_overlapping_pool_added_later_is_refused_and_the_serving_pool_keeps_answering() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let _slot = Slot::take();
    let mut journey = Journey::new(Lab::builder()).unwrap();
    journey
        .install
        .write(
            "pool.yaml",
            &manifests::pool("lan", &["10.250.0.100-10.250.0.110"]),
        )
        .unwrap();
    journey
        .install
        .write("l2.yaml", &manifests::l2_advertisement_for("l2", &["lan"]))
        .unwrap();
    journey.install.start_all().unwrap();
    let vip = add_service(&mut journey, &web());
    let owner = reach(&journey, "demo/web", vip);
    journey
        .install
        .wait_pool_validity("lan", ALLOCATE, |status, _| status == "True")
        .unwrap();

    // "a10" sorts before "lan": seniority by name would hand it the overlap.
    journey
        .install
        .write(
            "a10.yaml",
            &manifests::pool("a10", &["fd01::/64", "10.0.0.0/8"]),
        )
        .unwrap();
    let (_, why) = journey
        .install
        .wait_pool_validity("a10", ALLOCATE, |status, _| status == "False")
        .unwrap();
    assert!(
        why.contains("10.0.0.0/8") && why.contains("lan"),
        "a10 is refused naming the overlap with lan: {why}"
    );
    let macs = journey.arp_answers("eth0", v4(vip), 30).unwrap();
    assert_eq!(
        macs,
        vec![owner.mac(); 30],
        "every probe answered by {} after a10 was added",
        owner.name()
    );
    assert_eq!(
        journey.install.pool_validity("lan").map(|v| v.0).as_deref(),
        Some("True"),
        "lan stays valid"
    );
    assert_eq!(
        journey.install.service_pool("demo", "web").as_deref(),
        Some("lan")
    );
    let view = status_view(&journey);
    assert!(
        view.lines()
            .any(|l| l.contains("a10") && l.contains("10.0.0.0/8") && l.contains("lan")),
        "the status view says why a10 is refused:\n{view}"
    );

    // A restart of the controller keeps the order.
    journey.install.kill_controller().unwrap();
    journey.install.start_controller().unwrap();
    journey.install.wait_controller_ready(ALLOCATE).unwrap();
    assert_eq!(
        journey.install.pool_validity("lan").map(|v| v.0).as_deref(),
        Some("True"),
        "lan is still the senior pool after a restart"
    );
    assert_eq!(reach(&journey, "demo/web", vip).name(), owner.name());
}

/// Waits (bounded) until the status view satisfies `done`; returns it.
fn wait_view(journey: &Journey, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + ALLOCATE;
    loop {
        let view = status_view(journey);
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the status view did not show {what} within {ALLOCATE:?}:\n{view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 19: a broken edit of the serving pool.yaml (truncated by an editor's save or a `>`
/// redirect, or a YAML syntax error) keeps the pool as it last read: the Services keep their
/// IPs, ARP and curl keep working, and the status view says what is wrong until it is fixed.
#[test]
fn a_broken_edit_of_the_serving_pool_keeps_it_and_says_so() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    let (_slot, mut journey) = stage(Lab::builder(), &["10.250.0.100-10.250.0.110"], &[]);
    let web_ip = add_service(&mut journey, &web());
    let api_ip = add_service(&mut journey, &manifests::service("demo", "api"));
    let owner = reach(&journey, "demo/web", web_ip);
    let good = manifests::pool("lan", &["10.250.0.100-10.250.0.110"]);
    let pool_file = journey.install.dir().join("pool.yaml");
    let broken = [
        ("truncated", String::new(), "empty"),
        ("a syntax error", good.replace("spec:", "spec: {"), "line "),
    ];
    for (what, text, said) in broken {
        // In place, as an editor or a shell redirect writes: not atomically.
        std::fs::write(&pool_file, &text).unwrap();
        let view = wait_view(&journey, "the broken pool.yaml", |v| {
            v.contains("pool.yaml") && v.contains(said)
        });
        assert_eq!(
            journey.install.service_ips("demo", "web"),
            [web_ip],
            "{what}"
        );
        assert_eq!(
            journey.install.service_ips("demo", "api"),
            [api_ip],
            "{what}"
        );
        let macs = journey.arp_answers("eth0", v4(web_ip), 20).unwrap();
        assert_eq!(
            macs,
            vec![owner.mac(); 20],
            "{what} pool.yaml: every probe answered by {}\n{view}",
            owner.name()
        );
        assert!(journey.curl(web_ip).unwrap().is_some(), "{what}: curl");
        assert!(
            view.lines()
                .any(|l| l.contains("lan") && l.contains("10.250.0.100-10.250.0.110")),
            "{what}: the pool is still listed:\n{view}"
        );

        journey.install.write("pool.yaml", &good).unwrap();
        wait_view(&journey, "the problem cleared", |v| {
            !v.contains("pool.yaml")
        });
    }
    reach(&journey, "demo/api", api_ip);
}

/// The speaker's metrics as its node serves them.
fn speaker_metrics(node: &Host) -> String {
    let out = node
        .ns()
        .exec(["curl", "-s", "-m", "2", "http://127.0.0.1:7473/metrics"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 19: what the status view, the records and `ferrolb_speaker_announced` say is what is
/// on the wire. An IP another host holds, and one whose advertisement names an interface no
/// node has, are not claimed as announced; the view says why, and each speaker's standing.
#[test]
fn the_status_says_what_is_not_on_the_wire_and_why() {
    lab_or_skip!("arping", "curl", "nginx", "nft");
    // A host outside FerroLB already uses 10.250.0.100.
    let squatter = Ipv4Addr::new(10, 250, 0, 100);
    let (_slot, mut journey) = stage(
        Lab::builder().nodes(3).extra("squat", squatter),
        &["10.250.0.100-10.250.0.101"],
        &[],
    );
    // The default advertisement serves pool lan only; pool side's names an interface no node
    // has.
    journey
        .install
        .write(
            "l2.yaml",
            "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2\n  namespace: metallb-system\nspec:\n  ipAddressPools: [lan]\n",
        )
        .unwrap();
    journey
        .install
        .write(
            "l2-eth9.yaml",
            "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: eth9\n  namespace: metallb-system\nspec:\n  ipAddressPools: [side]\n  interfaces: [eth9]\n",
        )
        .unwrap();
    journey
        .install
        .write(
            "pool-side.yaml",
            &manifests::pool("side", &["10.250.0.120/32"])
                .replace("spec:\n", "spec:\n  autoAssign: false\n"),
        )
        .unwrap();
    let taken = add_service(&mut journey, &web());
    assert_eq!(taken, IpAddr::V4(squatter));
    let side = add_service(
        &mut journey,
        &manifests::service("demo", "side").annotation("metallb.io/address-pool", "side"),
    );
    let view = wait_view(&journey, "why neither Service is answered", |v| {
        v.contains("demo/web: IPConflict: not answered on node")
            && v.contains("demo/side: NoInterface: not answered on node")
    });
    println!("{view}");
    assert!(view.contains("SPEAKERS"), "{view}");
    assert!(
        view.lines().filter(|l| l.contains("majority")).count() == 3,
        "each speaker's standing:\n{view}"
    );
    for service in ["web", "side"] {
        assert!(
            journey.install.recorded_owners("demo", service).is_empty(),
            "no record claims demo/{service} is announced"
        );
    }
    for node in journey.lab.nodes() {
        let metrics = speaker_metrics(node);
        for ip in [taken, side] {
            assert!(
                !metrics
                    .lines()
                    .any(|l| l.starts_with("ferrolb_speaker_announced")
                        && l.contains(&ip.to_string())),
                "{}: ferrolb_speaker_announced claims {ip}:\n{metrics}",
                node.name()
            );
        }
    }
    // The squatter leaves: the next probe finds the IP free; the view says who answers now.
    let out = journey
        .lab
        .extra("squat")
        .unwrap()
        .ns()
        .ip(["addr", "flush", "dev", "eth0"])
        .unwrap();
    assert!(out.status.success());
    let owner = journey
        .arp_owner("eth0", squatter, Duration::from_secs(20))
        .unwrap()
        .clone();
    let view = wait_view(&journey, "the owner of demo/web", |v| {
        v.lines()
            .any(|l| l.contains("demo/web") && l.contains(owner.name()))
            && !v.contains("demo/web: IPConflict")
    });
    assert!(view.contains("demo/side: NoInterface"), "{view}");
}
