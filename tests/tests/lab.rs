//! The lab harness itself, tested in real namespaces: reachability, captures, teardown.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_e2e::{Lab, lab_or_skip};
use ferrolb_proto::wire::{self, ArpOperation, ArpRepr, Frame, MacAddr};

/// Names in `ip netns list`.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn leftover_namespaces(id: &str) -> Vec<String> {
    let prefix = format!("lab-{id}-");
    netns_list()
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn ping(lab: &Lab, target: Ipv4Addr) {
    lab.client()
        .ns()
        .run(["ping", "-c1", "-W1", &target.to_string()])
        .unwrap_or_else(|error| panic!("{error}"));
}

/// Every ARP frame in a capture, parsed with `proto::wire`.
fn arp_frames(frames: &[ferrolb_e2e::CapturedFrame]) -> Vec<ArpRepr> {
    frames
        .iter()
        .filter_map(|frame| match wire::parse_frame(&frame.data) {
            Ok(Frame::Arp { arp, .. }) => Some(arp),
            _ => None,
        })
        .collect()
}

#[test]
fn client_reaches_every_node() {
    lab_or_skip!("ping");
    let lab = Lab::builder().nodes(3).build().unwrap();
    for node in lab.nodes() {
        ping(&lab, node.ipv4());
    }
}

#[test]
fn kernel_arp_exchange_parses_with_proto_wire() {
    lab_or_skip!("ping");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let client = lab.client();
    let n1 = lab.node(1).unwrap();
    let capture = client.ns().capture("eth0", "arp").unwrap();
    ping(&lab, n1.ipv4());

    let is_request = |arp: &ArpRepr| {
        arp.operation == ArpOperation::Request
            && arp.source_hardware_addr == client.mac()
            && arp.source_protocol_addr == client.ipv4()
            && arp.target_protocol_addr == n1.ipv4()
    };
    let is_reply = |arp: &ArpRepr| {
        arp.operation == ArpOperation::Reply
            && arp.source_hardware_addr == n1.mac()
            && arp.source_protocol_addr == n1.ipv4()
            && arp.target_hardware_addr == client.mac()
            && arp.target_protocol_addr == client.ipv4()
    };
    capture
        .wait_for(
            "the ARP request and reply",
            Duration::from_secs(5),
            |frames| {
                let arps = arp_frames(frames);
                arps.iter().any(is_request) && arps.iter().any(is_reply)
            },
        )
        .unwrap();
    let frames = capture.stop().unwrap();
    let arps = arp_frames(&frames);
    let request = frames
        .iter()
        .zip(&arps)
        .find(|(_, arp)| is_request(arp))
        .map(|(frame, _)| frame.ts);
    let reply = frames
        .iter()
        .zip(&arps)
        .find(|(_, arp)| is_reply(arp))
        .map(|(frame, _)| frame.ts);
    assert!(
        request.is_some() && reply.is_some(),
        "request and reply expected in {arps:?}"
    );
    assert!(reply >= request, "the reply comes after the request");
    assert_ne!(client.mac(), MacAddr::UNSPECIFIED);
}

#[test]
fn capture_start_waits_until_listening() {
    lab_or_skip!("ping");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let capture = lab.client().ns().capture("eth0", "icmp").unwrap();
    ping(&lab, lab.node(1).unwrap().ipv4());
    // Had start() returned before tcpdump listened, the single echo request would be missing.
    capture
        .wait_for(
            "the echo request and reply",
            Duration::from_secs(5),
            |frames| frames.len() >= 2,
        )
        .unwrap();
    let frames = capture.stop().unwrap();
    assert_eq!(frames.len(), 2, "one echo request, one reply");
    // ICMP type in an untagged IPv4 frame without options: 8 request, 0 reply.
    assert_eq!(frames[0].data.get(34), Some(&8));
    assert_eq!(frames[1].data.get(34), Some(&0));
}

#[test]
fn twenty_labs_in_a_row_leave_nothing_behind() {
    lab_or_skip!();
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..20 {
        let lab = Lab::builder().nodes(3).build().unwrap();
        let sleeper = lab.node(2).unwrap().ns().spawn(["sleep", "600"]).unwrap();
        assert!(sleeper.is_running().unwrap());
        ids.push(lab.id().to_owned());
        pids.push(sleeper.pid());
        // The lab goes first and kills the process; the handle's own drop must then be quiet.
        drop(lab);
        drop(sleeper);
    }
    for id in &ids {
        assert_eq!(leftover_namespaces(id), Vec::<String>::new(), "lab {id}");
    }
    for pid in &pids {
        assert!(!process_exists(*pid), "process {pid} still there");
    }
    eprintln!("20 labs up and down in {:?}", started.elapsed());
}

#[test]
fn lab_dropped_while_panicking_leaves_nothing_behind() {
    lab_or_skip!();
    let mut seen: Option<(String, u32, std::path::PathBuf)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder().nodes(2).build().unwrap();
        let sleeper = lab.node(1).unwrap().ns().spawn(["sleep", "600"]).unwrap();
        seen = Some((lab.id().to_owned(), sleeper.pid(), lab.dir().to_owned()));
        // The handle outlives the lab's teardown here: the lab must kill it by PID.
        std::mem::forget(sleeper);
        panic!("a test failing with a lab up");
    }));
    assert!(result.is_err());
    let (id, pid, dir) = seen.unwrap();
    assert_eq!(leftover_namespaces(&id), Vec::<String>::new());
    assert!(!process_exists(pid), "process {pid} still there");
    // On panic the lab keeps its logs for the post-mortem; tidy up after this deliberate one.
    assert!(dir.exists(), "logs kept after a panic");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn optional_parts_are_built_and_reachable() {
    lab_or_skip!("ping");
    let lab = Lab::builder()
        .nodes(2)
        .ingress()
        .second_segment()
        .extra("peer", Ipv4Addr::new(10, 250, 0, 200))
        .build()
        .unwrap();
    let ingress = lab.ingress().unwrap();
    let peer = lab.extra("peer").unwrap();
    assert_eq!(ingress.ipv4(), Ipv4Addr::new(10, 250, 0, 50));
    assert_eq!(peer.ipv4(), Ipv4Addr::new(10, 250, 0, 200));
    assert_eq!(peer.ipv6().to_string(), "fd00:250::200");
    ping(&lab, ingress.ipv4());
    ping(&lab, peer.ipv4());

    let n2_eth1 = lab.node(2).unwrap().eth1().unwrap();
    assert_eq!(n2_eth1.ipv4, Ipv4Addr::new(10, 250, 1, 2));
    assert_eq!(
        lab.client().eth1().unwrap().ipv4,
        Ipv4Addr::new(10, 250, 1, 10)
    );
    ping(&lab, n2_eth1.ipv4);
    assert!(ingress.eth1().is_none() && peer.eth1().is_none());

    let mut macs: Vec<MacAddr> = lab.nodes().iter().map(|n| n.mac()).collect();
    macs.extend([lab.client().mac(), ingress.mac(), peer.mac(), n2_eth1.mac]);
    let count = macs.len();
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), count, "every interface has its own MAC");

    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 6, "{namespaces:?}");
    let listed = netns_list();
    assert!(namespaces.iter().all(|ns| listed.contains(ns)));
}

#[test]
fn background_process_pauses_resumes_and_stops() {
    lab_or_skip!();
    let lab = Lab::builder().nodes(1).build().unwrap();
    let sleeper = lab.node(1).unwrap().ns().spawn(["sleep", "600"]).unwrap();
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After "pid (comm) ": the state letter.
        stat.rsplit(") ").next().unwrap().chars().next().unwrap()
    };
    let pid = sleeper.pid();
    let until = |want: char| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        state(pid)
    };
    sleeper.pause().unwrap();
    assert_eq!(until('T'), 'T');
    sleeper.resume().unwrap();
    assert_eq!(until('S'), 'S');
    // Paused again: stop() must still end it (SIGTERM, then SIGCONT so it can act on it).
    sleeper.pause().unwrap();
    let status = sleeper.stop_within(Duration::from_secs(2)).unwrap();
    assert!(!status.success());
    assert!(!process_exists(pid));
    assert!(!sleeper.is_running().unwrap());
    assert!(sleeper.pause().is_err(), "a reaped PID is never signalled");
    assert_eq!(lab.pids(), vec![pid]);
}

#[test]
fn failed_command_names_command_namespace_status_and_stderr() {
    lab_or_skip!();
    let lab = Lab::builder().nodes(1).build().unwrap();
    let ns = lab.node(1).unwrap().ns();
    let error = ns
        .run(["sh", "-c", "echo no route to anywhere >&2; exit 3"])
        .unwrap_err()
        .to_string();
    for needle in ["sh -c", ns.name(), "exit status: 3", "no route to anywhere"] {
        assert!(error.contains(needle), "`{needle}` missing from: {error}");
    }
    let error = ns
        .run_within(["sleep", "5"], Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(error.contains("did not finish"), "{error}");
    let output = ns.exec(["sh", "-c", "exit 1"]).unwrap();
    assert_eq!(output.status.code(), Some(1));
}
