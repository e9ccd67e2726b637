//! The one-command demo (`scripts/demo`, as root): FerroLB's whole job on a lab of network namespaces.
//!
//! A pool and a LoadBalancer Service go into a fresh state directory; the controller gives the
//! Service an IP, the speakers elect the node that answers for it, the client finds it with arping
//! and browses to it through the node (kube-proxy's DNAT, played by the harness) to nginx, the
//! ingress proxy. Then the owner's speaker is killed and the client times the takeover; the node
//! comes back and takes its IP back. Everything lives in namespaces torn down at the end.

use std::error::Error;
use std::io::{IsTerminal, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::{Journey, Lab};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const ALLOCATE: Duration = Duration::from_secs(10);
const ANSWER: Duration = Duration::from_secs(15);
const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);
/// Crashes after the first, for min / median / max.
const TRIALS: usize = 5;

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "demo: needs root: it creates network namespaces, veth pairs and a bridge, opens raw \
             sockets (the speakers answer ARP) and sets nftables rules inside the lab's \
             namespaces. Nothing outside those namespaces is touched. Run it as root: scripts/demo"
        );
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    match run() {
        Ok(()) => {
            println!(
                "\nDone in {:.1} s. Read next: docs/quickstart.md, docs/how-it-works.md",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\ndemo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a step header, bold on a terminal.
fn step(n: u32, title: &str) {
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m== {n}. {title}\x1b[0m");
    } else {
        println!("\n== {n}. {title}");
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
}

fn run() -> Result<()> {
    println!("FerroLB demo: a LoadBalancer Service on a network lab in this machine's namespaces.");

    step(1, "The lab");
    let mut journey = Journey::new(Lab::builder().nodes(3))?;
    let lab = &journey.lab;
    for node in lab.nodes() {
        println!(
            "  node {}    {:<12} MAC {}   (namespace {})",
            node.name(),
            node.ipv4(),
            node.mac(),
            node.namespace()
        );
    }
    let client = lab.client();
    println!(
        "  client {:<12} MAC {}   (arping, curl)",
        client.ipv4(),
        client.mac()
    );
    let ingress = journey.ingress_host()?;
    println!(
        "  ingress {:<11} nginx: the ingress proxy the Service exposes",
        ingress.ipv4()
    );
    println!("  all on one bridge, in its own namespace; no host interface is involved");

    step(2, "The manifests (a standalone state directory)");
    let pool = manifests::pool("lan", &["10.250.0.100-10.250.0.110"]);
    let l2 = manifests::l2_advertisement("lan", &[]);
    let service = manifests::service("ingress", "ingress-nginx").yaml();
    let install = &journey.install;
    install.write("pool.yaml", &format!("{pool}---\n{l2}"))?;
    install.write("ingress-nginx.yaml", &service)?;
    println!(
        "  {}/ (plus nodes/n1..n3.yaml: the Node objects)",
        install.dir().display()
    );
    println!("  --- pool.yaml");
    print!("{}", indent(&format!("{pool}---\n{l2}")));
    println!("  --- ingress-nginx.yaml");
    print!("{}", indent(&service));

    step(
        3,
        "FerroLB starts: the controller and a speaker on each node",
    );
    journey.install.start_all()?;
    println!(
        "  ferrolb-controller --state-dir DIR                       (pid {})",
        journey.install.controller().map_or(0, |p| p.pid())
    );
    for node in journey.lab.nodes() {
        println!(
            "  ip netns exec {} ferrolb-speaker run --node-name {} --state-dir DIR ...   (pid {})",
            node.namespace(),
            node.name(),
            journey.install.speaker(node.name()).map_or(0, |p| p.pid())
        );
    }

    step(4, "The IP allocated (ferrolb-controller status)");
    let ip = journey
        .install
        .wait_ip("ingress", "ingress-nginx", ALLOCATE)?;
    let IpAddr::V4(vip) = ip else {
        return Err(format!("expected an IPv4 address, got {ip}").into());
    };
    println!("  ingress/ingress-nginx got {vip}, the first free address of pool lan");
    journey.expose(ip)?;
    println!(
        "  kube-proxy (played by the lab) on every node: {vip}:80 -> DNAT {}:80, masquerade",
        journey.ingress_host()?.ipv4()
    );
    let owner = journey.arp_owner("eth0", vip, ANSWER)?.clone();
    if std::env::var_os("DEMO_DEBUG").is_some() {
        eprintln!("{}", journey.install.speaker_logs());
    }
    print!("{}", indent(&status_view(&journey)?));

    step(5, "arping from the client");
    let macs = journey.arp_answers("eth0", vip, 5)?;
    println!("  $ arping -c 5 {vip}");
    println!(
        "  {} answers out of 5, all from {}: node {} ({})",
        macs.len(),
        owner.mac(),
        owner.name(),
        owner.ipv4()
    );
    if macs.iter().any(|m| *m != owner.mac()) {
        return Err(format!("more than one MAC answered for {vip}: {macs:?}").into());
    }

    step(6, "curl from the client");
    show_curl(&journey, vip)?;

    step(
        7,
        &format!("Crash: SIGKILL the speaker on {}", owner.name()),
    );
    random_phase();
    let before = owner.mac();
    let name = owner.name().to_owned();
    let takeover = journey.measure_takeover("eth0", vip, before, TAKEOVER_LIMIT, |install| {
        install.kill_speaker(&name)
    })?;
    let first_takeover = takeover.elapsed;
    let new_owner = journey
        .node_by_mac(takeover.mac)
        .map(|n| n.name().to_owned())
        .unwrap_or_else(|| takeover.mac.to_string());
    println!(
        "  took over in {:.0} ms: {vip} is now at {} = node {new_owner}",
        takeover.elapsed.as_secs_f64() * 1000.0,
        takeover.mac
    );
    println!(
        "  (the client arpings every 10 ms; timed from the kill to the first reply with the new MAC)"
    );
    show_curl(&journey, vip)?;
    print!("{}", indent(&status_view(&journey)?));

    step(8, &format!("{name} comes back"));
    let returning = node_index(&journey, &name)?;
    let t0 = Instant::now();
    journey.install.start_speaker(returning)?;
    let back = journey.arp_until("eth0", vip, ANSWER, |mac| mac == before)?;
    println!(
        "  its speaker restarted; {vip} is back at {} = node {name} after {:.1} s \
         (rendezvous hashing: a node's IPs return to it; start-up of the speaker included)",
        back,
        t0.elapsed().as_secs_f64()
    );
    show_curl(&journey, vip)?;

    step(
        9,
        &format!("The same crash {TRIALS} more times, at random moments"),
    );
    let mut times = vec![first_takeover];
    for _ in 0..TRIALS {
        let owner = journey.arp_owner("eth0", vip, ANSWER)?.clone();
        let index = node_index(&journey, owner.name())?;
        random_phase();
        let name = owner.name().to_owned();
        let takeover =
            journey.measure_takeover("eth0", vip, owner.mac(), TAKEOVER_LIMIT, |install| {
                install.kill_speaker(&name)
            })?;
        let to = journey
            .node_by_mac(takeover.mac)
            .map_or_else(|| takeover.mac.to_string(), |n| n.name().to_owned());
        println!(
            "  {name} killed: {to} answered after {:.0} ms",
            takeover.elapsed.as_secs_f64() * 1000.0
        );
        times.push(takeover.elapsed);
        journey.install.start_speaker(index)?;
        journey.arp_until("eth0", vip, ANSWER, |mac| mac == owner.mac())?;
    }
    times.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "  takeover over all {} crashes: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        times.len(),
        ms(times.first()),
        ms(times.get(times.len() / 2)),
        ms(times.last())
    );
    show_curl(&journey, vip)?;

    step(10, "Teardown");
    let namespaces = journey.lab.namespaces().len();
    drop(journey);
    println!("  every process stopped by PID, {namespaces} namespaces deleted");
    Ok(())
}

/// Node `name`'s number (n2 is 2).
fn node_index(journey: &Journey, name: &str) -> Result<usize> {
    journey
        .lab
        .nodes()
        .iter()
        .position(|n| n.name() == name)
        .map(|i| i + 1)
        .ok_or_else(|| format!("no node {name}").into())
}

fn show_curl(journey: &Journey, vip: Ipv4Addr) -> Result<()> {
    let page = journey.curl_until(IpAddr::V4(vip), ANSWER)?;
    let via = journey
        .came_through(&page)
        .map(|n| format!(" (node {})", n.name()))
        .unwrap_or_default();
    println!("  $ curl http://{vip}/");
    println!("  {page}{via}");
    Ok(())
}

/// The status view, as `ferrolb-controller status --state-dir DIR` prints it.
fn status_view(journey: &Journey) -> Result<String> {
    let out = Command::new(journey.install.controller_bin()?)
        .args(["status", "--state-dir"])
        .arg(journey.install.dir())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "ferrolb-controller status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(format!(
        "$ ferrolb-controller status --state-dir DIR\n{}",
        String::from_utf8_lossy(&out.stdout)
    ))
}

/// Waits a random part of a membership probe period, so the crash does not always land at the
/// same phase of the speakers' timers.
fn random_phase() {
    let mut byte = [0u8; 1];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut byte));
    std::thread::sleep(Duration::from_millis(u64::from(byte[0]) % 200));
}
