//! Failover end to end in the network lab, at default settings: the real controller and
//! speakers (standalone, one state directory), the harness playing kube-proxy, nginx behind,
//! and the client watching with arping, captures and HTTP requests. Crash and link-cut
//! takeovers, a returning link that must not make two owners, a healed partition, and a
//! rolling restart that must lose no request. Figures are printed; the long runs live in
//! `cargo run --release -p ferrolb-e2e --bin failover-bench`.
//!
//! Needs `ferrolb-controller` built beside this test (`cargo build -p ferrolb-controller`).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::journey::replies;
use ferrolb_e2e::tools::arping_every_10ms;
use ferrolb_e2e::{Background, CapturedFrame, Journey, Lab, MacAddr, lab_or_skip};
use ferrolb_proto::wire::{self, Frame};

/// Generous bounds for a loaded 2-core machine; the measured figures are printed.
const ALLOCATE: Duration = Duration::from_secs(10);
const MEMBERSHIP: Duration = Duration::from_secs(10);
/// The issue's p99 target; a single trial above it fails the test.
const TAKEOVER: Duration = Duration::from_secs(1);

/// One lab at a time: these tests measure timing, and 2 cores shared by several labs measure
/// the machine instead.
static SERIAL: Mutex<()> = Mutex::new(());

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("expected an IPv4 address, got {v6}"),
    }
}

/// Three nodes with FerroLB at defaults, one Service, kube-proxy's stand-in for its IP.
fn stage() -> (Journey, Ipv4Addr) {
    stage_with(&[])
}

/// [`stage`] with extra speaker flags.
fn stage_with(speaker_args: &[&str]) -> (Journey, Ipv4Addr) {
    let mut journey = Journey::new(Lab::builder().nodes(3)).unwrap();
    let install = &mut journey.install;
    install.speaker_args(speaker_args);
    install
        .write("pool.yaml", &manifests::pool("lan", &["10.250.0.100/30"]))
        .unwrap();
    install
        .write("l2.yaml", &manifests::l2_advertisement("l2", &[]))
        .unwrap();
    install.start_all().unwrap();
    install
        .write("apps/web.yaml", &manifests::service("demo", "web").yaml())
        .unwrap();
    let ip = install.wait_ip("demo", "web", ALLOCATE).unwrap();
    journey.expose(ip).unwrap();
    let ip = v4(ip);
    journey.arp_owner("eth0", ip, ALLOCATE).unwrap();
    (journey, ip)
}

/// The node (counted from 1) answering ARP for `ip`.
fn owner(journey: &Journey, ip: Ipv4Addr) -> (usize, MacAddr) {
    let host = journey.arp_owner("eth0", ip, ALLOCATE).unwrap();
    let mac = host.mac();
    let i = journey
        .lab
        .nodes()
        .iter()
        .position(|n| n.mac() == mac)
        .unwrap();
    (i + 1, mac)
}

fn set_port(journey: &Journey, node: usize, up: bool) {
    journey
        .lab
        .lan()
        .ip([
            "link",
            "set",
            &format!("p-n{node}"),
            if up { "up" } else { "down" },
        ])
        .unwrap();
}

/// Gratuitous ARP for `ip` (sender IP = target IP), with capture timestamps.
fn gratuitous(frames: &[CapturedFrame], ip: Ipv4Addr) -> Vec<(SystemTime, MacAddr)> {
    frames
        .iter()
        .filter_map(|f| match wire::parse_frame(&f.data) {
            Ok(Frame::Arp { arp, .. }) if arp.is_gratuitous() && arp.source_protocol_addr == ip => {
                Some((f.ts, arp.source_hardware_addr))
            }
            _ => None,
        })
        .collect()
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn crash_and_link_cut_take_over_within_a_second() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage();
    let mut figures = Vec::new();
    for (kind, trial) in [("crash", 0), ("link cut", 1), ("crash", 2), ("link cut", 3)] {
        let (node, mac) = owner(&journey, ip);
        // A random phase against the membership's timers.
        thread::sleep(Duration::from_millis(
            50 + (SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_micros() as u64
                % 100),
        ));
        let lan = journey.lab.lan().clone();
        let takeover = journey
            .measure_takeover("eth0", ip, mac, Duration::from_secs(5), |install| {
                if kind == "crash" {
                    install.kill_speaker(&format!("n{node}"))
                } else {
                    lan.ip(["link", "set", &format!("p-n{node}"), "down"])
                        .map(drop)
                }
            })
            .unwrap();
        println!(
            "trial {trial}: {kind} of n{node}: the client saw {} after {} ms",
            takeover.mac,
            millis(takeover.elapsed)
        );
        assert_ne!(takeover.mac, mac);
        figures.push(takeover.elapsed);
        if kind == "crash" {
            journey.install.start_speaker(node).unwrap();
        } else {
            set_port(&journey, node, true);
        }
        journey.install.wait_membership(MEMBERSHIP).unwrap();
        // A cut node's kernel retries ARP for its peers only after a second: it rejoins (and
        // may take the IP back, its rendezvous rank being first) within about that.
        thread::sleep(Duration::from_millis(2500));
    }
    assert!(
        figures.iter().all(|d| *d < TAKEOVER),
        "every takeover within {TAKEOVER:?}: {figures:?}"
    );
}

#[test]
fn a_returning_link_does_not_make_two_owners() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage();
    let (node, mac) = owner(&journey, ip);
    let lan = journey.lab.lan().clone();
    let takeover = journey
        .measure_takeover("eth0", ip, mac, Duration::from_secs(5), |_| {
            lan.ip(["link", "set", &format!("p-n{node}"), "down"])
                .map(drop)
        })
        .unwrap();
    println!(
        "link of n{node} cut: {} took over after {} ms",
        takeover.mac,
        millis(takeover.elapsed)
    );
    assert!(takeover.elapsed < TAKEOVER);
    // Long enough for the others to declare it dead and for it to find itself alone.
    thread::sleep(Duration::from_secs(1));

    let client = journey.client().ns().clone();
    let capture = client.capture("eth0", "arp").unwrap();
    let prober = arping_every_10ms(&client, "eth0", ip, Duration::from_secs(4)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let back = SystemTime::now();
    set_port(&journey, node, true);
    thread::sleep(Duration::from_secs(3));
    let _ = prober.kill();
    let frames = capture.stop().unwrap();
    let answers = replies(&frames, ip);
    let late: Vec<MacAddr> = answers
        .iter()
        .filter(|(ts, _)| *ts >= back + Duration::from_secs(1))
        .map(|(_, m)| *m)
        .collect();
    let early: Vec<MacAddr> = answers
        .iter()
        .filter(|(ts, _)| *ts >= back && *ts < back + Duration::from_secs(1))
        .map(|(_, m)| *m)
        .collect();
    let distinct = |macs: &[MacAddr]| {
        let mut d = macs.to_vec();
        d.sort();
        d.dedup();
        d
    };
    println!(
        "n{node}'s link back: MACs answering in the first second {:?}, after it {:?} ({} replies)",
        distinct(&early),
        distinct(&late),
        late.len()
    );
    assert!(!late.is_empty(), "someone answers after the link is back");
    assert_eq!(distinct(&late).len(), 1, "one owner once healing settled");
    // The returning node never claims the IP without having rejoined: any gratuitous ARP of
    // its MAC after the link came back means it took the IP over legitimately, as the
    // election's winner, and then it must be the one answering.
    let from_returning: Vec<_> = gratuitous(&frames, ip)
        .into_iter()
        .filter(|(ts, m)| *ts >= back && *m == mac)
        .collect();
    if !from_returning.is_empty() {
        assert_eq!(
            distinct(&late),
            vec![mac],
            "a returning node that announces owns the IP"
        );
    }
    let log = journey
        .install
        .speaker(&format!("n{node}"))
        .unwrap()
        .log()
        .unwrap();
    assert!(
        log.contains("fenced"),
        "the cut-off node fenced itself:\n{log}"
    );
}

#[test]
fn a_healed_partition_leaves_one_owner_that_announces() {
    lab_or_skip!("arping", "nginx", "nft", "tcpdump");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (journey, ip) = stage();
    let (node, _) = owner(&journey, ip);
    // Split the owner from the two others inside the LAN's bridge; the client still reaches all.
    let others: Vec<String> = (1..=3)
        .filter(|i| *i != node)
        .map(|i| format!("\"p-n{i}\""))
        .collect();
    let others = others.join(", ");
    let rules = format!(
        "table bridge ferrolb_partition {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"p-n{node}\" oifname {{ {others} }} drop\n    iifname {{ {others} }} oifname \"p-n{node}\" drop\n  }}\n}}\n"
    );
    let path = journey.lab.dir().join("partition.nft");
    std::fs::write(&path, rules).unwrap();
    journey
        .lab
        .lan()
        .exec(["nft", "-f", path.to_str().unwrap()])
        .unwrap();
    // Both sides elect: the owner keeps it, the others pick one of theirs.
    let split = journey
        .arp_until("eth0", ip, Duration::from_secs(5), |_| true)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let two = loop {
        let macs = journey.arp_answers("eth0", ip, 3).unwrap();
        let mut d = macs.clone();
        d.sort();
        d.dedup();
        if d.len() == 2 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "both sides of the partition elect: {macs:?} (first {split})"
        );
        thread::sleep(Duration::from_millis(50));
    };
    println!("partitioned: both sides answer {two:?}");

    let client = journey.client().ns().clone();
    let capture = client.capture("eth0", "arp").unwrap();
    let prober = arping_every_10ms(&client, "eth0", ip, Duration::from_secs(4)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let healed = SystemTime::now();
    journey
        .lab
        .lan()
        .exec(["nft", "delete", "table", "bridge", "ferrolb_partition"])
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    let _ = prober.kill();
    let frames = capture.stop().unwrap();
    let answers = replies(&frames, ip);
    let winner = answers.last().map(|(_, m)| *m).unwrap();
    let last_other = answers
        .iter()
        .filter(|(_, m)| *m != winner)
        .map(|(ts, _)| *ts)
        .max();
    let settled = last_other.map_or(Duration::ZERO, |t| {
        t.duration_since(healed).unwrap_or_default()
    });
    let burst = gratuitous(&frames, ip)
        .into_iter()
        .find(|(ts, m)| *ts >= healed && *m == winner)
        .map(|(ts, _)| ts.duration_since(healed).unwrap_or_default());
    println!(
        "healed: one owner ({winner}) {} ms after healing; its gratuitous burst began after {:?} ms",
        millis(settled),
        burst.map(millis)
    );
    assert!(settled < Duration::from_secs(1), "one owner within 1 s");
    assert!(
        answers
            .iter()
            .filter(|(ts, _)| *ts >= healed + Duration::from_secs(1))
            .all(|(_, m)| *m == winner)
    );
    assert!(
        burst.is_some_and(|b| b < Duration::from_secs(1)),
        "the remaining owner announces again after healing"
    );
}

/// A Python HTTP client in the client's namespace: `rate` requests a second to `ip:80`, each
/// on a fresh connection with a 1 s limit, until `stop_file` exists; prints `sent failed`.
/// Writes `script` into the lab directory as `name` and runs it with python3 on the client.
fn python_on_client(journey: &Journey, name: &str, script: &str, args: &[&str]) -> Background {
    let path = journey.lab.dir().join(name);
    std::fs::write(&path, script).unwrap();
    let mut argv = vec!["python3", path.to_str().unwrap()];
    argv.extend_from_slice(args);
    journey.client().ns().spawn(argv).unwrap()
}

/// A client opening one HTTP/1.0 connection per request at a steady rate, holding each
/// connection `hold` seconds before sending its request (3 ms of a 5 ms period: about 40% of
/// moves then find a connection in flight, which a move without carrying resets). It prints
/// `sent failed reset {errors}`: `failed` is every request that did not get its 200 for any
/// reason; `reset` is the subset whose connection was established and then reset (a request in
/// flight at a move that was not carried to the previous owner, see
/// `a_connection_open_across_a_move_is_carried_to_the_previous_owner`).
const LOAD: &str = r#"
import socket, sys, time, os
ip, rate, hold, stop = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sent = failed = reset = 0
period = 1.0 / rate
next_at = time.monotonic()
errors = {}
while not os.path.exists(stop):
    now = time.monotonic()
    if now < next_at:
        time.sleep(next_at - now)
    next_at += period
    sent += 1
    connected = False
    try:
        s = socket.create_connection((ip, 80), timeout=1.0)
        connected = True
        s.settimeout(1.0)
        time.sleep(hold)
        s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.0 200"):
            raise OSError("status " + data[:20].decode(errors="replace"))
    except OSError as e:
        failed += 1
        if connected and isinstance(e, (ConnectionResetError, BrokenPipeError)):
            reset += 1
        errors[str(e)] = errors.get(str(e), 0) + 1
print(sent, failed, reset, errors, flush=True)
"#;

#[test]
fn a_rolling_restart_loses_no_request() {
    lab_or_skip!("arping", "nginx", "nft", "python3");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage();
    let stop = journey.lab.dir().join("load.stop");
    let load = python_on_client(
        &journey,
        "load.py",
        LOAD,
        &[&ip.to_string(), "200", "0.003", stop.to_str().unwrap()],
    );
    thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let mut moves = 0;
    for node in 1..=3 {
        let name = format!("n{node}");
        let owner_before = owner(&journey, ip).0;
        journey.install.speaker(&name).unwrap().stop().unwrap();
        journey.install.start_speaker(node).unwrap();
        journey.install.wait_membership(MEMBERSHIP).unwrap();
        if owner_before == node {
            // Away to a successor, and back once it has returned.
            moves += 2;
        }
        println!("restarted {name} (the owner was n{owner_before})");
        thread::sleep(Duration::from_millis(700));
    }
    thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    let _ = load.wait_within(Duration::from_secs(5)).unwrap();
    let out = load.log().unwrap();
    let mut fields = out.split_whitespace();
    let sent: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut count = || {
        fields
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let (failed, reset) = (count(), count());
    println!(
        "rolling restart of 3 speakers over {:.1} s, the IP moved {moves} times: {sent} requests, {failed} failed, {reset} of them reset in flight ({out})",
        started.elapsed().as_secs_f64()
    );
    assert!(sent > 1000, "the client kept its rate: {out}");
    assert!(moves >= 2, "the owner was restarted, so the IP moved");
    // No gap in answers, no connection refused, no timeout, and no connection in flight at a
    // move reset: its packets are carried to the node it was made through.
    assert_eq!(failed, 0, "no request lost: {out}");
}

/// Opens a connection to the VIP, waits for the file `go`, then sends a request on it and on a
/// new connection, printing `old <outcome>` and `new <outcome>`.
const ACROSS_A_MOVE: &str = r#"
import socket, sys, time, os
ip, go, connected = sys.argv[1], sys.argv[2], sys.argv[3]
def request(s):
    try:
        s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        return s.recv(4096)[:15].decode(errors="replace")
    except OSError as e:
        return type(e).__name__
old = socket.create_connection((ip, 80), timeout=2.0)
open(connected, "w").close()
deadline = time.monotonic() + 10
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.01)
print("old", request(old), flush=True)
print("new", request(socket.create_connection((ip, 80), timeout=2.0)), flush=True)
"#;

/// Opens a connection to the IP, lets `shift` move the IP to another node, then uses the old
/// connection and a new one; returns the client's two outcomes.
fn across(journey: &mut Journey, ip: Ipv4Addr, shift: impl FnOnce(&mut Journey)) -> String {
    let dir = journey.lab.dir().to_owned();
    let (go, connected) = (dir.join("go"), dir.join("connected"));
    let client = python_on_client(
        journey,
        "across.py",
        ACROSS_A_MOVE,
        &[
            &ip.to_string(),
            go.to_str().unwrap(),
            connected.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connected.exists() {
        assert!(Instant::now() < deadline, "the client never connected");
        thread::sleep(Duration::from_millis(10));
    }
    shift(journey);
    std::fs::write(&go, "").unwrap();
    let _ = client.wait_within(Duration::from_secs(10)).unwrap();
    client.log().unwrap()
}

/// The packets `node` has carried to previous owners, from its nftables counters.
fn carried_packets(journey: &Journey, node: usize) -> u64 {
    let out = journey.lab.nodes()[node - 1]
        .ns()
        .run(["nft", "list", "table", "ip", "ferrolb"])
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Stops the owner's speaker gracefully (the IP moves to another node); returns the owner.
fn stop_owner(journey: &mut Journey, ip: Ipv4Addr) -> usize {
    let before = owner(journey, ip).0;
    journey
        .install
        .speaker(&format!("n{before}"))
        .unwrap()
        .stop()
        .unwrap();
    assert_ne!(before, owner(journey, ip).0, "a graceful stop moves the IP");
    before
}

/// A connection made through the old owner whose next packets reach the new one: the new
/// owner's kube-proxy has no NAT state for it, so it is sent on to the old owner (whose kernel
/// still has it) and served; a connection made after the move is served by the new owner.
#[test]
fn a_connection_open_across_a_move_is_carried_to_the_previous_owner() {
    lab_or_skip!("arping", "nginx", "nft", "python3");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage();
    let mut new_owner = 0;
    let out = across(&mut journey, ip, |j| {
        stop_owner(j, ip);
        new_owner = owner(j, ip).0;
    });
    assert!(out.contains("old HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("new HTTP/1.1 200 OK"), "{out}");
    let carried = carried_packets(&journey, new_owner);
    println!("n{new_owner} carried {carried} packets of the old connection");
    assert!(
        carried > 0,
        "the old connection went through the carrying rule"
    );
}

/// The other way: a connection made through the interim owner while the top-ranked node was
/// away is carried to the interim owner when that node returns and takes its IP back.
#[test]
fn a_connection_made_while_a_node_was_away_is_carried_when_it_returns() {
    lab_or_skip!("arping", "nginx", "nft", "python3");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage();
    let away = stop_owner(&mut journey, ip);
    let out = across(&mut journey, ip, |j| {
        j.install.start_speaker(away).unwrap();
        j.install.wait_membership(MEMBERSHIP).unwrap();
        let deadline = Instant::now() + MEMBERSHIP;
        while owner(j, ip).0 != away {
            assert!(Instant::now() < deadline, "n{away} never took its IP back");
            thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(out.contains("old HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("new HTTP/1.1 200 OK"), "{out}");
    assert!(
        carried_packets(&journey, away) > 0,
        "carried by the returning node"
    );
}

/// Without carrying, that connection meets a kube-proxy without its NAT state and the backend
/// resets it: what every layer-2 failover does, and why FerroLB carries.
#[test]
fn without_carrying_a_connection_open_across_a_move_is_reset() {
    lab_or_skip!("arping", "nginx", "nft", "python3");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut journey, ip) = stage_with(&["--carry-connections=false"]);
    let out = across(&mut journey, ip, |j| {
        stop_owner(j, ip);
    });
    assert!(out.contains("old ConnectionResetError"), "{out}");
    assert!(out.contains("new HTTP/1.1 200 OK"), "{out}");
}
