//! The announcer library driven through its API inside lab nodes, the way the election will
//! drive it: ownership moves from one node to another with `set_owned`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use ferrolb_e2e::tools::{arping_every_10ms, arping_until};
use ferrolb_e2e::{CapturedFrame, Lab, Namespace, lab_or_skip};
use ferrolb_proto::wire::{self, ArpOperation, Frame, MacAddr};
use ferrolb_speaker::interfaces::{self, Link};
use ferrolb_speaker::lifecycle::{self, Wire};
use ferrolb_speaker::{Announcer, AnnouncerConfig, Event, Events, Intent, Start};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);

/// The links of the calling thread's namespace, read once over netlink.
fn links() -> Vec<Link> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
        tokio::spawn(connection);
        interfaces::list(&handle).await.expect("the link list")
    })
}

fn start_in(ns: &Namespace) -> (Announcer, Events) {
    ns.within(|| {
        let (announcer, events) =
            Announcer::start(AnnouncerConfig::default()).expect("the announcer starts");
        announcer.set_links(links());
        (announcer, events)
    })
}

fn owned(ip: Ipv4Addr) -> BTreeMap<IpAddr, Intent> {
    let intent = Intent {
        interfaces: vec!["eth0".to_owned()],
        start: Start::Now,
        standing: None,
    };
    [(IpAddr::from(ip), intent)].into()
}

fn replies(frames: &[CapturedFrame]) -> Vec<(SystemTime, MacAddr)> {
    frames
        .iter()
        .filter_map(|f| match wire::parse_frame(&f.data) {
            Ok(Frame::Arp { arp, .. })
                if arp.operation == ArpOperation::Reply
                    && arp.source_protocol_addr == VIP
                    && !arp.is_gratuitous() =>
            {
                Some((f.ts, arp.source_hardware_addr))
            }
            _ => None,
        })
        .collect()
}

fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn set_owned_moves_the_answers_at_once() {
    lab_or_skip!("arping");
    let lab = Lab::builder().nodes(2).build().unwrap();
    let (client, n1, n2) = (lab.client(), lab.node(1).unwrap(), lab.node(2).unwrap());
    let (a1, _events1) = start_in(n1.ns());
    let (a2, mut events2) = start_in(n2.ns());

    a1.set_owned(owned(VIP));
    arping_until(client.ns(), "eth0", VIP, Duration::from_secs(10), |macs| {
        macs == [n1.mac()]
    })
    .unwrap();

    let capture = client.ns().capture("eth0", "arp").unwrap();
    let _prober = arping_every_10ms(client.ns(), "eth0", VIP, Duration::from_secs(20)).unwrap();
    capture
        .wait_for("answers from node 1", Duration::from_secs(5), |f| {
            replies(f).len() >= 5
        })
        .unwrap();
    let moved = SystemTime::now();
    a1.set_owned(BTreeMap::new());
    a2.set_owned(owned(VIP));
    capture
        .wait_for("answers from node 2", Duration::from_secs(5), |f| {
            replies(f)
                .iter()
                .filter(|(_, mac)| *mac == n2.mac())
                .count()
                >= 5
        })
        .unwrap();
    let frames = capture.stop().unwrap();

    let all = replies(&frames);
    let last_n1 = all
        .iter()
        .filter(|(_, mac)| *mac == n1.mac())
        .map(|(ts, _)| *ts)
        .max()
        .unwrap();
    let first_n2 = all
        .iter()
        .filter(|(_, mac)| *mac == n2.mac())
        .map(|(ts, _)| *ts)
        .min()
        .unwrap();
    assert!(
        secs(moved, last_n1) < 0.1,
        "node 1 stops answering at once: last answer {:.3} s after set_owned",
        secs(moved, last_n1)
    );
    assert!(
        all.iter()
            .all(|(_, mac)| *mac == n1.mac() || *mac == n2.mac()),
        "{all:?}"
    );
    let gratuitous_from_n2 = frames
        .iter()
        .filter(|f| {
            matches!(wire::parse_frame(&f.data), Ok(Frame::Arp { arp, .. })
                if arp.is_gratuitous() && arp.source_hardware_addr == n2.mac())
        })
        .count();
    assert!(gratuitous_from_n2 >= 2, "takeover announced by node 2");
    eprintln!(
        "last node-1 answer {:.1} ms after set_owned, first node-2 answer {:.1} ms after",
        secs(moved, last_n1) * 1e3,
        secs(moved, first_n2) * 1e3
    );

    // The API's own account of it.
    let Ok(event) = events2.try_recv() else {
        panic!("node 2 reported nothing")
    };
    assert!(
        matches!(&event, Event::Ip(lifecycle::Event::Wire { ip, wire: Wire::Answering { interfaces } }) if *ip == IpAddr::from(VIP) && interfaces == &["eth0"]),
        "{event:?}"
    );
    let stats = a2.stats();
    let vip = stats
        .ips
        .get(&IpAddr::from(VIP))
        .copied()
        .unwrap_or_default();
    assert!(
        vip.replies_sent >= 5 && vip.requests_received >= vip.replies_sent,
        "{vip:?}"
    );
    assert!(vip.gratuitous_sent >= 2, "{vip:?}");
    a1.shutdown();
    a2.shutdown();
}

/// `nft list table arp ferrolb` in `ns` (empty when there is no such table).
fn arp_table(ns: &Namespace) -> String {
    let out = ns
        .exec(["nft", "list", "table", "arp", "ferrolb"])
        .expect("nft runs in the node");
    String::from_utf8(out.stdout).expect("nft prints text")
}

/// Polls `arp_table` until `done` holds (the table is written off the announcer's thread).
fn arp_table_until(ns: &Namespace, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let table = arp_table(ns);
        if done(&table) {
            return table;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 5 s; table:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `kernel_arp`, the owner's kernel drops the requests for the owned IP at its ARP input
/// (table `arp ferrolb` lists it and counts them) while the speaker answers every one; the
/// table follows ownership and is gone once the announcer has stopped.
#[test]
fn the_kernel_skips_the_requests_the_speaker_answers() {
    lab_or_skip!("nft");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let config = AnnouncerConfig {
        kernel_arp: true,
        ..AnnouncerConfig::default()
    };
    let (announcer, _events) = n1.ns().within(|| {
        let (announcer, events) = Announcer::start(config).expect("the announcer starts");
        announcer.set_links(links());
        (announcer, events)
    });

    announcer.set_owned(owned(VIP));
    arp_table_until(n1.ns(), "the owned IP listed", |t| {
        t.contains("elements = { 10.250.0.100 }")
    });
    let answers =
        ferrolb_e2e::tools::arping(client.ns(), "eth0", VIP, 3, Duration::from_millis(100))
            .unwrap();
    assert_eq!(answers, [n1.mac(); 3], "the speaker answers every request");
    let table = arp_table(n1.ns());
    assert!(
        table.contains("@answered counter packets 3 "),
        "the kernel dropped the three requests at its ARP input:\n{table}"
    );

    announcer.set_owned(BTreeMap::new());
    arp_table_until(n1.ns(), "no table without an owned IP", str::is_empty);
    announcer.set_owned(owned(VIP));
    arp_table_until(n1.ns(), "listed again", |t| t.contains("10.250.0.100"));
    announcer.shutdown();
    assert_eq!(arp_table(n1.ns()), "", "removed when the announcer stops");
    lab.teardown().unwrap();
}
