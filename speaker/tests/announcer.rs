//! The announcer end to end in the network lab: the real `ferrolb-speaker announce` binary on
//! lab nodes, checked with arping, ndisc6 and captures from the client.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ferrolb_e2e::tools::{arping, arping_every_10ms, arping_until, ndisc6, ndisc6_until};
use ferrolb_e2e::{Background, CapturedFrame, Host, Lab, lab_or_skip};
use ferrolb_proto::wire::{self, ArpOperation, ArpRepr, Frame, MacAddr, NdiscRepr};
use ferrolb_speaker::local_vips::ALIAS;

const SPEAKER: &str = env!("CARGO_BIN_EXE_ferrolb-speaker");
const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 101);
const READY: Duration = Duration::from_secs(10);

fn vip6() -> Ipv6Addr {
    "fd00:250::100".parse().expect("a valid address")
}

/// `ferrolb-speaker announce ARGS` in the background on `host`.
fn speaker(host: &Host, args: &[&str]) -> Background {
    let mut argv = vec![SPEAKER, "--log-level", "ferrolb_speaker=debug", "announce"];
    argv.extend_from_slice(args);
    host.ns()
        .spawn(argv)
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Waits until the speaker's log contains `needle`.
fn wait_for_log(process: &Background, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = process.log().unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged within {timeout:?}; log:\n{log}"
        );
        assert!(
            process.is_running().unwrap_or(false),
            "speaker exited; log:\n{log}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn arp_of(frame: &CapturedFrame) -> Option<ArpRepr> {
    match wire::parse_frame(&frame.data) {
        Ok(Frame::Arp { arp, .. }) => Some(arp),
        _ => None,
    }
}

/// The ARP replies saying where `ip` is, with the MAC they give.
fn replies_for(frames: &[CapturedFrame], ip: Ipv4Addr) -> Vec<(SystemTime, MacAddr)> {
    frames
        .iter()
        .filter_map(|f| Some((f.ts, arp_of(f)?)))
        .filter(|(_, arp)| {
            arp.operation == ArpOperation::Reply
                && arp.source_protocol_addr == ip
                && !arp.is_gratuitous()
        })
        .map(|(ts, arp)| (ts, arp.source_hardware_addr))
        .collect()
}

fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[test]
fn arping_gets_the_owner_and_no_other_node_answers() {
    lab_or_skip!("arping");
    let lab = Lab::builder().nodes(3).build().unwrap();
    let (client, n1, n2) = (lab.client(), lab.node(1).unwrap(), lab.node(2).unwrap());
    let capture = client.ns().capture("eth0", "arp").unwrap();
    let _s1 = speaker(n1, &["--interface", "eth0", "--ip", &VIP.to_string()]);
    let _s2 = speaker(n2, &["--interface", "eth0", "--ip", &VIP2.to_string()]);

    arping_until(client.ns(), "eth0", VIP, READY, |macs| !macs.is_empty()).unwrap();
    arping_until(client.ns(), "eth0", VIP2, READY, |macs| !macs.is_empty()).unwrap();
    let macs = arping(client.ns(), "eth0", VIP, 5, Duration::from_millis(20)).unwrap();
    assert_eq!(macs, vec![n1.mac(); 5], "five answers, all from node 1");
    let macs = arping(client.ns(), "eth0", VIP2, 3, Duration::from_millis(20)).unwrap();
    assert_eq!(macs, vec![n2.mac(); 3], "node 2 answers its own IP");

    let frames = capture.stop().unwrap();
    let for_vip = replies_for(&frames, VIP);
    assert!(for_vip.len() >= 6, "replies captured: {for_vip:?}");
    assert!(
        for_vip.iter().all(|(_, mac)| *mac == n1.mac()),
        "only node 1 ever answered for {VIP}: {for_vip:?}"
    );
    assert!(
        replies_for(&frames, VIP2)
            .iter()
            .all(|(_, mac)| *mac == n2.mac())
    );
    // Every reply goes to the client, from the owner's MAC at the Ethernet layer too.
    for frame in &frames {
        if let Ok(Frame::Arp { ethernet, arp }) = wire::parse_frame(&frame.data)
            && arp.operation == ArpOperation::Reply
            && !arp.is_gratuitous()
        {
            assert_eq!(ethernet.dst_addr, client.mac());
            assert_eq!(ethernet.src_addr, arp.source_hardware_addr);
        }
    }
}

#[test]
fn gratuitous_burst_count_spacing_and_forms() {
    lab_or_skip!();
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let capture = client.ns().capture("eth0", "arp or icmp6").unwrap();
    let started = SystemTime::now();
    let _s = speaker(
        n1,
        &[
            "-i",
            "eth0",
            "--ip",
            &VIP.to_string(),
            "--ip",
            &vip6().to_string(),
        ],
    );

    let gratuitous = |frames: &[CapturedFrame]| -> Vec<(SystemTime, ArpOperation)> {
        frames
            .iter()
            .filter_map(|f| Some((f.ts, arp_of(f)?)))
            .filter(|(_, arp)| {
                arp.is_gratuitous()
                    && arp.source_protocol_addr == VIP
                    && arp.source_hardware_addr == n1.mac()
            })
            .map(|(ts, arp)| (ts, arp.operation))
            .collect()
    };
    let unsolicited = |frames: &[CapturedFrame]| -> Vec<SystemTime> {
        frames
            .iter()
            .filter(|f| {
                matches!(wire::parse_frame(&f.data), Ok(Frame::Ndisc {
                    ethernet,
                    ipv6,
                    ndisc: NdiscRepr::NeighborAdvert { flags, target_addr, target_lladdr },
                }) if ethernet.src_addr == n1.mac()
                    && ipv6.dst_addr == "ff02::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED)
                    && target_addr == vip6()
                    && target_lladdr == Some(n1.mac())
                    && flags.override_() && !flags.solicited())
            })
            .map(|f| f.ts)
            .collect()
    };
    capture
        .wait_for(
            "5 request + 5 reply gratuitous ARPs and 5 unsolicited NAs",
            Duration::from_secs(10),
            |frames| gratuitous(frames).len() >= 10 && unsolicited(frames).len() >= 5,
        )
        .unwrap();
    // A sixth announcement would be due 1.1 s after the fifth: wait past it.
    thread::sleep(Duration::from_millis(1500));
    let frames = capture.stop().unwrap();
    let arps = gratuitous(&frames);
    let nas = unsolicited(&frames);
    let requests: Vec<SystemTime> = arps
        .iter()
        .filter(|(_, op)| *op == ArpOperation::Request)
        .map(|(ts, _)| *ts)
        .collect();
    let replies: Vec<SystemTime> = arps
        .iter()
        .filter(|(_, op)| *op == ArpOperation::Reply)
        .map(|(ts, _)| *ts)
        .collect();
    assert_eq!((requests.len(), replies.len(), nas.len()), (5, 5, 5));
    assert!(
        secs(started, requests[0]) < 2.0,
        "the first announcement goes out at once (debug build start-up included)"
    );
    for series in [&requests, &replies, &nas] {
        let gaps: Vec<f64> = series.windows(2).map(|w| secs(w[0], w[1])).collect();
        for gap in &gaps {
            assert!(
                (1.0..1.35).contains(gap),
                "announcements 1.1 s apart, got gaps {gaps:?}"
            );
        }
    }
    // Request and reply forms go out together.
    for (request, reply) in requests.iter().zip(&replies) {
        assert!(secs(*request, *reply).abs() < 0.05);
    }
}

#[test]
fn ndisc6_and_unicast_nud_are_answered() {
    lab_or_skip!("ndisc6", "ping");
    let lab = Lab::builder().nodes(2).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let _s = speaker(n1, &["-i", "eth0", "--ip", &vip6().to_string()]);
    let mac = ndisc6_until(client.ns(), "eth0", vip6(), READY).unwrap();
    assert_eq!(
        mac,
        n1.mac(),
        "multicast solicitation answered by the owner"
    );

    // A STALE entry makes the client's kernel probe with unicast solicitations on next use.
    client
        .ns()
        .sysctl("net.ipv6.neigh.eth0.delay_first_probe_time", "0")
        .unwrap();
    let capture = client.ns().capture("eth0", "icmp6").unwrap();
    let vip = vip6().to_string();
    client
        .ns()
        .ip([
            "-6",
            "neigh",
            "replace",
            &vip,
            "lladdr",
            &n1.mac().to_string(),
            "dev",
            "eth0",
            "nud",
            "stale",
        ])
        .unwrap();
    // The echo itself goes unanswered (node 1's kernel does not hold the VIP); only the
    // neighbour exchange matters.
    client
        .ns()
        .exec(["ping", "-6", "-c", "1", "-W", "1", &vip])
        .unwrap();
    let is_unicast_ns = |f: &CapturedFrame| {
        matches!(wire::parse_frame(&f.data), Ok(Frame::Ndisc {
            ethernet, ipv6, ndisc: NdiscRepr::NeighborSolicit { target_addr, .. },
        }) if ethernet.dst_addr == n1.mac() && ipv6.dst_addr == vip6() && target_addr == vip6())
    };
    let is_solicited_na = |f: &CapturedFrame| {
        matches!(wire::parse_frame(&f.data), Ok(Frame::Ndisc {
            ethernet, ipv6, ndisc: NdiscRepr::NeighborAdvert { flags, target_addr, .. },
        }) if ethernet.src_addr == n1.mac() && ethernet.dst_addr == client.mac()
            && ipv6.src_addr == vip6() && target_addr == vip6() && flags.solicited())
    };
    let frames = capture
        .wait_for(
            "a unicast NUD solicitation and its answer",
            Duration::from_secs(8),
            |frames| frames.iter().any(is_unicast_ns) && frames.iter().any(is_solicited_na),
        )
        .unwrap();
    let ns_at = frames.iter().position(is_unicast_ns);
    let na_at = frames.iter().rposition(is_solicited_na);
    assert!(ns_at < na_at, "the answer follows the unicast solicitation");
    // The kernel probes from its link-local address; the answer goes back to that address.
    let ipv6_src = |at: Option<usize>, dst: bool| match at.and_then(|i| frames.get(i)) {
        Some(f) => match wire::parse_frame(&f.data) {
            Ok(Frame::Ndisc { ipv6, .. }) => Some(if dst { ipv6.dst_addr } else { ipv6.src_addr }),
            _ => None,
        },
        None => None,
    };
    assert_eq!(ipv6_src(ns_at, false), ipv6_src(na_at, true));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = client
            .ns()
            .run(["ip", "-6", "neigh", "show", &vip, "dev", "eth0"])
            .unwrap();
        let state = String::from_utf8_lossy(&out.stdout).into_owned();
        if state.contains("REACHABLE") {
            assert!(state.contains(&n1.mac().to_string()), "{state}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client's entry never confirmed: {state}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    capture.stop().unwrap();
}

#[test]
fn a_node_with_two_nics_answers_only_on_the_advertised_one() {
    lab_or_skip!("arping", "ndisc6");
    let lab = Lab::builder().nodes(1).second_segment().build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let n1_eth1 = n1.eth1().unwrap().mac;
    let _s = speaker(
        n1,
        &[
            "--interface",
            "eth1",
            "--ip",
            &VIP.to_string(),
            "--ip",
            &vip6().to_string(),
        ],
    );
    arping_until(client.ns(), "eth1", VIP, READY, |macs| !macs.is_empty()).unwrap();
    let on_eth1 = arping(client.ns(), "eth1", VIP, 3, Duration::from_millis(20)).unwrap();
    assert_eq!(on_eth1, vec![n1_eth1; 3], "answered from eth1's MAC");
    assert_eq!(
        ndisc6(client.ns(), "eth1", vip6(), Duration::from_millis(500)).unwrap(),
        Some(n1_eth1)
    );
    let on_eth0 = arping(client.ns(), "eth0", VIP, 5, Duration::from_millis(50)).unwrap();
    assert!(on_eth0.is_empty(), "nothing on eth0's segment: {on_eth0:?}");
    assert_eq!(
        ndisc6(client.ns(), "eth0", vip6(), Duration::from_millis(300)).unwrap(),
        None
    );
}

#[test]
fn sigterm_stops_answers_within_a_second() {
    lab_or_skip!("arping");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let s = speaker(n1, &["-i", "eth0", "--ip", &VIP.to_string()]);
    arping_until(client.ns(), "eth0", VIP, READY, |macs| !macs.is_empty()).unwrap();

    let capture = client.ns().capture("eth0", "arp").unwrap();
    // Continuous broadcast requests every 10 ms while the speaker stops.
    let _prober = arping_every_10ms(client.ns(), "eth0", VIP, Duration::from_secs(20)).unwrap();
    capture
        .wait_for("answers before the stop", Duration::from_secs(5), |f| {
            replies_for(f, VIP).len() >= 5
        })
        .unwrap();
    let stopping = SystemTime::now();
    let status = s.stop().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let exited = SystemTime::now();
    // Requests keep coming for a while after the exit: none may be answered.
    thread::sleep(Duration::from_millis(1200));
    let frames = capture.stop().unwrap();
    let replies = replies_for(&frames, VIP);
    let last = replies.last().map(|(ts, _)| *ts).unwrap();
    assert!(
        secs(stopping, last) < 1.0,
        "last answer {:.3} s after SIGTERM",
        secs(stopping, last)
    );
    let late_requests = frames
        .iter()
        .filter(|f| f.ts > exited)
        .filter_map(arp_of)
        .filter(|arp| arp.operation == ArpOperation::Request && arp.target_protocol_addr == VIP)
        .count();
    assert!(
        late_requests > 20,
        "the client kept asking ({late_requests})"
    );
    assert!(replies.iter().all(|(ts, _)| *ts <= exited));
    eprintln!(
        "SIGTERM to exit {:.3} s; last answer {:.3} s after SIGTERM",
        secs(stopping, exited),
        secs(stopping, last)
    );
}

/// The addresses on `iface` in `host`'s namespace, or `None` when there is no such interface.
fn addresses(host: &Host, iface: &str) -> Option<BTreeSet<IpAddr>> {
    let out = host
        .ns()
        .exec(["ip", "-j", "addr", "show", "dev", iface])
        .expect("ip addr show runs");
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    Some(
        json.pointer("/0/addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter(|a| a.get("scope").and_then(|s| s.as_str()) == Some("global"))
            .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
            .collect(),
    )
}

/// Polls `addresses` until `done` holds.
fn wait_addresses(
    host: &Host,
    iface: &str,
    done: impl Fn(&Option<BTreeSet<IpAddr>>) -> bool,
) -> Option<BTreeSet<IpAddr>> {
    let deadline = Instant::now() + READY;
    loop {
        let now = addresses(host, iface);
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{iface} on {}: {now:?}",
            host.name()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn local_vip_interface_holds_the_ips_and_goes_at_exit() {
    lab_or_skip!("arping", "ndisc6");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let args = [
        "-i",
        "eth0",
        "--ip",
        &VIP.to_string(),
        "--ip",
        &vip6().to_string(),
        "--local-vip-interface",
        "ferrolb0",
    ];

    // An interface of that name FerroLB did not create is refused and left alone.
    n1.ns()
        .ip(["link", "add", "ferrolb0", "type", "bridge"])
        .unwrap();
    n1.ns()
        .ip(["addr", "add", "10.250.0.199/32", "dev", "ferrolb0"])
        .unwrap();
    let refused = speaker(n1, &args);
    let status = refused.wait_within(READY).unwrap().expect("it gives up");
    assert!(!status.success());
    let log = refused.log().unwrap();
    assert!(
        log.contains("interface ferrolb0 exists and FerroLB did not create it"),
        "{log}"
    );
    let stale: IpAddr = "10.250.0.199".parse().unwrap();
    assert_eq!(addresses(n1, "ferrolb0"), Some(BTreeSet::from([stale])));

    // A leftover of a crashed speaker (its alias) is replaced, stale address and all.
    n1.ns()
        .ip(["link", "set", "ferrolb0", "alias", ALIAS])
        .unwrap();
    let s = speaker(n1, &args);
    let vips = BTreeSet::from([IpAddr::V4(VIP), IpAddr::V6(vip6())]);
    wait_addresses(n1, "ferrolb0", |now| now.as_ref() == Some(&vips));
    for (key, floor) in [("arp_ignore", 1), ("arp_announce", 2)] {
        let value = n1
            .ns()
            .exec(["cat", &format!("/proc/sys/net/ipv4/conf/all/{key}")])
            .unwrap();
        let value: u32 = String::from_utf8_lossy(&value.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(value >= floor, "all.{key} = {value}");
    }
    // The kernel holds the VIP now and stays quiet: one answer per request, the speaker's.
    arping_until(client.ns(), "eth0", VIP, READY, |macs| !macs.is_empty()).unwrap();
    let macs = arping(client.ns(), "eth0", VIP, 5, Duration::from_millis(20)).unwrap();
    assert_eq!(macs, vec![n1.mac(); 5]);
    assert_eq!(
        ndisc6(client.ns(), "eth0", vip6(), READY).unwrap(),
        Some(n1.mac())
    );

    let status = s.stop().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert_eq!(addresses(n1, "ferrolb0"), None, "the interface is gone");
}

#[test]
fn an_ip_a_kernel_already_holds_is_not_announced_and_rechecked() {
    lab_or_skip!("arping");
    let squat_ip = Ipv4Addr::new(10, 250, 0, 77);
    let lab = Lab::builder()
        .nodes(1)
        .extra("squat", squat_ip)
        .build()
        .unwrap();
    let (client, n1, squat) = (
        lab.client(),
        lab.node(1).unwrap(),
        lab.extra("squat").unwrap(),
    );
    squat
        .ns()
        .ip(["addr", "add", &format!("{VIP}/32"), "dev", "eth0"])
        .unwrap();
    let capture = client.ns().capture("eth0", "arp").unwrap();
    let s = speaker(
        n1,
        &[
            "-i",
            "eth0",
            "--ip",
            &VIP.to_string(),
            "--probe",
            "--recheck-secs",
            "1",
        ],
    );
    let log = wait_for_log(&s, "IP conflict", Duration::from_secs(10));
    assert!(
        log.contains(&squat.mac().to_string()),
        "the conflict names the holder's MAC: {log}"
    );
    let macs = arping(client.ns(), "eth0", VIP, 3, Duration::from_millis(20)).unwrap();
    assert!(
        !macs.is_empty() && macs.iter().all(|mac| *mac == squat.mac()),
        "only the holder answers: {macs:?}"
    );

    // The holder gives the address up: the next re-check finds it free and announces.
    squat
        .ns()
        .ip(["addr", "del", &format!("{VIP}/32"), "dev", "eth0"])
        .unwrap();
    arping_until(client.ns(), "eth0", VIP, Duration::from_secs(5), |macs| {
        macs.contains(&n1.mac())
    })
    .unwrap();
    let frames = capture.stop().unwrap();
    // Until then node 1 sent probes only (sender IP 0.0.0.0), no announcement or answer.
    let from_n1: Vec<(SystemTime, ArpRepr)> = frames
        .iter()
        .filter_map(|f| Some((f.ts, arp_of(f)?)))
        .filter(|(_, arp)| arp.source_hardware_addr == n1.mac())
        .collect();
    let first_claim = from_n1.iter().position(|(_, arp)| !arp.is_probe()).unwrap();
    // Each round stops at the holder's first answer: one probe per round while it holds the
    // address, then a full round once it is gone.
    assert!(
        first_claim >= 4,
        "probe rounds before the first announcement: {from_n1:?}"
    );
    let (first_probe, announced) = (from_n1[0].0, from_n1[first_claim].0);
    assert!(
        secs(first_probe, announced) >= 1.0,
        "re-checked, not announced at once"
    );
}

#[test]
fn garbage_frames_change_nothing() {
    lab_or_skip!("arping", "ndisc6", "python3");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let s = speaker(
        n1,
        &[
            "-i",
            "eth0",
            "--ip",
            &VIP.to_string(),
            "--ip",
            &vip6().to_string(),
        ],
    );
    arping_until(client.ns(), "eth0", VIP, READY, |macs| !macs.is_empty()).unwrap();

    // Random bytes behind ARP and IPv6/ICMPv6 NS/NA headers, truncated frames and bad fields,
    // sent raw from the client.
    let script = r#"
import random, socket, struct, sys
rnd = random.Random(5227)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
dst = bytes.fromhex(sys.argv[1].replace(":", ""))
src = bytes.fromhex("020000000066")
bcast = b"\xff" * 6
vip = socket.inet_aton("10.250.0.100")
sent = 0
for i in range(3000):
    kind = i % 6
    d = bcast if i % 2 else dst
    body = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
    if kind == 0:
        frame = d + src + b"\x08\x06" + body
    elif kind == 1:   # ARP request for the VIP with a bad hardware length
        frame = d + src + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 7, 4, 1) + src + b"\0" * 4 + b"\0" * 6 + vip
    elif kind == 2:   # truncated ARP request for the VIP
        frame = d + src + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src + b"\0" * 4 + b"\0"[:rnd.randrange(0, 2)]
    elif kind == 3:   # IPv6 + ICMPv6 NS type, random rest (bad checksum, lengths)
        frame = d + src + b"\x86\xdd" + b"\x60\0\0\0" + struct.pack("!HBB", len(body), 58, 255) + b"\0" * 32 + b"\x87\0" + body
    elif kind == 4:   # NA type, claims nothing valid
        frame = d + src + b"\x86\xdd" + b"\x60\0\0\0" + struct.pack("!HBB", 2000, 58, 255) + b"\0" * 32 + b"\x88\0" + body
    else:             # runts
        frame = d + src + b"\x08\x06"[:rnd.randrange(0, 3)]
    try:
        s.send(frame)
        sent += 1
    except OSError:
        pass
print(sent)
"#;
    let out = client
        .ns()
        .run(["python3", "-c", script, &n1.mac().to_string()])
        .unwrap();
    let sent: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(sent > 2000, "garbage frames sent: {sent}");

    assert!(s.is_running().unwrap(), "the speaker survived");
    let macs = arping(client.ns(), "eth0", VIP, 3, Duration::from_millis(20)).unwrap();
    assert_eq!(macs, vec![n1.mac(); 3], "still answering");
    assert_eq!(
        ndisc6_until(client.ns(), "eth0", vip6(), Duration::from_secs(3)).unwrap(),
        n1.mac()
    );
    let log = s.log().unwrap();
    assert!(
        !log.contains("IP conflict"),
        "garbage claims nothing: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_link_that_comes_up_later_is_picked_up_from_netlink_events() {
    lab_or_skip!("arping");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    n1.ns().ip(["link", "set", "eth0", "down"]).unwrap();
    let s = speaker(n1, &["-i", "eth0", "--ip", &VIP.to_string()]);
    wait_for_log(&s, "no eligible interface", READY);

    let up = Instant::now();
    n1.ns().ip(["link", "set", "eth0", "up"]).unwrap();
    arping_until(client.ns(), "eth0", VIP, Duration::from_secs(5), |macs| {
        macs == [n1.mac()]
    })
    .unwrap();
    eprintln!("answering {:?} after the link came up", up.elapsed());

    // Down again: nothing to announce on (the socket reports the link as down, or the link
    // event closes it first); up again: it answers again.
    n1.ns().ip(["link", "set", "eth0", "down"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.log().unwrap().matches("no eligible interface").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "link down not noticed: {}",
            s.log().unwrap()
        );
        thread::sleep(Duration::from_millis(10));
    }
    n1.ns().ip(["link", "set", "eth0", "up"]).unwrap();
    arping_until(client.ns(), "eth0", VIP, Duration::from_secs(5), |macs| {
        macs == [n1.mac()]
    })
    .unwrap();
}

/// Request-to-reply time on the client's wire for `target`, from capture timestamps: each
/// broadcast request from the client paired with the next reply for the same IP.
fn reply_latencies(frames: &[CapturedFrame], client: MacAddr, target: Ipv4Addr) -> Vec<f64> {
    let mut pending: Option<SystemTime> = None;
    let mut out = Vec::new();
    for f in frames {
        let Some(arp) = arp_of(f) else { continue };
        if arp.operation == ArpOperation::Request
            && arp.source_hardware_addr == client
            && arp.target_protocol_addr == target
        {
            pending = Some(f.ts);
        } else if arp.operation == ArpOperation::Reply
            && arp.source_protocol_addr == target
            && let Some(sent) = pending.take()
        {
            out.push(secs(sent, f.ts) * 1e6);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Not a pass/fail test: prints the speaker's ARP reply latency next to the kernel's
/// (`cargo test -p ferrolb-speaker --release --test announcer -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement; run on demand"]
fn measure_arp_reply_latency_against_the_kernel() {
    lab_or_skip!("arping");
    let lab = Lab::builder().nodes(1).build().unwrap();
    let (client, n1) = (lab.client(), lab.node(1).unwrap());
    let _s = speaker(
        n1,
        &[
            "-i",
            "eth0",
            "--ip",
            &VIP.to_string(),
            "--log-level",
            "info",
        ],
    );
    arping_until(client.ns(), "eth0", VIP, READY, |macs| !macs.is_empty()).unwrap();
    for (who, target) in [("ferrolb", VIP), ("kernel", n1.ipv4())] {
        let capture = client.ns().capture("eth0", "arp").unwrap();
        arping(client.ns(), "eth0", target, 500, Duration::from_millis(4)).unwrap();
        let frames = capture.stop().unwrap();
        let lat = reply_latencies(&frames, client.mac(), target);
        let pct = |p: f64| {
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat.get(i).copied().unwrap_or(f64::NAN)
        };
        eprintln!(
            "{who:8} n={} median {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
}
